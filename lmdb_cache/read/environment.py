"""The read side's LMDB environments: one per store per process, opened safely.

* **One per process.** LMDB forbids using an environment in a process that did not open it,
  and py-lmdb refuses to open the same files twice in one process. So a reader asks this
  module for the environment of its store in the current process; the first ask opens it.
  At a ``fork`` (``forks``) the child closes the environments it inherited and opens its own.
* **No signal from a short file.** Before LMDB maps ``data.mdb``, its size is checked against
  what its own meta pages require (``format.lmdbfile.check_data_file``); a truncated copy raises
  :class:`TruncatedStoreError` instead of faulting (SIGBUS) on the first read past its end.
* **No remap while views live.** The read map is reserved at :data:`READ_MAP_SIZE` (address
  space only; nothing is allocated), so a store that grows never forces a reader to remap,
  which would pull the pages from under every view of every reader of the process. A mapping
  is unmapped only once no reader and no view of it is left (:meth:`SharedEnv.track`).
* **No leaked reader slots.** A process releases its reader slots when it exits, through
  ``atexit`` and through ``multiprocessing``'s exit finalizers (DataLoader workers end through
  the latter and skip ``atexit``); slots left by processes that were killed are cleared with
  LMDB's ``reader_check()`` whenever a process opens a store.
"""

from __future__ import annotations

import atexit
import errno
import multiprocessing.util
import os
import sys
import threading
import time
import warnings
import weakref
from typing import Any

import lmdb

from ..errors import CacheError, damaged
from ..format.extents import Extents
from ..format.keyindex import KeyList
from ..format.lmdbfile import check_data_file, meta_state, structure_problems
from ..format.schema import MAX_DBS, MAX_READERS
from .mapping import MADV_NORMAL, MADV_RANDOM, advise, find_mapping

# Address space reserved for each read mapping: 1 TiB on 64-bit systems. It costs no memory
# (the kernel maps pages of the file on access) and covers any store this cache is meant for.
READ_MAP_SIZE = 1 << 40 if sys.maxsize > 1 << 32 else 0


def checked_structure(path: str) -> list[str]:
    """:func:`structure_problems`, taken while a snapshot pins the pages the check walks.

    A build committing during the check could still make it see a half-written state; a
    finding is kept only if it holds on a check during which no commit happened.
    """
    data_file = os.path.join(path, "data.mdb")
    problems: list[str] = []
    for _ in range(3):
        before = meta_state(data_file)[2]
        try:
            shared: SharedEnv | None = acquire(path, None)
        except CacheError:
            shared = None  # LMDB cannot open it: check without a pin
        try:
            if shared is not None:
                with shared.env.begin():
                    problems = structure_problems(path)
            else:
                problems = structure_problems(path)
        except lmdb.Error:
            problems = structure_problems(path)
        finally:
            if shared is not None:
                release(shared)
        if not problems or meta_state(data_file)[2] == before:
            return problems
        time.sleep(0.1)
    return problems


def file_identity(path: str) -> tuple[int, int] | None:
    """(device, inode) of the store's data file, or None if it is gone."""
    try:
        st = os.stat(os.path.join(path, "data.mdb"))
    except OSError:
        return None
    return st.st_dev, st.st_ino


