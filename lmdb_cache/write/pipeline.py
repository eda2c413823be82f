"""A writer's decoding: the worker processes, and their results in the order they were added.

Files are decoded (read, fingerprinted, normalized, encoded) in ``workers`` processes
(``decoding.decode_task``), at most ``2 * workers`` in flight, so memory stays bounded however
many images are added; results come back in the order they were submitted, so a store is
written in add order whatever the workers' speed.
"""

from __future__ import annotations

import multiprocessing.pool
from collections import deque
from collections.abc import Iterator
from typing import Any

from .decoding import start_pool
from .outcomes import Outcome


class DecodePipeline:
    """Decoding processes with a bounded window of results, drained in submission order.

    Each result travels with a tag of the caller's (the ``extra`` of the add that asked for it).
    """

    def __init__(self, workers: int) -> None:
        self._pool: multiprocessing.pool.Pool | None = start_pool(workers)
        self._window: deque[tuple[Any, Any]] = deque()
        self._in_flight = 0 if workers <= 1 else 2 * workers

    def submit(self, fn: Any, args: tuple[Any, ...], tag: Any) -> Iterator[tuple[Outcome, Any]]:
        """Run ``fn(*args)`` (in a worker when there are any); yield the results that leave
        the window, oldest first."""
        if self._pool is None:
            self._window.append((fn(*args), tag))
        else:
            self._window.append((self._pool.apply_async(fn, args), tag))
        return self.drain(self._in_flight)

    def put(self, outcome: Outcome, tag: Any) -> Iterator[tuple[Outcome, Any]]:
        """Queue an outcome computed here, behind the ones in flight; yield as :meth:`submit`."""
        self._window.append((outcome, tag))
        return self.drain(self._in_flight)

    def drain(self, limit: int = 0) -> Iterator[tuple[Outcome, Any]]:
        """Yield the oldest results until at most ``limit`` are in flight."""
        while len(self._window) > limit:
            pending, tag = self._window.popleft()
            if isinstance(pending, multiprocessing.pool.AsyncResult):
                pending = pending.get()
            yield pending, tag

    def clear(self) -> None:
        """Forget what is in flight."""
        self._window.clear()

    def close(self) -> None:
        """Stop the worker processes. Safe to call twice."""
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None
