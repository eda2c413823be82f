"""What a config may hold: every key of ``configs/dbnet.yaml`` and ``configs/data/base.yaml``,
its type and its range.

``validate(config)`` returns the config (numbers YAML left as text, such as ``1e-3``, made
floats) and a list of problems, each naming the key path, the value and what is allowed;
an unknown key comes with the closest known one. ``ocr.config.check_config`` raises them.
Sections may be left out (the run reports a missing section it needs); the keys that are
there are checked. A dataset's ``transform`` in the ``_target_`` form (a callable of the
user's, ``ocr.data.instantiate``) is checked for its ``_target_`` only: its other keys are the
callable's arguments.
"""

from __future__ import annotations

import copy
import difflib
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from lmdb_cache.images import RESAMPLE_FILTERS

from .models import BACKBONES, MODELS

SPLITS = ("train_dataset", "val_dataset", "test_dataset")
TARGET = "_target_"
_SEED_MAX = 2**32 - 1  # numpy's global seed is a 32-bit integer
_STRIDE = 32  # DBNet's input sides are multiples of its output stride


@dataclass(frozen=True)
class ConfigProblem:
    """One key whose value is not allowed, or that the schema does not know."""

    key: str  # the dotted path, e.g. datasets.train_dataset.max_side
    reason: str  # what is wrong and what is allowed: "is 'abc'; expected an integer >= 1"

    def __str__(self) -> str:
        return f"{self.key} {self.reason}"


class _Rule:
    """A leaf value's type and range."""

    def allowed(self) -> str:
        """What the value may be, as the messages say it: ``an integer >= 1``."""
        raise NotImplementedError

    def check(self, value: Any) -> tuple[bool, Any]:
        """Whether ``value`` passes, and the value to keep (a number written as text, made
        a number)."""
        raise NotImplementedError


def _show(value: Any) -> str:
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
class _Number(_Rule):
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
class _Numbers(_Rule):
    """A list of ``length`` numbers, each passing ``item``; ``ordered``: ascending."""

    length: int
    item: _Number
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
class _Bool(_Rule):
    def allowed(self) -> str:
        return "true or false"

    def check(self, value: Any) -> tuple[bool, Any]:
        return isinstance(value, bool), value


@dataclass(frozen=True)
class _Choice(_Rule):
    choices: tuple[str, ...]
    null: str | None = None

    def allowed(self) -> str:
        return _or_null("one of " + ", ".join(repr(c) for c in self.choices), self.null)

    def check(self, value: Any) -> tuple[bool, Any]:
        if value is None:
            return self.null is not None, value
        return value in self.choices, value


@dataclass(frozen=True)
class _Text(_Rule):
    what: str
    null: str | None = None

    def allowed(self) -> str:
        return _or_null(f"{self.what} (a non-empty string)", self.null)

    def check(self, value: Any) -> tuple[bool, Any]:
        if value is None:
            return self.null is not None, value
        return isinstance(value, str) and bool(value.strip()), value


@dataclass(frozen=True)
class _Device(_Rule):
    def allowed(self) -> str:
        return "auto, cpu, cuda or cuda:N (a torch device)"

    def check(self, value: Any) -> tuple[bool, Any]:
        if value is None or value == "auto":  # null reads as auto (ocr.engine.resolve_device)
            return True, value
        if not isinstance(value, str):
            return False, value
        try:
            torch.device(value.strip())
        except RuntimeError:
            return False, value
        return True, value


@dataclass(frozen=True)
class _Section:
    """A mapping with known keys; ``null``: the whole section may be null (its defaults)."""

    keys: dict[str, _Rule | _Section | Callable[..., Any]]
    required: tuple[str, ...] = ()
    null: bool = False


_POSITIVE = _Number(minimum=0, open_min=True)
_WEIGHT = _Number(minimum=0)
_FRACTION = _Number(minimum=0, maximum=1)
_OPEN_FRACTION = _Number(minimum=0, maximum=1, open_min=True, open_max=True)
_SIZE = _Number(integer=True, minimum=_STRIDE, multiple_of=_STRIDE)

_VAL_TRANSFORM = {"name": _Choice(("val", "train")), "size": _SIZE}
_TRAIN_TRANSFORM = {
    **_VAL_TRANSFORM,
    "scale_range": _Numbers(2, _POSITIVE, ordered=True),
    "flip_prob": _FRACTION,
}


def _check_transform(value: Any, path: str, problems: list[ConfigProblem]) -> Any:
    """The built-in form ``{name: train|val, size, ...}``, or ``{_target_: ..., args}``."""
    if not isinstance(value, dict):
        problems.append(
            ConfigProblem(
                path,
                f"is {_show(value)}; expected a mapping: {{name: train|val, size: N, ...}} or "
                "{_target_: package.module.Callable, ...}",
            )
        )
        return value
    if TARGET in value:
        target = value[TARGET]
        if not isinstance(target, str) or not target.strip():
            problems.append(
                ConfigProblem(
                    f"{path}.{TARGET}",
                    f"is {_show(target)}; expected a dotted path such as 'package.module.Callable'",
                )
            )
        return value  # the other keys are the callable's arguments
    # An unknown name is reported once, not with every train-only key after it.
    keys = _VAL_TRANSFORM if value.get("name", "val") == "val" else _TRAIN_TRANSFORM
    return _check_mapping(_Section(dict(keys)), value, path, problems)