class SharedEnv:
    """One open environment of this process, shared by every reader of its store.

    It stays open while a reader holds it or a view into its mapping is alive, so a view never
    points into unmapped memory.
    """

    def __init__(
        self,
        path: str,
        env: lmdb.Environment,
        locked: bool,
        identity: tuple[int, int] | None,
        extents: Extents,
    ) -> None:
        self.path = path
        self.env = env
        self.extents = extents  # checks each value's extent before LMDB touches its pages
        self.locked = locked
        self.identity = identity
        self.pid = os.getpid()
        self.readers = 0
        self.views = 0
        self.verified = False  # structure checked once per process (readers with verify=True)
        # The stored key index whose CRC-32 this process checked: (stamp, length).
        self.index_checked: tuple[str, int] | None = None
        # The key list walked for the state of a commit without a current index: (txn id, keys).
        self.walked: tuple[int, KeyList] | None = None
        self.readahead = True  # the kernel's read-around on each fault of the mapping

    def set_readahead(self, on: bool) -> None:
        """Turn the kernel's read-around on faults of this mapping on or off (``MADV_NORMAL``
        or ``MADV_RANDOM``, which LMDB's ``MDB_NORDAHEAD`` asks); it holds for every reader of
        the store in this process. Where the mapping cannot be found, nothing changes."""
        if on == self.readahead:
            return
        found = find_mapping(os.path.join(self.path, "data.mdb"))
        if found is not None and advise(*found, MADV_NORMAL if on else MADV_RANDOM):
            self.readahead = on

    def begin_read(self) -> lmdb.Transaction:
        """A read transaction (a snapshot) with buffers, from this process's environment.

        Raises:
            CacheError: the store outgrew the reserved read map while other readers or views
                of this process hold the mapping, or every reader slot is held by a live
                process.
            StoreDamagedError: LMDB reports damage.
        """
        env = self.env
        try:
            return env.begin(buffers=True)
        except lmdb.MapResizedError:
            # Only a store larger than the reserved read map gets here.
            if self.readers > 1 or self.views:
                raise CacheError(
                    f"cache '{self.path}' grew past this process's read map; other readers or "
                    "views of it are open in this process, so it cannot be remapped under "
                    "them: close them (or restart the process) and read again"
                ) from None
            env.set_mapsize(0)
            return env.begin(buffers=True)
        except lmdb.ReadersFullError:
            env.reader_check()  # slots of dead processes
            try:
                return env.begin(buffers=True)
            except lmdb.ReadersFullError as e:
                raise CacheError(
                    f"cache '{self.path}': all LMDB reader slots are held by live processes; "
                    "fewer workers or readers, or close readers that are no longer used"
                ) from e
        except lmdb.Error as e:
            raise damaged(self.path, "to begin a read transaction", e) from e

    def close_if_unused(self) -> None:
        """Close the environment if no reader and no view holds it (call with the lock)."""
        if self.readers > 0 or self.views > 0 or self.pid != os.getpid():
            return
        if _ENVS.get(self.path) is self:
            del _ENVS[self.path]
        if self in _RETIRED:
            _RETIRED.remove(self)
        self.env.close()
        self.extents.close()


class ViewTracker:
    """Counts the live views handed out from one snapshot, and keeps their mapping open.

    NumPy views and slices of a tracked array keep it alive, so tracking the array a reader
    returns covers everything made from it.
    """

    __slots__ = ("shared", "live", "__weakref__")

    def __init__(self, shared: SharedEnv) -> None:
        self.shared = shared
        self.live = 0

    def track(self, array: Any) -> None:
        ref = weakref.ref(array, self._died)
        with _LOCK:
            _VIEW_REFS[id(ref)] = ref
            self.live += 1
            self.shared.views += 1

    def _died(self, ref: Any) -> None:
        with _LOCK:
            if _VIEW_REFS.pop(id(ref), None) is None:
                return  # forgotten at a fork
            self.live -= 1
            self.shared.views -= 1
            self.shared.close_if_unused()


# realpath -> this process's current environment of that store
_ENVS: dict[str, SharedEnv] = {}
# Environments of stores that were replaced on disk (a rebuild) while readers or views of the
# old files lived; closed when the last of those goes.
_RETIRED: list[SharedEnv] = []
# id -> weak reference of each live view (the references must live for their callbacks to run)
_VIEW_REFS: dict[int, Any] = {}
_LOCK = threading.RLock()  # reentrant: a weakref callback may run while it is held
_OWNER_PID = os.getpid()
_EXIT_HOOK_PID: int | None = None
# Environments inherited from a parent that could not be closed: kept referenced, never used.
_ORPHANS: list[Any] = []


def forget_inherited() -> None:
    """In a fork child: close the parent's environments (they own no transaction) and their
    extent checks' files. Views inherited from the parent die with them (``forks``)."""
    global _OWNER_PID
    for shared in [*_ENVS.values(), *_RETIRED]:
        try:
            shared.env.close()
        except Exception:
            _ORPHANS.append(shared.env)
        shared.extents.close()
    _ENVS.clear()
    _RETIRED.clear()
    _VIEW_REFS.clear()
    _OWNER_PID = os.getpid()


def close_all() -> None:
    """Release this process's reader slots before it exits: closing an environment aborts
    its transactions and frees every slot this process holds in the lock file."""
    with _LOCK:
        for shared in [*_ENVS.values(), *_RETIRED]:
            if shared.pid == os.getpid():
                try:
                    shared.env.close()
                except Exception:
                    pass
                shared.extents.close()
        _ENVS.clear()
        _RETIRED.clear()


class _AfterFork:
    """A weak-referenceable token for multiprocessing's after-fork registry."""


_AFTER_FORK = _AfterFork()


def _finalize_at_exit(_: object = None) -> None:
    multiprocessing.util.Finalize(None, close_all, exitpriority=100)


