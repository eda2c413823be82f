"""Training and evaluation loops for DBNet, on CUDA when present, on the CPU otherwise.

Batches leave the DataLoader as uint8 (pinned when CUDA is available), are copied with
``non_blocking=True`` and normalized on the device (``DeviceNormalizer``). Every loop measures
where its time goes: *data wait* is the time spent blocked on the DataLoader (decode,
transforms, targets not ready yet), *compute* is the rest (copy, forward, backward, step,
post-processing). Evaluation counts matches per image and sums integers, so its precision,
recall and H-mean do not depend on the image source, the batch order or the number of ranks.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from .data import digest
from .data.normalize import DeviceNormalizer
from .data.sample import Batch
from .distributed import DistInfo, gather_objects, max_across_ranks, sum_across_ranks
from .metrics import DetectionMetric, ImageCounts
from .postprocess import DBPostProcess, Detection


@dataclass
class PhaseStats:
    """Time and throughput of one pass over a loader (one epoch, or one evaluation)."""

    images: int = 0
    wall_s: float = 0.0
    data_wait_s: float = 0.0
    loss: float | None = None
    loss_parts: dict[str, float] = field(default_factory=dict)

    @property
    def compute_s(self) -> float:
        return max(self.wall_s - self.data_wait_s, 0.0)

    @property
    def data_wait_share(self) -> float:
        return self.data_wait_s / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def images_per_s(self) -> float:
        return self.images / self.wall_s if self.wall_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.update(
            compute_s=self.compute_s,
            data_wait_share=self.data_wait_share,
            images_per_s=self.images_per_s,
        )
        return out


@dataclass
class EvalResult:
    """Metrics of one evaluation, its timing, each image's counts (``per_image``, gathered from
    every rank: what ``metrics`` sums), and optionally the detections per image (upright frame)
    with what writing and drawing them needs (``truths``)."""

    metrics: dict[str, Any]
    stats: PhaseStats
    predictions: dict[str, list[Detection]] | None = None
    truths: dict[str, ImageTruth] | None = None
    per_image: dict[str, ImageCounts] = field(default_factory=dict)


@dataclass
class ImageTruth:
    """One image's frame and ground truth, kept beside its detections.

    Attributes:
        orientation: EXIF orientation of the source file, 1..8.
        raw_size: ``(width, height)`` of the source file before orientation.
        gt_polygons: The annotation's polygons in the upright frame.
        gt_ignore: Don't-care flag of each.
    """

    orientation: int
    raw_size: tuple[int, int]
    gt_polygons: list[np.ndarray]
    gt_ignore: list[bool]


def resolve_device(name: str | None, info: DistInfo) -> torch.device:
    """``auto`` picks CUDA when present (the local rank's GPU under torchrun), else the CPU.

    Raises:
        ValueError: CUDA asked for but not available, or an unknown device string.
    """
    name = (name or "auto").strip()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise ValueError(f"trainer.device {name!r} is not a device; use auto, cpu or cuda") from e
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                "trainer.device asks for CUDA but torch sees no GPU (CPU-only torch build or "
                "no driver); set trainer.device=auto or cpu"
            )
        if device.index is None:
            device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    return device


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on ``device`` when enabled, else nothing."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def _timed(loader: DataLoader, stats: PhaseStats) -> Iterator[Batch]:
    """Yield batches, adding the time blocked waiting for each to ``stats.data_wait_s``."""
    start = time.perf_counter()
    iterator = iter(loader)  # starting the workers counts as waiting for data
    while True:
        t0 = time.perf_counter()
        try:
            batch = next(iterator)
        except StopIteration:
            break
        stats.data_wait_s += time.perf_counter() - t0
        yield batch
    stats.wall_s = time.perf_counter() - start


def _bar(total: int, desc: str, enabled: bool) -> tqdm:
    return tqdm(total=total, desc=desc, disable=not enabled, leave=False, unit="batch")


@dataclass
class EpochTally:
    """One rank's running sums over the steps of an epoch done so far.

    A mid-epoch checkpoint holds every rank's tally, so an epoch resumed after step ``steps``
    ends with the loss and digests of an uninterrupted one.

    Attributes:
        steps: Steps of the epoch done (the same count on every rank).
        images: Samples counted (filler shares are not, ``ocr.sampling``).
        loss_sum: Sum of ``loss x images`` over the steps.
        part_sums: The same for each part of the loss.
        samples: ``ocr.data.digest`` sum of the (key, seed) hashes of the counted samples.
        data: The same for their (key, content checksum) hashes.
    """

    steps: int = 0
    images: int = 0
    loss_sum: float = 0.0
    part_sums: dict[str, float] = field(default_factory=dict)
    samples: int = 0
    data: int = 0

    def add(self, step: StepResult, parts: dict[str, float]) -> None:
        """Count one step in (a filler's adds its step and nothing else)."""
        self.steps += 1
        self.images += step.images
        self.loss_sum += step.loss * step.images
        for name, part in parts.items():
            self.part_sums[name] = self.part_sums.get(name, 0.0) + part * step.images
        self.samples = digest.add(self.samples, step.samples)
        self.data = digest.add(self.data, step.data)

    def to_state(self) -> dict[str, Any]:
        """The tally as plain values (digests as hex: a checkpoint holds no 64-bit ints)."""
        out = asdict(self)
        out.update(samples=digest.to_hex(self.samples), data=digest.to_hex(self.data))
        return out

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> EpochTally:
        return cls(
            steps=int(state["steps"]),
            images=int(state["images"]),
            loss_sum=float(state["loss_sum"]),
            part_sums={str(k): float(v) for k, v in state["part_sums"].items()},
            samples=int(state["samples"], 16),
            data=int(state["data"], 16),
        )


@dataclass
class StepResult:
    """One rank's part of one training step, handed to ``train_one_epoch``'s ``on_step``.

    Attributes:
        index: The step within the epoch (0-based).
        images: Samples this rank counted (0 for a filler share).
        loss: This rank's loss (0.0 for a filler share).
        samples: Digest of this rank's counted (key, seed) pairs (``ocr.data.digest``).
        data: Digest of their (key, content checksum) pairs.
    """

    index: int
    images: int
    loss: float
    samples: int
    data: int


def _batch_digests(batch: Batch) -> tuple[int, int]:
    """The ``samples`` and ``data`` digests of a batch (``ocr.data.digest``)."""
    none: list[int | None] = [None] * len(batch)
    seeds: list[int | None] = list(batch.seed) if batch.seed else none
    checksums: list[int | None] = list(batch.checksum) if batch.checksum else none
    samples = data = 0
    for key, seed, checksum in zip(batch.filename, seeds, checksums, strict=True):
        samples = digest.add(samples, digest.sample_hash(key, seed))
        data = digest.add(data, digest.data_hash(key, checksum))
    return samples, data


def train_one_epoch(
    model: torch.nn.Module,
    loader: DataLoader,
    *,
    loss_fn: Callable[..., tuple[torch.Tensor, dict[str, torch.Tensor]]],
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    normalizer: DeviceNormalizer,
    device: torch.device,
    info: DistInfo,
    amp: bool = False,
    progress: bool = False,
    desc: str = "train",
    tally: EpochTally | None = None,
    counted: Callable[[int], bool] | None = None,
    on_step: Callable[[StepResult], None] | None = None,
) -> PhaseStats:
    """One pass over ``loader`` with an optimizer step per batch.

    Args:
        model: The model to train (wrapped in DistributedDataParallel under torchrun).
        loader: Batches with DBNet targets; after a mid-epoch resume, those of the steps left.
        loss_fn: ``loss_fn(pred, targets) -> (loss, parts)`` (``ocr.losses.DBLoss``).
        optimizer: Stepped once per batch.
        scheduler: Stepped once per batch after the optimizer; None for a constant LR.
        normalizer: Moves each uint8 batch to ``device``, normalized.
        device: Where the model is.
        info: This process's rank and world size.
        amp: bf16 autocast for the forward pass.
        progress: Show a progress bar.
        desc: The progress bar's label.
        tally: The epoch's sums so far (a resumed epoch's), updated in place; the first
            batch of ``loader`` is step ``tally.steps``.
        counted: ``counted(step)`` is False for a filler batch (``GlobalBatchSampler``): it
            runs the step with its loss times zero and is left out of every sum.
        on_step: Called after every step, once ``tally`` holds it.

    Returns:
        The stats of this rank's pass, with the loss averaged over all ranks' images of the
        whole epoch.

    Raises:
        ValueError: a batch without targets.
        FloatingPointError: the loss became NaN or infinite.
    """
    model.train()
    stats = PhaseStats()
    tally = tally if tally is not None else EpochTally()
    with _bar(len(loader), desc, progress) as bar:
        bar.update(tally.steps)
        for batch in _timed(loader, stats):
            step, parts = _train_step(
                model, batch, loss_fn, optimizer, scheduler, normalizer, device, amp,
                counted is None or counted(tally.steps), tally.steps,
            )  # fmt: skip
            tally.add(step, parts)
            stats.images += step.images
            if on_step is not None:
                on_step(step)
            bar.update(1)
            bar.set_postfix(loss=f"{step.loss:.4f}")
    names = sorted(tally.part_sums)
    totals = sum_across_ranks(
        [tally.images, tally.loss_sum, *(tally.part_sums[k] for k in names)], info
    )
    count = max(totals[0], 1.0)
    stats.loss = totals[1] / count
    stats.loss_parts = {k: v / count for k, v in zip(names, totals[2:], strict=True)}
    return stats


def _train_step(
    model: torch.nn.Module,
    batch: Batch,
    loss_fn: Callable[..., tuple[torch.Tensor, dict[str, torch.Tensor]]],
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    normalizer: DeviceNormalizer,
    device: torch.device,
    amp: bool,
    counted: bool,
    index: int,
) -> tuple[StepResult, dict[str, float]]:
    """Forward, backward and optimizer step on one batch (a filler's loss times zero); the
    step's result and the parts of its loss (none for a filler)."""
    if batch.targets is None:
        raise ValueError("training batches need DBNet targets (build the dataset with targets)")
    images = normalizer(batch.image)
    targets = batch.targets.to(device, non_blocking=True)
    with autocast(device, amp):
        pred = model(images)
    loss, parts = loss_fn(pred, targets)
    if not counted:
        loss = loss * 0.0  # the step runs on every rank (DDP), its gradient adds nothing
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    n = images.shape[0] if counted else 0
    value = loss.item()
    if not math.isfinite(value):
        raise FloatingPointError(
            f"training loss became {value} (step of {n} images); lower optimizer.lr "
            "or turn off trainer.amp"
        )
    if not counted:
        return StepResult(index=index, images=0, loss=0.0, samples=0, data=0), {}
    samples, data = _batch_digests(batch)
    result = StepResult(index=index, images=n, loss=value, samples=samples, data=data)
    return result, {name: float(part) for name, part in parts.items()}


@torch.inference_mode()
def evaluate(
    model: torch.nn.Module,
    loader: DataLoader,
    *,
    normalizer: DeviceNormalizer,
    post: DBPostProcess,
    device: torch.device,
    info: DistInfo,
    iou_threshold: float = 0.5,
    amp: bool = False,
    progress: bool = False,
    keep_predictions: bool = False,
    desc: str = "eval",
) -> EvalResult:
    """Detect text in every image of ``loader`` and score it against the ground truth.

    Under ``torchrun`` each rank evaluates its shard (``ShardSampler``); per-image counts are
    gathered and summed on every rank, so the metrics equal a single-process evaluation, and
    every rank's result holds all the per-image counts.

    Args:
        model: The model (left in the training mode it had).
        loader: This rank's batches.
        normalizer: Moves each uint8 batch to ``device``, normalized.
        post: Turns probability maps into detections in the upright frame.
        device: Where the model is.
        info: This process's rank and world size.
        iou_threshold: The IoU from which a detection matches a true box (``metric``).
        amp: bf16 autocast for the forward pass.
        progress: Show a progress bar.
        keep_predictions: Also return every image's detections and ground truth, gathered
            from all ranks.
        desc: The progress bar's label.
    """
    was_training = model.training
    model.eval()
    stats = PhaseStats()
    counts: dict[str, ImageCounts] = {}
    predictions: dict[str, list[Detection]] = {}
    truths: dict[str, ImageTruth] = {}
    scorer = DetectionMetric(iou_threshold=iou_threshold)
    with _bar(len(loader), desc, progress) as bar:
        for batch in _timed(loader, stats):
            images = normalizer(batch.image)
            with autocast(device, amp):
                prob = model(images)["prob"]
            prob_np = prob.float().cpu().numpy()
            detections = post.batch(prob_np, batch.inverse_matrix, batch.upright_size)
            for i, (name, dets) in enumerate(zip(batch.filename, detections, strict=True)):
                gts, ignore = batch.gt_polygons[i].to_list(), batch.gt_ignore[i].tolist()
                counts[name] = scorer.update([d.polygon for d in dets], gts, ignore)
                if keep_predictions:
                    predictions[name] = dets
                    raw_w, raw_h = batch.raw_size[i]
                    raw_size = (int(raw_w), int(raw_h))
                    truths[name] = ImageTruth(batch.orientation[i], raw_size, gts, ignore)
            stats.images += images.shape[0]
            bar.update(1)
    model.train(was_training)
    merged: dict[str, ImageCounts] = {}
    for part in gather_objects(counts, info):
        merged.update(part)
    metric = DetectionMetric(iou_threshold=iou_threshold)
    for name in sorted(merged):
        metric.add(merged[name])
    stats.images = len(merged)
    stats.wall_s, stats.data_wait_s = max_across_ranks([stats.wall_s, stats.data_wait_s], info)
    if not keep_predictions:
        return EvalResult(metric.compute(), stats, per_image=merged)
    for part in gather_objects(predictions, info):
        predictions.update(part)
    for truth_part in gather_objects(truths, info):
        truths.update(truth_part)
    return EvalResult(metric.compute(), stats, predictions, truths, per_image=merged)


def poly_schedule(total_steps: int, power: float, warmup_steps: int) -> Callable[[int], float]:
    """LR factor: linear warm-up, then ``(1 - step / total) ** power`` (DBNet's schedule)."""

    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        return max(1.0 - step / max(total_steps, 1), 0.0) ** power

    return factor
