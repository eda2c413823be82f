"""One tool run at a time per working folder: an advisory lock file inside it.

``tools/demo.py`` deletes and rebuilds its data and run folders; a second demo started in the
same checkout would do that under the first one's running trainers. Each holds
``hold_folder(folder)`` for its whole run instead, so the second one stops at once and says
which process holds the folder. The lock is ``fcntl.flock`` on ``FOLDER/.lock``: the kernel
releases it when the holder exits, however it exits (kill -9 included), so a stale lock file
never blocks anyone.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

LOCK_NAME = ".lock"


class FolderBusyError(RuntimeError):
    """Another process holds the folder's lock.

    Attributes:
        folder: The folder.
        holder: What the holder wrote into the lock file (``pid 1234 since 12:03:04``), or
            ``pid unknown`` when it had not written it yet.
    """

    def __init__(self, folder: Path, holder: str) -> None:
        super().__init__(f"{folder} is in use by another process ({holder})")
        self.folder = folder
        self.holder = holder


@contextmanager
def hold_folder(folder: Path) -> Iterator[Path]:
    """Create ``folder`` if needed and hold its lock until the block ends.

    Args:
        folder: The folder to hold; the lock file is ``folder / ".lock"``.

    Yields:
        The lock file's path.

    Raises:
        FolderBusyError: another process holds the folder (raised at once, never waits).
    """
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    # "a+" neither truncates (the holder's pid stays readable) nor fails if it exists.
    with open(path, "a+", encoding="utf-8") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            raise FolderBusyError(folder, f.read().strip() or "pid unknown") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} since {time.strftime('%H:%M:%S')}\n")
        f.flush()
        try:
            yield path
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


@contextmanager
def hold_folders(*folders: Path) -> Iterator[None]:
    """``hold_folder`` on each distinct folder, in order; all released when the block ends.

    Raises:
        FolderBusyError: another process holds one of them (those taken so far are released).
    """
    seen: list[Path] = []
    with ExitStack() as stack:
        for folder in folders:
            # flock locks belong to an open file: a folder named twice would lock itself out.
            resolved = folder.resolve()
            if resolved not in seen:
                seen.append(resolved)
                stack.enter_context(hold_folder(folder))
        yield
