"""What a config may hold: every key of ``configs/dbnet.yaml`` and ``configs/data/base.yaml``,
its type, its range and its default.

``validate(config)`` returns the config (numbers YAML left as text, such as ``1e-3``, made
floats) and a list of problems, each naming the key path, the value and what is allowed;
an unknown key comes with the closest known one. ``ocr.config.check_config`` raises them.

Each key's default is declared here, once, beside its rule; a valid config comes back
complete (``complete``): every key it leaves out holds its default, so the code that reads
it indexes keys and repeats no default. Where null means something of its own (no cap, read
from disk, the targets' ratio), null is the default and stays null. Two kinds of section:

* those a run needs (``datasets`` and each split in it, ``dataloader``, ``model``,
  ``optimizer``, ``trainer``): left out, they stay out (the run reports a missing one it
  needs); given, their missing keys are filled. A dataset's ``image_path`` and
  ``annotation_path`` have no default and must be given;
* the others (``targets``, ``normalization``, ``loss``, ``postprocess``, ``metric``,
  ``scheduler``): left out or null, they get all their defaults.

A dataset's ``transform`` in the ``_target_`` form (a callable of the user's,
``ocr.data.instantiate``) is checked for its ``_target_`` only and never filled: its other
keys are the callable's arguments.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lmdb_cache.images import RESAMPLE_FILTERS

from .config_rules import (
    UNFILLED,
    Bool,
    Choice,
    ConfigProblem,
    Device,
    Node,
    Number,
    Numbers,
    Rule,
    Section,
    Text,
    check_mapping,
    complete_mapping,
    show,
)
from .data.normalize import DEFAULT_MEAN, DEFAULT_STD
from .models import BACKBONES, MODELS

__all__ = ["SCHEMA", "SPLITS", "TARGET", "ConfigProblem", "complete", "validate"]

SPLITS = ("train_dataset", "val_dataset", "test_dataset")
TARGET = "_target_"
_SEED_MAX = 2**32 - 1  # numpy's global seed is a 32-bit integer
_STRIDE = 32  # DBNet's input sides are multiples of its output stride

_POSITIVE = Number(minimum=0, open_min=True)
_WEIGHT = Number(minimum=0)
_FRACTION = Number(minimum=0, maximum=1)
_OPEN_FRACTION = Number(minimum=0, maximum=1, open_min=True, open_max=True)
_SIZE = Number(integer=True, minimum=_STRIDE, multiple_of=_STRIDE)

# The built-in transforms (ocr.data.transforms): their keys and defaults.
_TRANSFORM_NAME = Choice(("val", "train"), default="val")
_VAL_TRANSFORM = Section({"name": _TRANSFORM_NAME, "size": _SIZE.defaults_to(640)})
_TRAIN_TRANSFORM = Section(
    {
        **_VAL_TRANSFORM.keys,
        "scale_range": Numbers(2, _POSITIVE, ordered=True, default=[0.75, 2.0]),
        "flip_prob": _FRACTION.defaults_to(0.5),
    }
)


@dataclass(frozen=True)
class _Transform:
    """A dataset's transform: the built-in form ``{name: train|val, size, ...}``, checked and
    completed, or ``{_target_: package.module.Callable, ...}``, whose other keys are the
    callable's arguments (checked for its ``_target_`` only, never completed). Left out, it
    is the default built-in form (``{name: val, size: 640}``)."""

    @staticmethod
    def name(value: dict[str, Any]) -> Any:
        return value.get("name", _TRANSFORM_NAME.default)

    def form(self, value: dict[str, Any]) -> Section:
        """The keys of the built-in form that ``value`` names."""
        # An unknown name is reported once, not with every train-only key after it.
        return _VAL_TRANSFORM if self.name(value) == "val" else _TRAIN_TRANSFORM

    def check(self, value: Any, path: str, problems: list[ConfigProblem]) -> Any:
        if not isinstance(value, dict):
            problems.append(
                ConfigProblem(
                    path,
                    f"is {show(value)}; expected a mapping: {{name: train|val, size: N, ...}} "
                    "or {_target_: package.module.Callable, ...}",
                )
            )
            return value
        if TARGET in value:
            target = value[TARGET]
            if not isinstance(target, str) or not target.strip():
                problems.append(
                    ConfigProblem(
                        f"{path}.{TARGET}",
                        f"is {show(target)}; expected a dotted path such as "
                        "'package.module.Callable'",
                    )
                )
            return value
        return check_mapping(self.form(value), value, path, problems)

    def complete(self, value: Any) -> Any:
        if not isinstance(value, dict) or TARGET in value:
            return value
        if self.name(value) not in _TRANSFORM_NAME.choices:
            return value  # left for the builder to refuse, naming the transforms it knows
        return complete_mapping(self.form(value), value)


_DATASET = Section(
    {
        "image_path": Text("a folder of images"),
        "annotation_path": Text("an annotation file"),
        "image_cache": Text(
            "an .lmdb built by build-cache", null="read from image_path", default=None
        ),
        "preload_images": Bool(default=False),
        "cache_fallback": Choice(("error", "disk"), default="error"),
        "cache_stale": Choice(("error", "warn"), default="error"),
        "cache_readahead": Bool(default=True),
        "max_side": Number(integer=True, minimum=1, null="no cap", default=None),
        "resample": Choice(tuple(sorted(RESAMPLE_FILTERS)), default="bilinear"),
        "transform": _Transform(),
    }
)

SCHEMA = Section(
    {
        "datasets": Section(dict.fromkeys(SPLITS, _DATASET)),
        "targets": Section(
            {
                "shrink_ratio": _OPEN_FRACTION.defaults_to(0.4),
                "thresh_min": _FRACTION.defaults_to(0.3),
                "thresh_max": _FRACTION.defaults_to(0.7),
                "min_text_size": _WEIGHT.defaults_to(8),
            },
            null=True,
        ),
        "normalization": Section(
            {
                "mean": Numbers(3, Number(), default=list(DEFAULT_MEAN)),
                "std": Numbers(3, _POSITIVE, default=list(DEFAULT_STD)),
            },
            null=True,
        ),
        "dataloader": Section(
            {
                "batch_size": Number(integer=True, minimum=1, default=4),
                "num_workers": Number(integer=True, minimum=0, default=0),
                "multiprocessing_context": Choice(
                    ("fork", "spawn", "forkserver"), null="the platform default", default=None
                ),
                "persistent_workers": Bool(default=False),
                "seed": Number(integer=True, minimum=0, default=0),
            }
        ),
        "model": Section(
            {
                "name": Choice(MODELS, default="dbnet"),
                "backbone": Choice(BACKBONES, default="resnet18"),
                "width": Number(integer=True, minimum=1, default=64),
                "inner_channels": Number(integer=True, minimum=4, multiple_of=4, default=256),
                "k": _POSITIVE.defaults_to(50.0),
                "weights": Text(
                    "a .pth of backbone weights", null="random initialisation", default=None
                ),
            }
        ),
        "loss": Section(
            {
                "prob_weight": _WEIGHT.defaults_to(1.0),
                "binary_weight": _WEIGHT.defaults_to(1.0),
                "thresh_weight": _WEIGHT.defaults_to(10.0),
                "ohem_ratio": _POSITIVE.defaults_to(3.0),
                "eps": _POSITIVE.defaults_to(1e-6),
                "empty_negatives": Number(integer=True, minimum=0, default=1000),
            },
            null=True,
        ),
        "postprocess": Section(
            {
                "thresh": _OPEN_FRACTION.defaults_to(0.3),
                "box_thresh": _FRACTION.defaults_to(0.6),
                "unclip_ratio": _POSITIVE.defaults_to(1.5),
                "unclip_mode": Choice(("ratio", "inverse"), default="ratio"),
                "max_candidates": Number(integer=True, minimum=1, default=1000),
                "min_size": _WEIGHT.defaults_to(3.0),
                # The inverse unclip undoes the targets' shrink, so it takes their ratio
                # unless told; null keeps following targets.shrink_ratio when that changes.
                "shrink_ratio": Number(
                    minimum=0,
                    maximum=1,
                    open_min=True,
                    open_max=True,
                    null="targets.shrink_ratio",
                    default=None,
                ),
            },
            null=True,
        ),
        "metric": Section(
            {"iou_threshold": Number(minimum=0, maximum=1, open_min=True, default=0.5)},
            null=True,
        ),
        "optimizer": Section(
            {
                "name": Choice(("adam", "sgd"), default="adam"),
                "lr": _POSITIVE.defaults_to(1e-3),
                "weight_decay": _WEIGHT.defaults_to(0.0),
                "momentum": _WEIGHT.defaults_to(0.9),  # sgd only
            }
        ),
        "scheduler": Section(
            {
                "name": Choice(("poly", "constant"), default="constant"),
                "power": _WEIGHT.defaults_to(0.9),
                "warmup_steps": Number(integer=True, minimum=0, default=0),
            },
            null=True,
        ),
        "trainer": Section(
            {
                "epochs": Number(integer=True, minimum=1, default=1),
                "device": Device(default="auto", null_is_default=True),
                "amp": Bool(default=False),
                "val_every": Number(integer=True, minimum=0, default=1),
                # Written by earlier versions (never used): kept so their checkpoints load.
                "log_every": Number(integer=True, minimum=0, default=UNFILLED),
                "output_dir": Text("a folder", default="runs/dbnet", null_is_default=True),
                "resume": Text("a checkpoint", null="start afresh", default=None),
                "seed": Number(integer=True, minimum=0, maximum=_SEED_MAX, default=0),
                "threads": Number(integer=True, minimum=1, null="torch's default", default=None),
                "log_every_steps": Number(integer=True, minimum=0, default=0),
                "checkpoint_every_steps": Number(integer=True, minimum=0, default=0),
            }
        ),
    }
)


def validate(config: Any) -> tuple[Any, list[ConfigProblem]]:
    """Check ``config`` against ``SCHEMA``.

    Returns:
        A copy of the config with numbers written as text (``1e-3``) made numbers and, when
        it is valid, every key it leaves out set to its default (``complete``); and the
        problems found (empty when the config is valid), in the order of its keys.
    """
    problems: list[ConfigProblem] = []
    out = check_mapping(SCHEMA, copy.deepcopy(config), "", problems)
    if not problems:
        # On the keys the config gives, as before defaults were filled in: a default never
        # makes a config fail that passed (an old checkpoint's, say).
        _check_datasets(out.get("datasets") or {}, problems)
        _check_targets(out.get("targets") or {}, problems)
    if not problems:
        out = complete_mapping(SCHEMA, out)
    return out, problems


def complete(config: Mapping[str, Any], path: str = "") -> dict[str, Any]:
    """A copy of ``config`` with every key it leaves out set to its default (and a null that
    reads as the default replaced by it); values are not checked (``validate`` does that), and
    what is not a mapping is left as it is.

    Args:
        config: A whole config, or with ``path`` one of its sections.
        path: Where ``config`` sits in a whole config: ``"dataloader"``,
            ``"datasets.val_dataset"``, ``"datasets.val_dataset.transform"`` (every split has
            the same keys); empty for a whole config.

    Raises:
        KeyError: ``path`` names no section of the schema.
    """
    spec: Section | Rule | Node = SCHEMA
    for part in path.split(".") if path else ():
        if not isinstance(spec, Section) or part not in spec.keys:
            raise KeyError(f"{path!r} is not a section of the config schema")
        spec = spec.keys[part]
    if isinstance(spec, Rule):
        raise KeyError(f"{path!r} is a value, not a section of the config schema")
    value = copy.deepcopy(dict(config))
    return complete_mapping(spec, value) if isinstance(spec, Section) else spec.complete(value)


def knows(path: str) -> bool:
    """Whether ``path`` (``trainer.log_every_steps``) names a key of the schema."""
    spec: Section | Rule | Node = SCHEMA
    for part in path.split("."):
        if not isinstance(spec, Section) or part not in spec.keys:
            return False
        spec = spec.keys[part]
    return True


def _check_datasets(datasets: dict[str, Any], problems: list[ConfigProblem]) -> None:
    """A cap below the transform's output size would downscale then upscale every image."""
    for split, dataset in datasets.items():
        transform = dataset.get("transform")
        max_side = dataset.get("max_side")
        if not isinstance(transform, dict) or TARGET in transform or max_side is None:
            continue
        size = transform.get("size")  # left out: the transform's default, checked when built
        if size is not None and max_side < size:
            problems.append(
                ConfigProblem(
                    f"datasets.{split}.max_side",
                    f"is {max_side}, below the transform size {size}: images would be upscaled "
                    "after being downscaled; expected null or an integer >= the transform size",
                )
            )


def _check_targets(targets: dict[str, Any], problems: list[ConfigProblem]) -> None:
    low, high = targets.get("thresh_min"), targets.get("thresh_max")
    if low is not None and high is not None and low > high:
        problems.append(
            ConfigProblem("targets.thresh_min", f"is {low}; expected <= thresh_max ({high})")
        )
