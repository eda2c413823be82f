"""Consistent copies of a store: the way to ship a cache to other machines.

LMDB must not live on a network filesystem (its locks and memory map need a local one), so
each node of a multi-node run reads its own copy on local disk. ``copy_cache`` takes that copy
from one read transaction (LMDB's own ``mdb_env_copy``): a snapshot of the last committed
state, consistent even while ``build-cache`` writes to the source, never a half-written
record. The copy is written into a hidden folder beside the destination, validated there
(structure, every record, every checksum), and only then renamed to the destination, so the
destination either holds a complete, valid store or does not exist.
"""

from __future__ import annotations

import errno
import glob
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import lmdb

from ..durable import sync_file, sync_folder
from ..errors import CacheError, DiskFullError, StoreDamagedError
from ..read.reader import open_cache
from ..reporting import Progress
from ..write.locking import NoBuild
from ..write.store import no_space, remove_store_dir, store_exists
from .findings import ValidationReport
from .validate import validate_cache


@dataclass
class CopyResult:
    """What ``copy_cache`` made."""

    source: str
    destination: str
    images: int
    data_bytes: int  # size of the copy's data.mdb
    source_bytes: int  # size of the source's data.mdb when copied
    compact: bool
    seconds: float
    report: ValidationReport | None  # None when not validated

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "destination": self.destination,
            "images": self.images,
            "data_bytes": self.data_bytes,
            "source_bytes": self.source_bytes,
            "compact": self.compact,
            "seconds": self.seconds,
            "validated": self.report is not None,
            "ok": self.report is None or self.report.ok,
        }


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def put_in_place(work: str, destination: str, doing: str) -> int:
    """Flush the finished store in ``work`` to the disk and rename it to ``destination`` (the
    caller removes ``work`` on an error); returns the size of its ``data.mdb``.

    Raises:
        FileExistsError: ``destination`` appeared meanwhile (``doing``: "copying", ...).
    """
    data = os.path.join(work, "data.mdb")
    size = os.path.getsize(data)
    sync_file(data)  # on the disk before its name says "done"
    try:
        os.rename(work, destination)
    except OSError as e:
        if e.errno in (errno.ENOTEMPTY, errno.EEXIST):
            raise FileExistsError(
                f"'{destination}' was created while {doing}; nothing was replaced"
            ) from e
        raise
    sync_folder(os.path.dirname(os.path.abspath(destination)))
    return size


def work_dir(destination: str, kind: str = "copy") -> str:
    """A fresh hidden folder beside ``destination`` (same filesystem, so it can be renamed);
    folders left by copies (or merges: ``kind``) that were killed are removed first."""
    parent, name = os.path.split(os.path.abspath(destination))
    for stale in glob.glob(os.path.join(glob.escape(parent), f".{name}.{kind}-*")):
        pid = stale.rsplit("-", 1)[-1]
        if pid.isdigit() and not _pid_alive(int(pid)):
            remove_store_dir(stale)
    path = os.path.join(parent, f".{name}.{kind}-{os.getpid()}")
    remove_store_dir(path)
    os.mkdir(path)
    return path


def check_destination(destination: str) -> None:
    """Raise unless ``destination`` is free for a new store (absent, or an empty folder)."""
    if store_exists(destination):
        raise FileExistsError(
            f"'{destination}' already holds a store; remove it first or copy to another path"
        )
    if os.path.lexists(destination) and (not os.path.isdir(destination) or os.listdir(destination)):
        raise FileExistsError(
            f"'{destination}' exists and is not an empty folder; copy to a new path"
        )
    parent = os.path.dirname(os.path.abspath(destination))
    if not os.path.isdir(parent):
        raise FileNotFoundError(f"the folder '{parent}' for '{destination}' does not exist")


def copy_cache(
    source: str | os.PathLike[str],
    destination: str | os.PathLike[str],
    *,
    compact: bool = False,
    validate: bool = True,
    progress: Progress | Callable[[int, int], Any] | None = None,
    on_wait: Callable[[int | None], None] | None = None,
) -> CopyResult:
    """Copy the store at ``source`` to ``destination``, consistently, even while a build runs.

    Args:
        source: A cache store.
        destination: A path that does not exist yet (or an empty folder).
        compact: Leave out free pages and renumber the rest (a smaller file, a slower copy).
        validate: Check the copy (``validate_cache``, checksums included) before it is put
            in place.
        progress: Told the bytes to validate, then each record's bytes checked (a plain
            ``(bytes checked, bytes to check)`` callable works too).
        on_wait: Called once with the pid of a build running on ``source`` (None when
            unknown), before waiting for it to finish.

    Returns:
        A :class:`CopyResult`; ``destination`` holds the store.

    Raises:
        FileExistsError: ``destination`` holds a store or other files.
        FileNotFoundError: ``destination``'s parent folder does not exist.
        CacheNotFoundError, NotACacheError, FormatVersionError, TruncatedStoreError: the source
            is not a cache this version reads.
        CacheError: the source's last build did not finish (and none is running).
        StoreDamagedError: the copy failed validation (the source is damaged: its report says
            what; nothing is left at ``destination``).
        DiskFullError: the destination's disk filled up (nothing is left at ``destination``).
    """
    source, destination = os.fspath(source), os.fspath(destination)
    check_destination(destination)
    start = time.perf_counter()
    with NoBuild(source, on_wait), open_cache(source) as reader:
        images = len(reader)
        if not reader.manifest.get("complete", False):
            root = reader.manifest.get("source_root") or "SRC"
            raise CacheError(
                f"'{source}' is incomplete: its last build did not finish; finish it with "
                f"'build-cache {root} -o {source}' and copy again"
            )
        source_bytes = os.path.getsize(os.path.join(source, "data.mdb"))
        work = work_dir(destination)
        try:
            reader.raw.copy_to(work, compact)
        except lmdb.Error as e:
            full = no_space(work, e, source_bytes)
            remove_store_dir(work)
            if full is not None:
                raise DiskFullError(
                    f"copying '{source}' to '{destination}': {full}; free space and run "
                    "the copy again"
                ) from e
            raise CacheError(f"copying '{source}' to '{destination}' failed: {e}") from e
    try:
        report = validate_cache(work, progress=progress) if validate else None
        if report is not None and not report.ok:
            first = report.problems[0].message.replace(work, source)
            raise StoreDamagedError(
                f"the copy of '{source}' failed validation ({len(report.problems)} problem(s), "
                f"first: {first}); nothing was written to '{destination}'; check the source "
                f"with 'validate-cache {source}'"
            )
        data_bytes = put_in_place(work, destination, "copying")
    except BaseException:
        remove_store_dir(work)
        raise
    return CopyResult(
        source=source,
        destination=destination,
        images=images,
        data_bytes=data_bytes,
        source_bytes=source_bytes,
        compact=compact,
        seconds=time.perf_counter() - start,
        report=report,
    )
