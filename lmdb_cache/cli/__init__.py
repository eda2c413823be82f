"""The command line, the only room that prints or exits: ``build-cache``, ``validate-cache``,
``cache-info`` and the ``lmdb-cache`` group (``build``, ``validate``, ``info``, ``copy``,
``ls``, ``show``, ``diff``).

``build`` holds ``build-cache``; ``commands`` the group and the commands that validate,
describe and copy a store; ``inspect`` the ones that look inside (``ls``, ``show``);
``compare`` the one that compares two stores (``diff``);
``progress`` what they share (the progress bar, JSON output, usage errors). It may import
every other room.
"""

from .commands import (
    build_cache_main,
    build_command,
    cache_info_main,
    cli,
    copy_command,
    info_command,
    main,
    validate_cache_main,
    validate_command,
)
from .compare import diff_command
from .inspect import ls_command, show_command

__all__ = [
    "build_cache_main",
    "build_command",
    "cache_info_main",
    "cli",
    "copy_command",
    "diff_command",
    "info_command",
    "ls_command",
    "main",
    "show_command",
    "validate_cache_main",
    "validate_command",
]
