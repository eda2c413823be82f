"""Run a function in a forked child, so that a signal from a damaged mapping ends the child.

LMDB trusts the pages it maps: a damaged page can make it read past the end of the file
(SIGBUS) or follow a wild pointer (SIGSEGV), and no Python code can catch that. The work that
must read a store known to be damaged (``validate-cache`` walking its records, a rebuild
reading the settings of the store it replaces) runs through :func:`call_isolated`: the child
does the work and sends back a msgpack result; if it dies by a signal, the caller gets a
:class:`ChildCrashed` naming the signal instead of dying itself.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from typing import Any

import msgpack


class ChildCrashed(RuntimeError):
    """The isolated child died by a signal (or exited without a result)."""

    def __init__(self, how: str) -> None:
        self.how = how
        super().__init__(how)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def call_isolated(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` in a forked child; its result must be msgpack-serializable.

    Where ``fork`` is missing (Windows) it runs in this process.

    Raises:
        ChildCrashed: the child died by a signal or ended without sending a result.
        RuntimeError: ``fn`` raised in the child (the message carries its type and text).
    """
    if not hasattr(os, "fork"):
        return fn(*args)
    read_end, write_end = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child: do the work, send the result, never return
        os.close(read_end)
        code = 0
        try:
            try:
                payload = msgpack.packb(["ok", fn(*args)], use_bin_type=True)
            except BaseException as e:  # noqa: BLE001 - everything goes back to the parent
                payload = msgpack.packb(["error", f"{type(e).__name__}: {e}"], use_bin_type=True)
                code = 1
            view = memoryview(payload)
            while view:
                view = view[os.write(write_end, view) :]
        finally:
            try:  # os._exit skips atexit: release the reader slots this child took
                from ..read import environment

                environment.close_all()
            finally:
                os._exit(code)
    os.close(write_end)
    chunks = []
    try:
        while chunk := os.read(read_end, 1 << 20):
            chunks.append(chunk)
    finally:
        os.close(read_end)
        _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        raise ChildCrashed(f"killed by {_signal_name(os.WTERMSIG(status))}")
    if not chunks:
        raise ChildCrashed(f"exited with status {os.waitstatus_to_exitcode(status)} and no result")
    kind, value = msgpack.unpackb(b"".join(chunks), raw=False)
    if kind == "error":
        raise RuntimeError(value)
    return value
