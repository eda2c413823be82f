"""The parts ``ocr.config_schema`` is declared with: a leaf ``Rule`` (type, range and default;
``Number``, ``Numbers``, ``Bool``, ``Choice``, ``Text``, ``Device``), a ``Section`` of known
keys, and the two walks over a config: ``check_mapping`` (one ``ConfigProblem`` per bad or
unknown key) and ``complete_mapping`` (each key left out set to its default).
"""

from __future__ import annotations

import copy
import difflib
import math
import re
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, TypeVar

import torch


class _Marker:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


# The default of a key that has none: a config must give it (a dataset's image_path).
REQUIRED: Any = _Marker("REQUIRED")
# The default of a key kept only so that old configs load: never filled, never read.
UNFILLED: Any = _Marker("UNFILLED")

_R = TypeVar("_R", bound="Rule")


@dataclass(frozen=True)
class ConfigProblem:
    """One key whose value is not allowed, or that the schema does not know."""

    key: str  # the dotted path, e.g. datasets.train_dataset.max_side
    reason: str  # what is wrong and what is allowed: "is 'abc'; expected an integer >= 1"

    def __str__(self) -> str:
        return f"{self.key} {self.reason}"


@dataclass(frozen=True)
class Rule:
    """A leaf value's type, range and default (what a config that leaves the key out gets).

    ``null_is_default``: null is allowed and reads as the default, which replaces it.
    """

    default: Any = field(default=REQUIRED, kw_only=True)
    null_is_default: bool = field(default=False, kw_only=True)

    def defaults_to(self: _R, default: Any) -> _R:
        """This rule with ``default`` (for the rules several keys share)."""
        return replace(self, default=default)

    def allowed(self) -> str:
        """What the value may be, as the messages say it: ``an integer >= 1``."""
        raise NotImplementedError

    def check(self, value: Any) -> tuple[bool, Any]:
        """Whether ``value`` passes, and the value to keep (a number written as text, made
        a number)."""
        raise NotImplementedError


def show(value: Any) -> str:
    """A value as YAML writes it where that differs from Python: null, true, false."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return repr(value)


def _or_null(text: str, null: str | None) -> str:
    return f"{text}, or null ({null})" if null else text


def _as_number(value: Any, integer: bool) -> float | None:
    """``value`` as a number, or None. YAML 1.1 reads ``1e-3`` as text (it wants ``1.0e-3``),
    so text that is a decimal number passes where a float is expected."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if integer:
        return None
    if isinstance(value, float):
        return value
    if isinstance(value, str) and re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?", value):
        return float(value)
    return None


@dataclass(frozen=True)
class Number(Rule):
    integer: bool = False
    minimum: float | None = None
    maximum: float | None = None
    open_min: bool = False
    open_max: bool = False
    multiple_of: int | None = None
    null: str | None = None  # what null means, where null is allowed

    def bounds(self) -> str:
        """``>= 1``, ``in (0, 1]``, or nothing."""
        low, high = self.minimum, self.maximum
        if low is not None and high is not None:
            left, right = "(" if self.open_min else "[", ")" if self.open_max else "]"
            return f"in {left}{low}, {high}{right}"
        if low is not None:
            return f"{'>' if self.open_min else '>='} {low}"
        return ""

    def allowed(self) -> str:
        text = f"{'an integer' if self.integer else 'a number'} {self.bounds()}".rstrip()
        if self.multiple_of:
            text += f", a multiple of {self.multiple_of}"
        return _or_null(text, self.null)

    def check(self, value: Any) -> tuple[bool, Any]:
        if value is None:
            return self.null is not None, value
        number = _as_number(value, self.integer)
        if number is None or not math.isfinite(number):
            return False, value
        ok = True
        if self.minimum is not None:
            ok = number > self.minimum if self.open_min else number >= self.minimum
        if ok and self.maximum is not None:
            ok = number < self.maximum if self.open_max else number <= self.maximum
        if ok and self.multiple_of:
            ok = number % self.multiple_of == 0
        return ok, number if isinstance(value, str) else value


@dataclass(frozen=True)
class Numbers(Rule):
    """A list of ``length`` numbers, each passing ``item``; ``ordered``: ascending."""

    length: int
    item: Number
    ordered: bool = False

    def allowed(self) -> str:
        each = f", each {self.item.bounds()}" if self.item.bounds() else ""
        return f"a list of {self.length} numbers{each}{', low <= high' if self.ordered else ''}"

    def check(self, value: Any) -> tuple[bool, Any]:
        if not isinstance(value, list | tuple) or len(value) != self.length:
            return False, value
        results = [self.item.check(v) for v in value]
        numbers = [v for _, v in results]
        ok = all(good for good, _ in results)
        if ok and self.ordered:
            ok = all(a <= b for a, b in zip(numbers, numbers[1:], strict=False))
        return ok, numbers if ok else value


