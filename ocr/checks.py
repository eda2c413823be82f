"""Checks of numeric arguments: what counts as a number, and the messages when one is wrong.

``bool`` is a subclass of ``int`` (``isinstance(True, int)`` holds), so a bare ``isinstance``
test lets ``k=True`` through as ``1``; every check here refuses bools, which are a caller's
mistake wherever a number is meant.
"""

from __future__ import annotations

import math
from typing import Any, TypeVar

import numpy as np

N = TypeVar("N")


def is_number(value: Any, *, integer: bool = False, numpy: bool = True) -> bool:
    """Whether ``value`` is a real number (never a bool).

    Args:
        value: What to test.
        integer: Accept integers only (``int``; with ``numpy`` also ``np.integer``).
        numpy: Also accept numpy scalars (``np.integer``, ``np.floating``). Without it only
            ``int`` and ``float`` pass, and so does ``np.float64``, which is a ``float``.
    """
    if isinstance(value, bool):
        return False
    if integer:
        return isinstance(value, (int, np.integer) if numpy else int)
    return isinstance(value, (int, float, np.integer, np.floating) if numpy else (int, float))


def _expected(
    minimum: float | None,
    maximum: float | None,
    exclusive_minimum: bool,
    exclusive_maximum: bool,
    finite: bool,
    integer: bool,
) -> str:
    """The default description of the valid range, e.g. ``in (0, 1]`` or ``a finite number > 0``."""
    if minimum is not None and maximum is not None:
        low = "(" if exclusive_minimum else "["
        high = ")" if exclusive_maximum else "]"
        bound = f"in {low}{minimum}, {maximum}{high}"
    elif minimum is not None:
        bound = f"{'>' if exclusive_minimum else '>='} {minimum}"
    elif maximum is not None:
        bound = f"{'<' if exclusive_maximum else '<='} {maximum}"
    else:
        bound = ""
    if finite and not integer:
        return f"a finite number {bound}".rstrip()
    return bound or "a number"


def check_number(
    name: str,
    value: N,
    *,
    integer: bool = False,
    numpy: bool = True,
    minimum: float | None = None,
    maximum: float | None = None,
    exclusive_minimum: bool = False,
    exclusive_maximum: bool = False,
    finite: bool = False,
    expected: str | None = None,
) -> N:
    """Check a numeric argument and return it unchanged.

    NaN fails every bound (and ``finite``), so a bounded parameter never accepts it.

    Args:
        name: The parameter as the messages name it (``"thresh"``, ``"backbone width"``).
        value: The argument.
        integer: Only integers pass (see ``is_number``).
        numpy: numpy scalars pass too (see ``is_number``).
        minimum: Smallest valid value (None: no lower bound).
        maximum: Largest valid value (None: no upper bound).
        exclusive_minimum: ``minimum`` itself is invalid.
        exclusive_maximum: ``maximum`` itself is invalid.
        finite: Infinities and NaN are invalid.
        expected: What the ``ValueError`` says the value must be, in place of the description
            built from the bounds (``"in (0, 1]"``, ``">= 1"``, ``"a finite number > 0"``).

    Returns:
        ``value`` itself.

    Raises:
        TypeError: ``value`` is not a number (an integer with ``integer``), or is a bool:
            ``"<name> must be a number, got str"`` (``an integer`` with ``integer``; ``an int``
            with ``integer`` and without ``numpy``).
        ValueError: ``value`` is out of range: ``"<name> must be <expected>, got <value>"``.
    """
    if not is_number(value, integer=integer, numpy=numpy):
        kind = ("an integer" if numpy else "an int") if integer else "a number"
        raise TypeError(f"{name} must be {kind}, got {type(value).__name__}")
    number: Any = value
    ok = not finite or math.isfinite(number)
    if minimum is not None:
        ok = ok and (number > minimum if exclusive_minimum else number >= minimum)
    if maximum is not None:
        ok = ok and (number < maximum if exclusive_maximum else number <= maximum)
    if not ok:
        if expected is None:
            expected = _expected(
                minimum, maximum, exclusive_minimum, exclusive_maximum, finite, integer
            )
        raise ValueError(f"{name} must be {expected}, got {value}")
    return value