def _register_exit_hooks() -> None:
    # Registered by every process when it first opens a store, not inherited. A spawn or
    # forkserver worker unpickles its dataset (and so opens its readers) before multiprocessing
    # clears the finalizer registry in the new process, so the finalizer is registered again
    # right after that clear; a forkserver worker ends with os._exit, skipping atexit.
    global _EXIT_HOOK_PID
    if _EXIT_HOOK_PID == os.getpid():
        return
    _EXIT_HOOK_PID = os.getpid()
    atexit.register(close_all)
    _finalize_at_exit()
    multiprocessing.util.register_after_fork(_AFTER_FORK, _finalize_at_exit)


def acquire(path: str, lock: bool | None) -> SharedEnv:
    """This process's environment of the store at ``path``, opened on first use.

    Raises:
        CacheNotFoundError, NotACacheError, TruncatedStoreError: see :func:`check_data_file`.
        CacheError: LMDB cannot open it.
    """
    real = os.path.realpath(path)
    with _LOCK:
        if _OWNER_PID != os.getpid():
            forget_inherited()
        shared = _ENVS.get(real)
        if shared is not None and shared.identity != file_identity(path):
            # The store was replaced on disk (a rebuild renamed a new one over it): the old
            # mapping lives on for its readers and views; new readers get the new store.
            del _ENVS[real]
            _RETIRED.append(shared)
            shared.close_if_unused()
            shared = None
        if shared is None:
            # The identity is taken before opening: a store swapped in between is then seen
            # as replaced at the next snapshot (one reopen too many), never the other way.
            env, locked, extents, identity = _open_checked(path, lock)
            shared = _ENVS[real] = SharedEnv(real, env, locked, identity, extents)
            _register_exit_hooks()
        shared.readers += 1
        return shared


def release(shared: SharedEnv) -> None:
    """A reader is done with ``shared``; it closes once no reader and no view is left."""
    with _LOCK:
        if shared.pid != os.getpid():
            return
        shared.readers -= 1
        shared.close_if_unused()


def _open_checked(path: str, lock: bool | None) -> tuple[lmdb.Environment, bool, Extents, Any]:
    """LMDB's environment of the store, and the extent checks of the very file it mapped.

    The checks open the file after LMDB and must find the one that was at ``path`` before LMDB
    opened it; a store swapped in meanwhile (a rebuild finishing) is opened again.

    Raises:
        CacheNotFoundError, NotACacheError, TruncatedStoreError: see :func:`check_data_file`.
        CacheError: LMDB cannot open it, or it was replaced at every try.
    """
    data_file = os.path.join(path, "data.mdb")
    for _ in range(3):
        identity = file_identity(path)
        check_data_file(path)
        env, locked = _open(path, lock)
        try:
            extents = Extents(data_file)
        except OSError as e:
            env.close()
            raise CacheError(f"cannot read '{data_file}': {e.strerror or e}") from e
        if extents.identity() == identity:
            return env, locked, extents, identity
        extents.close()
        env.close()
    raise CacheError(f"cache '{path}' was replaced at every try to open it; open it again")


def _open(path: str, lock: bool | None) -> tuple[lmdb.Environment, bool]:
    if lock is not False:
        try:
            env = _open_mapped(path, lock=True)
        except lmdb.Error as e:
            denied = (errno.EROFS, errno.EACCES, errno.EPERM)
            if (
                lock is True
                or getattr(e, "errno", None) not in denied
                and not isinstance(e, lmdb.ReadonlyError)
            ):
                raise CacheError(f"cannot open cache '{path}': {e}") from e
        else:
            # Slots of processes that died without closing (kill -9, a crashed worker) would
            # otherwise fill the table and pin old snapshots forever.
            env.reader_check()
            return env, True
        warnings.warn(
            f"cache '{path}' is on a read-only location: opened without LMDB's lock file, which "
            "is only safe while no build-cache writes to it",
            stacklevel=5,
        )
    try:
        return _open_mapped(path, lock=False), False
    except lmdb.Error as e:
        raise CacheError(f"cannot open cache '{path}': {e}") from e


def _open_mapped(path: str, lock: bool) -> lmdb.Environment:
    options: dict[str, Any] = dict(
        readonly=True,
        subdir=True,
        lock=lock,
        max_dbs=MAX_DBS,
        max_readers=MAX_READERS,
        max_spare_txns=0,
    )
    try:
        return lmdb.open(path, map_size=READ_MAP_SIZE, **options)
    except lmdb.Error as e:
        if READ_MAP_SIZE and getattr(e, "errno", None) == errno.ENOMEM:
            # Address space is limited (ulimit -v): map what the store has now instead.
            return lmdb.open(path, map_size=0, **options)
        raise
