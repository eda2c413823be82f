"""YAML configs with ``key=value`` overrides.

Example override: ``datasets.val_dataset.image_cache=data/val.lmdb``.

A config may start from another with ``_base_: other.yaml`` (a path relative to the file):
the base is read first and the file's own keys are merged into it, mapping by mapping.

Once the overrides are applied, every key is checked for its type and range
(``ocr.config_schema``): a bad value or an unknown key is a ``ConfigError`` naming the key path,
the value and what is allowed (for an unknown key, the closest known one). The checked config
is complete: every key left out holds its default, declared once in the schema.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import os
from collections.abc import Sequence
from typing import Any

import yaml

from .config_schema import ConfigProblem, knows, validate

#: An override: ``"a.b.c=value"`` (the value read as YAML) or ``("a.b.c", value)`` (as is).
Override = str | tuple[str, Any]


class ConfigError(ValueError):
    """A config file or override that cannot be applied; the message says which and why."""


class InvalidConfigError(ConfigError):
    """A config with values the schema does not allow; ``problems`` lists each key."""

    def __init__(self, message: str, problems: Sequence[ConfigProblem]) -> None:
        super().__init__(message)
        self.problems = tuple(problems)


def load_config(path: str | os.PathLike[str], overrides: Sequence[Override] = ()) -> dict[str, Any]:
    """Read a YAML config, apply ``dotted.key=value`` overrides (values parsed as YAML) and
    check the result (``check_config``).

    Raises:
        ConfigError: unreadable file, not a mapping, an override naming an unknown key, or a
            value the schema does not allow (``InvalidConfigError``).
    """
    source = os.fspath(path)
    return resolve_config(_read(source, ()), overrides, source)


def resolve_config(
    config: dict[str, Any], overrides: Sequence[Override], source: str = "config"
) -> dict[str, Any]:
    """``config`` with ``overrides`` applied, checked: the config a run uses.

    Args:
        config: A config read from a file or saved in a checkpoint (not modified).
        overrides: Applied in order (see ``apply_overrides``).
        source: Where ``config`` comes from, for messages (``configs/dbnet.yaml``).

    Raises:
        ConfigError: an override naming an unknown key, or a value the schema does not allow.
    """
    where = f"{source} with overrides" if overrides else source
    return check_config(apply_overrides(config, overrides, source), where)


def check_config(config: dict[str, Any], source: str = "config") -> dict[str, Any]:
    """Check every key of ``config`` for its type and range (``ocr.config_schema``).

    Returns:
        A copy, with numbers that YAML left as text (``lr: 1e-3``) made numbers and every key
        it leaves out set to its default (``ocr.config_schema.complete``): the code that reads
        it indexes keys. A section a run needs (``trainer``, ``model``, ...) that the config
        leaves out stays out, for the run to report.

    Raises:
        InvalidConfigError: one line per problem, naming the key path, the value and what is
            allowed: ``datasets.train_dataset.max_side is 'abc'; expected an integer >= 1, or
            null (no cap)``; for an unknown key the closest known one (``did you mean
            'max_side'?``).
    """
    checked, problems = validate(config)
    if not problems:
        return checked
    if len(problems) == 1:
        raise InvalidConfigError(f"bad config ({source}): {problems[0]}", problems)
    lines = "".join(f"\n  {p}" for p in problems)
    raise InvalidConfigError(f"bad config ({source}), {len(problems)} problems:{lines}", problems)


def config_changes(
    old: dict[str, Any], new: dict[str, Any], prefix: str = ""
) -> list[tuple[str, Any, Any]]:
    """The leaves that differ between two configs: ``(dotted key, old value, new value)``,
    with ``MISSING`` for a key that only one of them has."""
    changes: list[tuple[str, Any, Any]] = []
    for key in [*old, *(k for k in new if k not in old)]:
        a, b = old.get(key, MISSING), new.get(key, MISSING)
        path = f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            changes += config_changes(a, b, f"{path}.")
        elif a != b or type(a) is not type(b):
            changes.append((path, a, b))
    return changes


def config_digest(config: dict[str, Any]) -> str:
    """A short fingerprint of a config: ``sha256:`` and 16 hex digits of its canonical JSON
    (keys sorted). Give it the checked config (``check_config``), whose left-out keys hold
    their defaults, so that a file and the same file with its defaults written out agree.
    """
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return "sha256:" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]


class _Missing:
    def __repr__(self) -> str:
        return "(absent)"


#: The value ``config_changes`` reports for a key a config does not have.
MISSING: Any = _Missing()


def _read(path: str, chain: tuple[str, ...]) -> dict[str, Any]:
    """One file with its ``_base_`` chain merged in."""
    if os.path.abspath(path) in chain:
        raise ConfigError(f"config '{path}' includes itself through _base_")
    try:
        with open(path, encoding="utf-8") as f:
            config = yaml.safe_load(f)
    except OSError as e:
        raise ConfigError(f"cannot read config '{path}': {e.strerror}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"config '{path}' is not valid YAML: {e}") from e
    if not isinstance(config, dict):
        raise ConfigError(f"config '{path}' must be a mapping at the top level")
    base = config.pop("_base_", None)
    if base is None:
        return config
    if not isinstance(base, str):
        raise ConfigError(f"config '{path}': _base_ must be a file path, got {base!r}")
    base_path = os.path.join(os.path.dirname(path), base)
    return merge(_read(base_path, (*chain, os.path.abspath(path))), config)


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``base`` with ``update`` merged in: mappings recursively, other values replaced."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def apply_overrides(
    config: dict[str, Any], overrides: Sequence[Override], source: str = "config"
) -> dict[str, Any]:
    """Return a copy of ``config`` with each override applied.

    An override is ``"a.b.c=value"`` (the value read as YAML; empty means null) or a pair
    ``("a.b.c", value)`` taken as is (the CLI's options, such as ``-o``). Only existing keys
    can be overridden (or keys of the schema that the config leaves out for their defaults), so
    a typo is an error rather than a silent no-op.

    Raises:
        ConfigError: a malformed override, one naming a key ``config`` lacks (with the
            closest key it has), or a value that is not YAML.
    """
    out = copy.deepcopy(config)
    for item in overrides:
        key, value = parse_override(item)
        node: Any = out
        parts = key.split(".")
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if last and isinstance(node, dict) and part not in node and knows(key):
                break  # a key the file leaves out for its default
            if not isinstance(node, dict) or part not in node:
                wrong = ".".join(parts[: i + 1])
                raise ConfigError(
                    f"override {_show(item)}: {wrong!r} is not in {source}"
                    + _did_you_mean(part, node, ".".join(parts[:i]))
                )
            if i < len(parts) - 1:
                node = node[part]
        node[parts[-1]] = value
    return out


def parse_override(item: Override) -> tuple[str, Any]:
    """``(dotted key, value)`` of an override; ``"a.b=value"`` has its value read as YAML.

    Raises:
        ConfigError: not ``key=value``, or a value that is not YAML.
    """
    if isinstance(item, tuple):
        return item
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {item!r} must look like key.path=value")
    try:
        return key, yaml.safe_load(raw) if raw else None
    except yaml.YAMLError as e:
        raise ConfigError(f"override {item!r}: value is not valid YAML: {e}") from e


def _show(item: Override) -> str:
    return repr(item if isinstance(item, str) else f"{item[0]}={item[1]}")


def _did_you_mean(part: str, node: Any, parent: str) -> str:
    if not isinstance(node, dict):
        return ""
    close = difflib.get_close_matches(part, [str(k) for k in node], n=1)
    if not close:
        return ""
    return f"; did you mean {(f'{parent}.' if parent else '') + close[0]!r}?"