_DATASET = _Section(
    {
        "image_path": _Text("a folder of images"),
        "annotation_path": _Text("an annotation file"),
        "image_cache": _Text("an .lmdb built by build-cache", null="read from image_path"),
        "preload_images": _Bool(),
        "cache_fallback": _Choice(("error", "disk")),
        "cache_stale": _Choice(("error", "warn")),
        "max_side": _Number(integer=True, minimum=1, null="no cap"),
        "resample": _Choice(tuple(sorted(RESAMPLE_FILTERS))),
        "transform": _check_transform,
    },
    required=("image_path", "annotation_path"),
)

SCHEMA = _Section(
    {
        "datasets": _Section(dict.fromkeys(SPLITS, _DATASET)),
        "targets": _Section(
            {
                "shrink_ratio": _OPEN_FRACTION,
                "thresh_min": _FRACTION,
                "thresh_max": _FRACTION,
                "min_text_size": _WEIGHT,
            },
            null=True,
        ),
        "normalization": _Section(
            {"mean": _Numbers(3, _Number()), "std": _Numbers(3, _POSITIVE)}, null=True
        ),
        "dataloader": _Section(
            {
                "batch_size": _Number(integer=True, minimum=1),
                "num_workers": _Number(integer=True, minimum=0),
                "multiprocessing_context": _Choice(
                    ("fork", "spawn", "forkserver"), null="the platform default"
                ),
                "persistent_workers": _Bool(),
                "seed": _Number(integer=True, minimum=0),
            }
        ),
        "model": _Section(
            {
                "name": _Choice(MODELS),
                "backbone": _Choice(BACKBONES),
                "width": _Number(integer=True, minimum=1),
                "inner_channels": _Number(integer=True, minimum=4, multiple_of=4),
                "k": _POSITIVE,
                "weights": _Text("a .pth of backbone weights", null="random initialisation"),
            }
        ),
        "loss": _Section(
            {
                "prob_weight": _WEIGHT,
                "binary_weight": _WEIGHT,
                "thresh_weight": _WEIGHT,
                "ohem_ratio": _POSITIVE,
                "eps": _POSITIVE,
                "empty_negatives": _Number(integer=True, minimum=0),
            },
            null=True,
        ),
        "postprocess": _Section(
            {
                "thresh": _OPEN_FRACTION,
                "box_thresh": _FRACTION,
                "unclip_ratio": _POSITIVE,
                "unclip_mode": _Choice(("ratio", "inverse")),
                "max_candidates": _Number(integer=True, minimum=1),
                "min_size": _WEIGHT,
                "shrink_ratio": _OPEN_FRACTION,
            },
            null=True,
        ),
        "metric": _Section(
            {"iou_threshold": _Number(minimum=0, maximum=1, open_min=True)}, null=True
        ),
        "optimizer": _Section(
            {
                "name": _Choice(("adam", "sgd")),
                "lr": _POSITIVE,
                "weight_decay": _WEIGHT,
                "momentum": _WEIGHT,
            }
        ),
        "scheduler": _Section(
            {
                "name": _Choice(("poly", "constant")),
                "power": _WEIGHT,
                "warmup_steps": _Number(integer=True, minimum=0),
            },
            null=True,
        ),
        "trainer": _Section(
            {
                "epochs": _Number(integer=True, minimum=1),
                "device": _Device(),
                "amp": _Bool(),
                "val_every": _Number(integer=True, minimum=0),
                # Written by earlier versions (never used): kept so their checkpoints load.
                "log_every": _Number(integer=True, minimum=0),
                "output_dir": _Text("a folder", null="runs/dbnet"),
                "resume": _Text("a checkpoint", null="start afresh"),
                "seed": _Number(integer=True, minimum=0, maximum=_SEED_MAX),
                "threads": _Number(integer=True, minimum=1, null="torch's default"),
            }
        ),
    }
)


def validate(config: Any) -> tuple[Any, list[ConfigProblem]]:
    """Check ``config`` against ``SCHEMA``.

    Returns:
        A copy of the config with numbers written as text (``1e-3``) made numbers, and the
        problems found (empty when the config is valid), in the order of its keys.
    """
    problems: list[ConfigProblem] = []
    out = _check_mapping(SCHEMA, copy.deepcopy(config), "", problems)
    if not problems:
        _check_datasets(out.get("datasets") or {}, problems)
        _check_targets(out.get("targets") or {}, problems)
    return out, problems


def _check_mapping(section: _Section, value: Any, path: str, problems: list[ConfigProblem]) -> Any:
    if value is None and section.null:
        return value
    if not isinstance(value, dict):
        problems.append(ConfigProblem(path or "config", f"is {_show(value)}; expected a mapping"))
        return value
    for key, item in value.items():
        where = f"{path}.{key}" if path else str(key)
        spec = section.keys.get(key)
        if spec is None:
            problems.append(ConfigProblem(where, _unknown(key, section)))
        elif isinstance(spec, _Section):
            value[key] = _check_mapping(spec, item, where, problems)
        elif isinstance(spec, _Rule):
            ok, value[key] = spec.check(item)
            if not ok:
                problems.append(
                    ConfigProblem(where, f"is {_show(item)}; expected {spec.allowed()}")
                )
        else:
            value[key] = spec(item, where, problems)
    for key in section.required:
        if key not in value:
            spec = section.keys[key]
            allowed = spec.allowed() if isinstance(spec, _Rule) else "a value"
            problems.append(ConfigProblem(f"{path}.{key}", f"is missing; expected {allowed}"))
    return value


def _unknown(key: Any, section: _Section) -> str:
    known = list(section.keys)
    close = difflib.get_close_matches(str(key), known, n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"known keys: {', '.join(known)}"
    return f"is not a known key; {hint}"


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
