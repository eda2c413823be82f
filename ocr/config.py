"""YAML configs with ``key=value`` overrides.

Example override: ``datasets.val_dataset.image_cache=data/val.lmdb``.
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
    try:
        with open(path, encoding="utf-8") as f:
            config = yaml.safe_load(f)
    except OSError as e:
        raise ConfigError(f"cannot read config '{path}': {e.strerror}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"config '{path}' is not valid YAML: {e}") from e
    if not isinstance(config, dict):
        raise ConfigError(f"config '{path}' must be a mapping at the top level")
    return apply_overrides(config, overrides, source=os.fspath(path))


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
