"""One build at a time per store: an exclusive ``flock`` on ``<store>/build.lock``.

LMDB serializes write transactions but not builds: two ``build-cache`` runs on one store would
interleave their transactions and leave records made with different settings under one
manifest. A build therefore holds this lock from before it reads the store's settings until
its last commit; a second build exits at once naming the first one's process id.

``flock`` (not ``fcntl`` record locks) because it belongs to the open file, so two builds in
one process exclude each other too, and closing some other descriptor of the file (LMDB
does that with its own files) cannot drop it. The lock file is never deleted: deleting a lock
file races with a process about to lock it. A rebuild replaces the store's folder, lock file
included, so a process that locked the old file checks that it is still the one at the path.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable

from ..errors import BuildLockedError

LOCK_NAME = "build.lock"


class BuildLock:
    """An exclusive lock on a store folder for one build.

    Use as a context manager: ``with BuildLock(path): ...``. The folder is created if needed.

    Raises:
        BuildLockedError: another build holds the lock (its pid is in the message).
        OSError: the lock file cannot be created (e.g. a read-only location).
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.file = os.path.join(path, LOCK_NAME)
        self.fd: int | None = None

    def acquire(self) -> None:
        while True:
            os.makedirs(self.path, exist_ok=True)
            fd = os.open(self.file, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pid = _read_pid(fd)
                os.close(fd)
                raise BuildLockedError(self.path, pid) from None
            except BaseException:
                os.close(fd)
                raise
            try:
                st = os.stat(self.file)
                same = (st.st_dev, st.st_ino) == (os.fstat(fd).st_dev, os.fstat(fd).st_ino)
            except FileNotFoundError:
                same = False
            if not same:  # the folder was replaced between open and lock: lock the new one
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            self.fd = fd
            return

    def release(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)  # closing the only descriptor of the open file drops the flock

    def __enter__(self) -> BuildLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class NoBuild:
    """A shared lock on a store's ``build.lock``: waits for a running build to finish and
    keeps a new one from starting while held (a build asking then exits 2, lock busy).

    Use as a context manager. ``on_wait(pid)`` is called once if a build holds the lock (its
    pid, or None when unknown). A store without a lock file (never built by this version,
    or on a read-only location) has nothing to wait for.
    """

    def __init__(self, path: str, on_wait: Callable[[int | None], None] | None = None) -> None:
        self.file = os.path.join(path, LOCK_NAME)
        self.on_wait = on_wait
        self.fd: int | None = None

    def __enter__(self) -> NoBuild:
        while True:
            try:
                fd = os.open(self.file, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            except OSError:
                return self
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                except BlockingIOError:
                    if self.on_wait is not None:
                        self.on_wait(_read_pid(fd))
                        self.on_wait = None
                    fcntl.flock(fd, fcntl.LOCK_SH)
                st = os.stat(self.file)
                same = (st.st_dev, st.st_ino) == (os.fstat(fd).st_dev, os.fstat(fd).st_ino)
            except FileNotFoundError:
                same = False
            except BaseException:
                os.close(fd)
                raise
            if same:
                self.fd = fd
                return self
            os.close(fd)  # a rebuild swapped the folder in while we waited: wait on the new one

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)


def _read_pid(fd: int) -> int | None:
    # The holder writes its pid just after it takes the lock: give it a moment.
    for _ in range(50):
        try:
            text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        except OSError:
            return None
        if text.isdigit():
            return int(text)
        time.sleep(0.01)
    return None
