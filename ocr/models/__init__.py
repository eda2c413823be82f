"""Text detection models: DBNet and the config entry point that builds it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .backbone import BACKBONES, load_backbone_weights
from .dbnet import DBNet

__all__ = ["BACKBONES", "MODELS", "DBNet", "build_model", "load_backbone_weights"]

MODELS: tuple[str, ...] = ("dbnet",)
_KEYS = ("name", "backbone", "width", "inner_channels", "k", "weights")


def build_model(cfg: Mapping[str, Any]) -> DBNet:
    """Build the model a config's ``model`` section describes.

    Args:
        cfg: ``{"name": "dbnet", "backbone": "resnet18", "width": 64, "inner_channels": 256,
            "k": 50, "weights": None}``; a key left out gets the value shown, its default
            in the config schema (``ocr.config_schema``).

    Returns:
        The model, in training mode on the CPU.

    Raises:
        TypeError: ``cfg`` is not a mapping, or a value has the wrong type.
        ValueError: An unknown name, backbone or key, or a bad value.
        FileNotFoundError: ``weights`` names a file that does not exist.
    """
    if not isinstance(cfg, Mapping):
        raise TypeError(f"model config must be a mapping, got {type(cfg).__name__}")
    unknown = [k for k in cfg if k not in _KEYS]
    if unknown:
        raise ValueError(
            f"model config has unknown keys {', '.join(map(str, unknown))}; valid keys are "
            f"{', '.join(_KEYS)}"
        )
    # Imported here: the schema imports this package for its model and backbone names.
    from ..config_schema import complete

    cfg = complete(cfg, "model")
    name = cfg.pop("name")
    if name not in MODELS:
        raise ValueError(f"unknown model name {name!r}; valid models are {', '.join(MODELS)}")
    if cfg["backbone"] not in BACKBONES:
        raise ValueError(
            f"unknown backbone {cfg['backbone']!r}; valid backbones are {', '.join(BACKBONES)}"
        )
    return DBNet(**cfg)
