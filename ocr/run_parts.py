"""The parts of one training run that ``ocr.pipeline`` builds and ``ocr.resume`` saves."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from .data.dataset import OCRDataset
from .data.normalize import DeviceNormalizer
from .distributed import DistInfo
from .engine import EvalResult
from .losses import DBLoss
from .postprocess import DBPostProcess
from .sampling import GlobalBatchSampler


@dataclass
class TrainData:
    """The datasets and loaders of a training run."""

    train_set: OCRDataset
    sampler: GlobalBatchSampler
    train_loader: DataLoader
    val_set: OCRDataset
    val_loader: DataLoader


@dataclass
class Learner:
    """What training updates: the model (unwrapped), its loss, optimizer and LR schedule."""

    model: torch.nn.Module
    loss_fn: DBLoss
    optimizer: torch.optim.Optimizer
    scheduler: Any


@dataclass
class Run:
    """One training run's settings and parts, built once by ``_train``."""

    config: dict[str, Any]
    info: DistInfo
    device: torch.device
    epochs: int
    amp: bool
    progress: bool
    out_dir: Path
    say: Callable[[str], None]
    data: TrainData
    learner: Learner
    net: torch.nn.Module  # the model, wrapped in DistributedDataParallel under torchrun
    normalizer: DeviceNormalizer
    post: DBPostProcess
    iou: float
    log_every: int = 0
    checkpoint_every: int = 0


@dataclass
class RunState:
    """What carries from epoch to epoch: a checkpoint's progress (restored on resume)."""

    start_epoch: int = 0
    start_step: int = 0  # steps of ``start_epoch`` a mid-epoch checkpoint had done
    tallies: list[dict[str, Any]] | None = None  # every rank's tally at that step
    best: float = -1.0
    history: list[dict[str, Any]] = field(default_factory=list)
    steps: list[dict[str, Any]] = field(default_factory=list)  # the step records
    last_eval: EvalResult | None = None