@dataclass(frozen=True)
class Bool(Rule):
    def allowed(self) -> str:
        return "true or false"

    def check(self, value: Any) -> tuple[bool, Any]:
        return isinstance(value, bool), value


@dataclass(frozen=True)
class Choice(Rule):
    choices: tuple[str, ...]
    null: str | None = None

    def allowed(self) -> str:
        return _or_null("one of " + ", ".join(repr(c) for c in self.choices), self.null)

    def check(self, value: Any) -> tuple[bool, Any]:
        if value is None:
            return self.null is not None, value
        return value in self.choices, value


@dataclass(frozen=True)
class Text(Rule):
    what: str
    null: str | None = None

    def allowed(self) -> str:
        null = str(self.default) if self.null_is_default else self.null
        return _or_null(f"{self.what} (a non-empty string)", null)

    def check(self, value: Any) -> tuple[bool, Any]:
        if value is None:
            return self.null is not None or self.null_is_default, value
        return isinstance(value, str) and bool(value.strip()), value


@dataclass(frozen=True)
class Device(Rule):
    def allowed(self) -> str:
        return "auto, cpu, cuda or cuda:N (a torch device)"

    def check(self, value: Any) -> tuple[bool, Any]:
        if value is None or value == "auto":  # null reads as auto (null_is_default)
            return True, value
        if not isinstance(value, str):
            return False, value
        try:
            torch.device(value.strip())
        except RuntimeError:
            return False, value
        return True, value


class Node(Protocol):
    """A key that checks and completes its own value (a dataset's transform, whose form
    depends on its value)."""

    def check(self, value: Any, path: str, problems: list[ConfigProblem]) -> Any:
        """The value to keep; adds a problem for each bad part of ``value`` at ``path``."""
        ...

    def complete(self, value: Any) -> Any:
        """``value`` (``{}`` when left out) with its missing keys set to their defaults."""
        ...


@dataclass(frozen=True)
class Section:
    """A mapping with known keys. ``null``: the section may be null or left out, and then
    gets all its defaults; without it a section left out stays out (a run needs it)."""

    keys: dict[str, Rule | Section | Node]
    null: bool = False


def check_mapping(section: Section, value: Any, path: str, problems: list[ConfigProblem]) -> Any:
    """Check ``value`` (modified in place) against ``section`` at ``path`` (``""`` for a
    whole config), adding a problem for each bad, unknown or missing key; returns the value
    to keep."""
    if value is None and section.null:
        return value
    if not isinstance(value, dict):
        problems.append(ConfigProblem(path or "config", f"is {show(value)}; expected a mapping"))
        return value
    for key, item in value.items():
        where = f"{path}.{key}" if path else str(key)
        spec = section.keys.get(key)
        if spec is None:
            problems.append(ConfigProblem(where, _unknown(key, section)))
        elif isinstance(spec, Section):
            value[key] = check_mapping(spec, item, where, problems)
        elif isinstance(spec, Rule):
            ok, value[key] = spec.check(item)
            if not ok:
                problems.append(ConfigProblem(where, f"is {show(item)}; expected {spec.allowed()}"))
        else:
            value[key] = spec.check(item, where, problems)
    for key, spec in section.keys.items():
        if isinstance(spec, Rule) and spec.default is REQUIRED and key not in value:
            problems.append(
                ConfigProblem(f"{path}.{key}", f"is missing; expected {spec.allowed()}")
            )
    return value


def _unknown(key: Any, section: Section) -> str:
    known = list(section.keys)
    close = difflib.get_close_matches(str(key), known, n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"known keys: {', '.join(known)}"
    return f"is not a known key; {hint}"


def complete_mapping(section: Section, value: dict[str, Any]) -> dict[str, Any]:
    """Fill ``value`` (a mapping ``section`` describes) in place and return it: each key it
    leaves out gets its default, after the keys it has; a sub-section left out gets its
    defaults only if it may be null (see ``Section``). Values are not checked."""
    for key, spec in section.keys.items():
        if isinstance(spec, Section):
            item = value.get(key)
            if isinstance(item, dict):
                complete_mapping(spec, item)
            elif spec.null and item is None:
                value[key] = complete_mapping(spec, {})
        elif isinstance(spec, Rule):
            if spec.default is REQUIRED or spec.default is UNFILLED:
                continue
            if key not in value or (value[key] is None and spec.null_is_default):
                value[key] = copy.deepcopy(spec.default)
        else:
            value[key] = spec.complete(value[key] if key in value else {})
    return value
