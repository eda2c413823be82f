"""YAML configs with ``key=value`` overrides.

Example override: ``datasets.val_dataset.image_cache=data/val.lmdb``.

A config may start from another with ``_base_: other.yaml`` (a path relative to the file):
the base is read first and the file's own keys are merged into it, mapping by mapping.
"""

from __future__ import annotations

import copy
import os
from typing import Any

import yaml


class ConfigError(ValueError):
    """A config file or override that cannot be applied; the message says which and why."""


def load_config(
    path: str | os.PathLike[str], overrides: list[str] | tuple[str, ...] = ()
) -> dict[str, Any]:
    """Read a YAML config and apply ``dotted.key=value`` overrides (values parsed as YAML).

    Raises:
        ConfigError: unreadable file, not a mapping, or an override naming an unknown key.
    """
    return apply_overrides(_read(os.fspath(path), ()), overrides, source=os.fspath(path))


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
    config: dict[str, Any], overrides: list[str] | tuple[str, ...], source: str = "config"
) -> dict[str, Any]:
    """Return a copy of ``config`` with each ``a.b.c=value`` applied.

    Only existing keys can be overridden, so a typo is an error rather than a silent no-op.
    """
    out = copy.deepcopy(config)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like key.path=value")
        node: Any = out
        parts = key.split(".")
        for i, part in enumerate(parts[:-1]):
            if not isinstance(node, dict) or part not in node:
                raise ConfigError(
                    f"override {item!r}: {'.'.join(parts[: i + 1])!r} is not in {source}"
                )
            node = node[part]
        if not isinstance(node, dict) or parts[-1] not in node:
            raise ConfigError(f"override {item!r}: {key!r} is not in {source}")
        try:
            node[parts[-1]] = yaml.safe_load(raw) if raw else None
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: value is not valid YAML: {e}") from e
    return out
