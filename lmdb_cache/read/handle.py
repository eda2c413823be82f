"""A reader's hold on a store in one process: its environment, its snapshot and their renewal.

Each process opens its own LMDB environment on first use (the process id is checked on every
access; see ``environment``), so a handle created in the main process can be handed to
``fork``, ``spawn`` or ``forkserver`` workers: it pickles as its path and options only
(:meth:`StoreHandle.state`), and ``forks`` ends its snapshot before every fork.

A handle reads from one snapshot (an LMDB read transaction). A snapshot pins the pages it can
see: while it lives, a build updating the store cannot reuse them and the file grows. So a
snapshot is renewed by :meth:`StoreHandle.refresh`, and by itself on the next read once it is
older than ``snapshot_seconds`` and no view handed out from it is alive.
"""

from __future__ import annotations

import os
import time
from typing import Any

from ..errors import CacheError
from ..format.lmdbfile import check_data_file
from . import environment, forks
from .snapshot import Snapshot, open_snapshot, verify_structure

DEFAULT_SNAPSHOT_SECONDS = 60.0
# Transactions begun before a meta page two commits overwrote are begun again (``open_snapshot``).
_BEGIN_TRIES = 100


class StoreHandle:
    """The process, environment and snapshot behind one reader.

    Args:
        path: The store's folder.
        lock: None uses LMDB's lock file and falls back to lock-free reading on a read-only
            filesystem; False never locks; True always locks.
        verify: Check the store's LMDB structure when a process opens it.
        snapshot_seconds: Renew the snapshot on the next read once it is this old and no view
            from it is alive; None keeps it until :meth:`refresh`.
        readahead: The kernel's read-around on faults of the mapping (see
            ``SharedEnv.set_readahead``).
    """

    def __init__(
        self,
        path: str,
        lock: bool | None,
        verify: bool,
        snapshot_seconds: float | None,
        readahead: bool = True,
    ) -> None:
        if snapshot_seconds is not None and snapshot_seconds < 0:
            raise ValueError(f"snapshot_seconds must be >= 0 or None, got {snapshot_seconds}")
        self.path = path
        self.lock = lock
        self.verify = verify
        self.snapshot_seconds = snapshot_seconds
        self.readahead = readahead
        self._pid: int | None = None
        self._shared: environment.SharedEnv | None = None
        self._snap: Snapshot | None = None
        forks.track(self)

    def state(self) -> dict[str, Any]:
        """What a pickled reader carries to another process: the path and the options."""
        return {
            "path": self.path,
            "_lock": self.lock,
            "verify": self.verify,
            "snapshot_seconds": self.snapshot_seconds,
            "readahead": self.readahead,
        }

    @property
    def shared(self) -> environment.SharedEnv:
        """This process's environment of the store (opened by the first snapshot)."""
        self.snapshot()
        if self._shared is None:
            raise CacheError(f"cache '{self.path}' is closed")
        return self._shared

    def snapshot(self) -> Snapshot:
        """The current snapshot, opened or renewed as needed (every read goes through here)."""
        snap = self._snap
        if snap is not None and self._pid == os.getpid():
            if (
                self.snapshot_seconds is None
                or snap.tracker.live
                or time.monotonic() - snap.started < self.snapshot_seconds
            ):
                return snap
            self.end_snapshot()
        elif self._pid != os.getpid():
            # A new process (first use, or a fork/spawn child): the after-fork hook closed any
            # inherited environment, so acquire this process's own.
            self._pid = os.getpid()
            self._shared = self._snap = None
        return self._begin()

    def end_snapshot(self) -> None:
        """End the snapshot (called before every fork of the process, and to renew it)."""
        if self._pid == os.getpid() and self._snap is not None:
            txn = self._snap.txn
            self._snap = None
            txn.abort()  # and drop the last reference: that frees the reader slot

    def refresh(self) -> None:
        """Move to the newest committed state of the store (a rebuilt store included)."""
        self.end_snapshot()
        self.snapshot()

    def close(self) -> None:
        """Release this process's handles. Safe to call twice."""
        if self._pid == os.getpid():
            self.end_snapshot()
            if self._shared is not None:
                environment.release(self._shared)
        self._shared = self._snap = None
        self._pid = None

    def _begin(self) -> Snapshot:
        shared = self._shared
        try:
            if shared is None or shared.identity != environment.file_identity(self.path):
                # First use in this process, or the store was replaced on disk (a rebuild).
                self._shared = None
                if shared is not None:
                    environment.release(shared)
                shared = self._shared = environment.acquire(self.path, self.lock)
                shared.set_readahead(self.readahead)
                if self.verify:
                    verify_structure(self.path, shared)
            else:
                check_data_file(self.path)
        except BaseException:
            self.close()
            raise
        for _ in range(_BEGIN_TRIES):
            try:
                txn = shared.begin_read()
            except BaseException:
                self.close()
                raise
            try:
                snap = open_snapshot(self.path, shared, txn)
            except BaseException:
                txn.abort()
                self.close()
                raise
            if snap is not None:
                self._snap = snap
                return snap
            txn.abort()  # two commits overwrote its meta page meanwhile: begin another
        self.close()
        raise CacheError(
            f"cache '{self.path}': a build committed faster than a snapshot could begin "
            f"({_BEGIN_TRIES} tries); read again"
        )
