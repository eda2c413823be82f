"""How long work reports itself to people: the progress protocol and sizes in bytes.

Writers, ``validate_cache`` and ``copy_cache`` report to a :class:`Progress` (the command line
passes a tqdm bar); nothing in the package prints but ``cli``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol


class Progress(Protocol):
    """What long work reports to: its size once, then each step done.

    Units are the work's own: images for a build, bytes for a validation or a copy.
    """

    def start(self, total: int) -> None:
        """The work has ``total`` units."""
        ...

    def advance(self, amount: int = 1) -> None:
        """``amount`` more units are done."""
        ...


class NoProgress:
    """Progress nobody watches."""

    def start(self, total: int) -> None:
        pass

    def advance(self, amount: int = 1) -> None:
        pass


class _Callback:
    """A ``(done, total)`` callback (the form ``validate_cache`` took before) as a Progress."""

    def __init__(self, fn: Callable[[int, int], Any]) -> None:
        self.fn = fn
        self.total = 0
        self.done = 0

    def start(self, total: int) -> None:
        self.total = total

    def advance(self, amount: int = 1) -> None:
        self.done += amount
        self.fn(self.done, self.total)


def as_progress(progress: Progress | Callable[[int, int], Any] | None) -> Progress:
    """``progress`` as a :class:`Progress`: None reports nowhere, a plain ``(done, total)``
    callable is called after each step."""
    if progress is None:
        return NoProgress()
    if hasattr(progress, "advance") and hasattr(progress, "start"):
        return progress  # type: ignore[return-value]
    return _Callback(progress)  # type: ignore[arg-type]


def human_bytes(nbytes: float) -> str:
    """``6.4 GB``, ``211.3 MB``, ``512 B``: decimal units, one decimal."""
    value = float(nbytes)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            break
        value /= 1000
    return f"{int(nbytes)} B" if unit == "B" else f"{value:.1f} {unit}"
