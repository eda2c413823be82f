"""What a ``fork`` does to the readers of a process: the package's only ``os.fork`` hooks.

DataLoader workers are forked (or spawned, or started by a fork server) while readers are open
in the main process. The order of events:

1. **Before the fork, in the parent** (:func:`_before_fork`): every reader of the process ends
   its snapshot, aborting its read transaction. An environment closed in the child while it
   still owned a read transaction would free the *parent's* reader slot in the lock file.
   And the process's objects are frozen for the garbage collector (``gc.freeze``), unless
   someone froze some already: a child shares the parent's pages until it writes to them, and
   its collections would write to the header of every object it inherited (~35 MB a
   DataLoader worker over an epoch, docs/sizing.md). The children never collect what they
   inherited; the parent unfreezes its objects right after the fork
   (:func:`_after_fork_in_parent`).
2. **After the fork, in the child** (:func:`_after_fork_in_child`): the environments inherited
   from the parent, which own no transaction now, are closed together with the files of their
   extent checks (``environment.forget_inherited``); views inherited from the parent die with
   them. The parent goes on with its environments untouched and begins new snapshots on its
   next reads.
3. **On the child's first read**: each reader sees a new process id, drops what it held and
   asks ``environment.acquire`` for this process's own environment, which registers the exit
   hooks that release the child's reader slots (``atexit``, and ``multiprocessing``'s
   finalizer, registered again after a spawn or fork-server worker clears its registry).

Spawned and fork-server workers get readers by unpickling them (only the path and options
travel, ``handle.StoreHandle.state``); they open on first use like a forked child.
"""

from __future__ import annotations

import gc
import os
import weakref
from typing import Protocol

from . import environment


class _Snapshotting(Protocol):
    def end_snapshot(self) -> None: ...


# The handles of this process's readers, so a fork can end their snapshots first.
_HANDLES: weakref.WeakSet[_Snapshotting] = weakref.WeakSet()


def track(handle: _Snapshotting) -> None:
    """Have ``handle``'s snapshot ended before every ``fork`` of this process."""
    _HANDLES.add(handle)


# Whether the last fork froze the objects (and the parent must unfreeze them).
_FROZE = False


def _before_fork() -> None:
    global _FROZE
    for handle in list(_HANDLES):
        handle.end_snapshot()
    _FROZE = gc.get_freeze_count() == 0
    if _FROZE:
        gc.freeze()


def _after_fork_in_parent() -> None:
    if _FROZE:
        gc.unfreeze()


def _after_fork_in_child() -> None:
    environment.forget_inherited()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_before_fork,
        after_in_parent=_after_fork_in_parent,
        after_in_child=_after_fork_in_child,
    )
