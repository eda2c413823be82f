"""Tiny training runs on generated receipts, shared by the tests of whole runs (pipeline,
checkpoint, distributed); the ``receipts`` and ``trained`` fixtures are in ``conftest.py``."""

from __future__ import annotations

import json
from pathlib import Path

from ocr.config import load_config

SPLITS = ("train_dataset", "val_dataset", "test_dataset")
MAX_SIDE = 320


def tiny_config(receipts, out: Path, **trainer) -> dict:
    """The shipped config, shrunk: a narrow DBNet on 256-pixel inputs, 6 receipts."""
    root, ann = receipts
    cfg = load_config("configs/dbnet.yaml")
    for split in SPLITS:
        cfg["datasets"][split].update(
            image_path=str(root / "img"), annotation_path=str(ann), max_side=MAX_SIDE
        )
        cfg["datasets"][split]["transform"] = {"name": "val", "size": 256}
    cfg["datasets"]["train_dataset"]["transform"] = {
        "name": "train",
        "size": 256,
        "scale_range": [0.8, 1.2],
        "flip_prob": 0.5,
    }
    cfg["model"].update(width=8, inner_channels=32)
    cfg["dataloader"].update(batch_size=2, num_workers=0)
    # Low thresholds so that a barely trained model still detects boxes to compare.
    cfg["postprocess"].update(thresh=0.2, box_thresh=0.2)
    # torch's own thread count (the shipped config pins one): the tests that need one thread
    # set it (the ``one_thread`` fixture, or threads=1).
    cfg["trainer"].update({"epochs": 2, "output_dir": str(out), "threads": None, **trainer})
    return cfg


def with_source(cfg: dict, source: str, receipts) -> dict:
    """A copy of ``cfg`` whose validation set reads ``preload`` or ``cache`` (else disk)."""
    cfg = json.loads(json.dumps(cfg))
    val = cfg["datasets"]["val_dataset"]
    if source == "preload":
        val["preload_images"] = True
    elif source == "cache":
        val["image_cache"] = str(receipts[0] / "img.lmdb")
    return cfg
