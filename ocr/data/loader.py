"""Datasets and DataLoaders from the YAML config (``configs/data/base.yaml``).

The builders take a section as a checked config holds it, or with keys left out: those get
the schema's defaults (``ocr.config_schema.complete``), the same a checked config holds.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader

from ..config_schema import complete
from .collate import collate
from .dataset import OCRDataset
from .instantiate import TARGET, instantiate, is_target_spec
from .targets import DBNetTargets
from .transforms import TrainTransform, ValTransform

# Where the sections the builders take sit in a config (every split has the same keys).
_DATASET = "datasets.val_dataset"
_TRANSFORM = f"{_DATASET}.transform"


def build_transform(
    spec: dict[str, Any], resample: str = "bilinear", *, key: str = "transform"
) -> Any:
    """A dataset's transform from its config mapping.

    Two forms:

    * ``{name: val, size: 640}`` or ``{name: train, size, scale_range, flip_prob}``: the
      built-in transforms of ``ocr.data.transforms``, resampling with the dataset's
      ``resample``;
    * ``{_target_: pkg.module.Callable, arg: value, ...}``: ``Callable(arg=value, ...)`` is the
      transform (``ocr.data.instantiate``); nothing is added to its arguments.

    Args:
        spec: The mapping; keys it leaves out get their defaults (``name: val``, ...).
        resample: The dataset's resampling filter (the built-in transforms only).
        key: Where ``spec`` sits in the config, for messages.

    Raises:
        ValueError: an unknown name, a bad value, or a ``_target_`` that cannot be imported,
            is not callable, fails on its arguments or does not return a transform.
    """
    if is_target_spec(spec):
        return _checked_transform(instantiate(spec, key), spec[TARGET], key)
    spec = complete(spec, _TRANSFORM)
    name = spec.pop("name")
    if name == "val":
        return ValTransform(resample=resample, **spec)
    if name == "train":
        spec["scale_range"] = tuple(spec["scale_range"])
        return TrainTransform(resample=resample, **spec)
    raise ValueError(
        f"{key}: unknown transform {name!r}; use 'val' or 'train', or {{_target_: "
        "package.module.Callable, ...} for your own (docs/transforms.md)"
    )


def _checked_transform(transform: Any, target: str, key: str) -> Any:
    """``transform`` if it can serve as a dataset transform (``OCRDataset``'s ``transform``)."""
    if not callable(transform):
        raise ValueError(
            f"{key}: _target_ {target!r} returned a {type(transform).__name__}, not a "
            "transform; a transform is called as transform(image, polygons, rng, out=None) "
            "and returns a TransformResult (docs/transforms.md)"
        )
    size = getattr(transform, "size", None)
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        raise ValueError(
            f"{key}: _target_ {target!r} returned a transform whose size is {size!r}; size must "
            "be a positive int (the side of its square output) or None (any output size)"
        )
    return transform


def build_dataset(
    dataset_cfg: dict[str, Any],
    targets_cfg: dict[str, Any] | None = None,
    seed: int = 0,
    *,
    name: str | None = None,
) -> OCRDataset:
    """One dataset from a ``datasets.<split>`` section (targets when ``targets_cfg`` is given).

    Keys the section leaves out get their defaults, but for ``image_path`` and
    ``annotation_path``. ``name`` is the split's key (``train_dataset``); messages about its
    transform then name ``datasets.<name>.transform``.
    """
    cfg = complete(dataset_cfg, _DATASET)
    key = f"datasets.{name}.transform" if name else "transform"
    return OCRDataset(
        image_path=cfg["image_path"],
        annotation_path=cfg["annotation_path"],
        transform=build_transform(cfg["transform"], cfg["resample"], key=key),
        image_cache=cfg["image_cache"],
        preload_images=bool(cfg["preload_images"]),
        cache_fallback=cfg["cache_fallback"],
        cache_stale=cfg["cache_stale"],
        cache_readahead=bool(cfg["cache_readahead"]),
        max_side=cfg["max_side"],
        resample=cfg["resample"],
        targets=DBNetTargets(**targets_cfg) if targets_cfg is not None else None,
        seed=seed,
    )


def build_loader(
    dataset: Any,
    loader_cfg: dict[str, Any],
    shuffle: bool = False,
    sampler: Any = None,
    batch_sampler: Any = None,
    collate_fn: Any = collate,
) -> DataLoader:
    """A DataLoader of ``Batch``es (uint8 images), pinned when CUDA is available.

    The dataset builds each batch in one call (``OCRDataset.__getitems__``); ``collate``
    passes it through. Keys ``loader_cfg`` (a ``dataloader`` section) leaves out get their
    defaults. A ``batch_sampler`` (``ocr.sampling.GlobalBatchSampler``) makes the batches
    itself; ``batch_size`` then comes from it. ``collate_fn`` stands in for ``collate`` where
    the dataset's batches are something else (``ocr.predict``'s batches with their failures).
    """
    cfg = complete(loader_cfg, "dataloader")
    workers = int(cfg["num_workers"])
    return DataLoader(
        dataset,
        batch_size=int(cfg["batch_size"]) if batch_sampler is None else 1,
        shuffle=shuffle and sampler is None and batch_sampler is None,
        sampler=sampler,
        batch_sampler=batch_sampler,
        num_workers=workers,
        collate_fn=collate_fn,
        pin_memory=torch.cuda.is_available(),
        multiprocessing_context=cfg["multiprocessing_context"] if workers else None,
        persistent_workers=bool(cfg["persistent_workers"]) and workers > 0,
        generator=torch.Generator().manual_seed(int(cfg["seed"])),
    )
