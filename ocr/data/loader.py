"""Datasets and DataLoaders from the YAML config (``configs/data/base.yaml``)."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader

from .collate import collate
from .dataset import OCRDataset
from .targets import DBNetTargets
from .transforms import TrainTransform, ValTransform


def build_transform(
    spec: dict[str, Any], resample: str = "bilinear"
) -> ValTransform | TrainTransform:
    """``{name: val, size: 640}`` or ``{name: train, size, scale_range, flip_prob}``."""
    spec = dict(spec)
    name = spec.pop("name", "val")
    if name == "val":
        return ValTransform(resample=resample, **spec)
    if name == "train":
        if "scale_range" in spec:
            spec["scale_range"] = tuple(spec["scale_range"])
        return TrainTransform(resample=resample, **spec)
    raise ValueError(f"unknown transform {name!r}; use 'val' or 'train'")


def build_dataset(
    dataset_cfg: dict[str, Any], targets_cfg: dict[str, Any] | None = None, seed: int = 0
) -> OCRDataset:
    """One dataset from a ``datasets.<split>`` section (targets when ``targets_cfg`` is given)."""
    resample = dataset_cfg.get("resample", "bilinear")
    return OCRDataset(
        image_path=dataset_cfg["image_path"],
        annotation_path=dataset_cfg["annotation_path"],
        transform=build_transform(dataset_cfg.get("transform", {"name": "val"}), resample),
        image_cache=dataset_cfg.get("image_cache"),
        preload_images=bool(dataset_cfg.get("preload_images", False)),
        cache_fallback=dataset_cfg.get("cache_fallback", "error"),
        cache_stale=dataset_cfg.get("cache_stale", "error"),
        max_side=dataset_cfg.get("max_side"),
        resample=resample,
        targets=DBNetTargets(**targets_cfg) if targets_cfg is not None else None,
        seed=seed,
    )


def build_loader(
    dataset: OCRDataset, loader_cfg: dict[str, Any], shuffle: bool = False, sampler: Any = None
) -> DataLoader:
    """A DataLoader of ``Batch``es (uint8 images), pinned when CUDA is available.

    The dataset builds each batch in one call (``OCRDataset.__getitems__``); ``collate``
    passes it through.
    """
    workers = int(loader_cfg.get("num_workers", 0))
    return DataLoader(
        dataset,
        batch_size=int(loader_cfg.get("batch_size", 4)),
        shuffle=shuffle and sampler is None,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=torch.cuda.is_available(),
        multiprocessing_context=loader_cfg.get("multiprocessing_context") if workers else None,
        persistent_workers=bool(loader_cfg.get("persistent_workers", False)) and workers > 0,
        generator=torch.Generator().manual_seed(int(loader_cfg.get("seed", 0))),
    )
