"""Build what a config describes and run it: ``ocr-train`` and ``ocr-eval`` behind the CLI.

A training run writes into ``trainer.output_dir``:

* ``config.yaml``: the resolved config (file, ``_base_`` chain and overrides merged, every
  key left out set to its default);
* ``log.jsonl``: one JSON record per epoch (loss, timing, metrics);
* ``last.pt`` every epoch and ``best.pt`` at the best validation H-mean: resumable
  checkpoints (``trainer.resume=runs/x/last.pt``);
* ``summary.json``: totals of the run (time split, images/s, final metrics).

A checkpoint holds what the next epoch needs to go on as if the run had not stopped: weights,
optimizer, LR schedule, epoch, history, the random states of every rank (torch, numpy,
Python, the DataLoaders' generators) and the config. The data order and augmentation need no
state: they follow from ``trainer.seed`` and the epoch. A resumed run logs each setting in
which its config differs from the checkpoint's.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch.utils.data import DataLoader, DistributedSampler

from .builders import (
    build_eval_loader,
    build_normalizer,
    build_optimizer,
    build_postprocess,
    build_scheduler,
    dataset_cfg,
    section,
    setup_run,
)
from .checkpoint import (
    load_checkpoint,
    load_model_state,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from .config import check_config, config_changes
from .config_schema import SPLITS as SPLITS  # the datasets a config may hold
from .config_schema import complete
from .data.dataset import OCRDataset
from .data.loader import build_dataset, build_loader
from .data.normalize import DeviceNormalizer
from .distributed import (
    DistInfo,
    destroy_process_group,
    gather_objects,
)
from .engine import (
    EvalResult,
    PhaseStats,
    evaluate,
    train_one_epoch,
)
from .losses import DBLoss
from .models import build_model
from .postprocess import DBPostProcess
from .predictions import draw_predictions


def _phase_text(stats: PhaseStats) -> str:
    return (
        f"{stats.wall_s:.1f} s (data wait {stats.data_wait_s:.1f} s = "
        f"{100 * stats.data_wait_share:.0f}%, compute {stats.compute_s:.1f} s)"
    )


def metrics_text(metrics: dict[str, Any]) -> str:
    return (
        f"H-mean {metrics['hmean']:.4f} (P {metrics['precision']:.4f}, "
        f"R {metrics['recall']:.4f}; {metrics['matched']} matched of {metrics['num_pred']} "
        f"detected, {metrics['num_gt']} true)"
    )


def train(
    config: dict[str, Any],
    progress: bool = True,
    echo: Callable[[str], None] = print,
    state: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train DBNet as ``config`` says; returns the run summary (also in ``summary.json``).

    Under ``torchrun`` every rank trains on its part of each epoch (DistributedDataParallel);
    only rank 0 writes files and prints. With ``trainer.resume`` the run goes on from that
    checkpoint (see the module docstring); ``config`` should be the one saved in it, with
    any changes on top (each is logged). ``state`` is that checkpoint already read by
    ``load_checkpoint``, if the caller has it (it is then not read again).

    Raises:
        ConfigError: a value the schema does not allow, or a missing section.
        CheckpointError: ``trainer.resume`` names no checkpoint, or one that does not fit.
    """
    started = time.perf_counter()
    config = check_config(config)
    info, device, trainer = setup_run(config)
    try:
        summary = _train(
            config, info, device, trainer, progress and info.is_main, echo, started, state
        )
    except BaseException:
        destroy_process_group()
        raise
    destroy_process_group(wait_for_peers=True)
    return summary


@dataclass
class _TrainData:
    """The datasets and loaders of a training run."""

    train_set: OCRDataset
    sampler: DistributedSampler
    train_loader: DataLoader
    val_set: OCRDataset
    val_loader: DataLoader


@dataclass
class _Learner:
    """What training updates: the model (unwrapped), its loss, optimizer and LR schedule."""

    model: torch.nn.Module
    loss_fn: DBLoss
    optimizer: torch.optim.Optimizer
    scheduler: Any


@dataclass
class _Run:
    """One training run's settings and parts, built once by ``_train``."""

    config: dict[str, Any]
    info: DistInfo
    device: torch.device
    epochs: int
    amp: bool
    progress: bool
    out_dir: Path
    say: Callable[[str], None]
    data: _TrainData
    learner: _Learner
    net: torch.nn.Module  # the model, wrapped in DistributedDataParallel under torchrun
    normalizer: DeviceNormalizer
    post: DBPostProcess
    iou: float


@dataclass
class _RunState:
    """What carries from epoch to epoch: a checkpoint's progress (restored on resume)."""

    start_epoch: int = 0
    best: float = -1.0
    history: list[dict[str, Any]] = field(default_factory=list)
    last_eval: EvalResult | None = None


def _train(
    config: dict[str, Any],
    info: DistInfo,
    device: torch.device,
    trainer: dict[str, Any],
    progress: bool,
    echo: Callable[[str], None],
    started: float,
    saved: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train and validate epoch by epoch (after a resume, from the checkpoint's epoch on)."""
    run, state = _prepare(config, info, device, trainer, progress, echo, saved)
    val_every = trainer["val_every"]
    for epoch in range(state.start_epoch, run.epochs):
        record, line = _train_epoch(run, epoch)
        if epoch + 1 == run.epochs or (val_every > 0 and (epoch + 1) % val_every == 0):
            state.last_eval, val_line = _validate(run, record)
            line += val_line
        _end_epoch(run, state, record, epoch)
        run.say(line)
    return _finish(run, state, started)


def _prepare(
    config: dict[str, Any],
    info: DistInfo,
    device: torch.device,
    trainer: dict[str, Any],
    progress: bool,
    echo: Callable[[str], None],
    saved: dict[str, Any] | None = None,
) -> tuple[_Run, _RunState]:
    """Seed, build the loaders, model, optimizer and schedule, restore ``trainer.resume``,
    wrap the model for DDP under torchrun, and (rank 0) start the output folder."""
    resume = trainer["resume"]
    if resume and saved is None:
        saved = load_checkpoint(resume)  # a wrong path fails before any work
    elif not resume:
        saved = None
    seed = trainer["seed"]
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
    epochs = trainer["epochs"]
    amp = trainer["amp"]
    out_dir = Path(trainer["output_dir"])
    say = echo if info.is_main else (lambda _: None)
    # Data before model, the order seeded runs have always used: the initial weights are drawn
    # from the seeded RNG after the datasets are built.
    data = _training_data(config, info, seed)
    learner = _learner(config, device, epochs * len(data.train_loader))
    run = _Run(
        config=config,
        info=info,
        device=device,
        epochs=epochs,
        amp=amp,
        progress=progress,
        out_dir=out_dir,
        say=say,
        data=data,
        learner=learner,
        net=learner.model,
        normalizer=build_normalizer(config, device),
        post=build_postprocess(config),
        iou=float(config["metric"]["iou_threshold"]),
    )
    state = _restore(run, resume, saved) if saved is not None and resume else _RunState()
    if info.enabled:
        run.net = torch.nn.parallel.DistributedDataParallel(
            learner.model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if info.is_main:
        _start_run_folder(run, state)
    return run, state


def _training_data(config: dict[str, Any], info: DistInfo, seed: int) -> _TrainData:
    """The train set with its targets and a shuffling ``DistributedSampler`` (each rank its
    part of every epoch), and the validation set sharded over the ranks."""
    train_set = build_dataset(
        dataset_cfg(config, "train_dataset"), config["targets"], seed, name="train_dataset"
    )
    sampler: DistributedSampler = DistributedSampler(
        train_set, num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=seed
    )
    loader_cfg = section(config, "dataloader")
    train_loader = build_loader(train_set, loader_cfg, sampler=sampler)
    val_set, val_loader = build_eval_loader(config, "val_dataset", info)
    return _TrainData(train_set, sampler, train_loader, val_set, val_loader)


def _learner(config: dict[str, Any], device: torch.device, total_steps: int) -> _Learner:
    """The model on ``device``, the loss, the optimizer and the schedule over ``total_steps``."""
    model = build_model(section(config, "model")).to(device)
    loss_fn = DBLoss(**config["loss"])
    optimizer = build_optimizer(config, model.parameters())
    scheduler = build_scheduler(config, optimizer, total_steps)
    return _Learner(model, loss_fn, optimizer, scheduler)


def _restore(run: _Run, resume: str, state: dict[str, Any]) -> _RunState:
    """Load the checkpoint ``state`` (read from ``resume``) into the run: weights, optimizer,
    schedule and random states; log how the run's config differs from the checkpoint's, and
    return the progress it saved."""
    learner = run.learner
    load_model_state(learner.model, state, resume)
    learner.optimizer.load_state_dict(state["optimizer"])
    if learner.scheduler is not None and state.get("scheduler"):
        learner.scheduler.load_state_dict(state["scheduler"])
    saved_config = state.get("config")
    if isinstance(saved_config, dict):
        # Completed as the run's own config was: a key an older version left out for its
        # default has not changed.
        for key, old, new in config_changes(complete(saved_config), run.config):
            if key != "trainer.resume":
                run.say(f"override {key}: {old!r} -> {new!r}")
    _restore_rng(run, state.get("rng"))
    restored = _RunState(
        start_epoch=int(state["epoch"]),
        best=float(state.get("best_hmean", -1.0)),
        history=list(state.get("history", [])),
    )
    run.say(f"resumed from {resume} after epoch {restored.start_epoch}")
    return restored


def _generators(run: _Run) -> dict[str, Any]:
    """The DataLoaders' generators: each pass draws from them the seeds of its workers."""
    return {"train": run.data.train_loader.generator, "val": run.data.val_loader.generator}


def _restore_rng(run: _Run, saved: list[dict[str, Any]] | None) -> None:
    """Restore this rank's random states from a checkpoint's list (one entry per rank)."""
    if not saved:  # a checkpoint from before random states were saved
        run.say("the checkpoint has no random states: the run goes on from new ones")
        return
    if len(saved) != run.info.world_size:
        run.say(
            f"the checkpoint's run had {len(saved)} rank(s), this one has "
            f"{run.info.world_size}: the batches will differ from an uninterrupted run"
        )
    set_rng_state(saved[run.info.rank % len(saved)], run.device, _generators(run))


def _start_run_folder(run: _Run, state: _RunState) -> None:
    """Create the output folder, write the resolved ``config.yaml`` and ``log.jsonl`` (the
    checkpoint's epochs when resuming) and announce the run."""
    run.out_dir.mkdir(parents=True, exist_ok=True)
    (run.out_dir / "config.yaml").write_text(yaml.safe_dump(run.config, sort_keys=False))
    # The checkpoint's history, not the old log: a run killed between writing last.pt and
    # its log line, or resumed from best.pt, would otherwise log an epoch twice or never.
    lines = "".join(json.dumps(record) + "\n" for record in state.history)
    (run.out_dir / "log.jsonl").write_text(lines, encoding="utf-8")
    train_set, val_set = run.data.train_set, run.data.val_set
    run.say(
        f"training on {run.device} x{run.info.world_size}: {len(train_set)} train images "
        f"({train_set.source.name}), {len(val_set)} val images "
        f"({val_set.source.name}), {run.epochs} epochs -> {run.out_dir}"
    )


def _train_epoch(run: _Run, epoch: int) -> tuple[dict[str, Any], str]:
    """Train one epoch (0-based ``epoch``); returns its log record and its progress line."""
    run.data.sampler.set_epoch(epoch)
    run.data.train_set.set_epoch(epoch)
    learner = run.learner
    stats = train_one_epoch(
        run.net,
        run.data.train_loader,
        loss_fn=learner.loss_fn,
        optimizer=learner.optimizer,
        scheduler=learner.scheduler,
        normalizer=run.normalizer,
        device=run.device,
        info=run.info,
        amp=run.amp,
        progress=run.progress,
        desc=f"epoch {epoch + 1}/{run.epochs}",
    )
    record: dict[str, Any] = {"epoch": epoch + 1, "train": stats.to_dict()}
    line = (
        f"epoch {epoch + 1}/{run.epochs} | loss {stats.loss:.4f} | "
        f"{stats.images_per_s * run.info.world_size:.1f} img/s | train {_phase_text(stats)}"
    )
    return record, line


def _validate(run: _Run, record: dict[str, Any]) -> tuple[EvalResult, str]:
    """Evaluate on the validation set; adds ``val`` and ``metrics`` to the epoch's ``record``
    and returns the result with the text to append to the epoch's line."""
    result = evaluate(
        run.learner.model,
        run.data.val_loader,
        normalizer=run.normalizer,
        post=run.post,
        device=run.device,
        info=run.info,
        iou_threshold=run.iou,
        amp=run.amp,
        progress=run.progress,
        desc="validate",
    )
    record["val"] = result.stats.to_dict()
    record["metrics"] = result.metrics
    return result, f" | val {_phase_text(result.stats)} | {metrics_text(result.metrics)}"


def _end_epoch(run: _Run, state: _RunState, record: dict[str, Any], epoch: int) -> None:
    """Add the epoch to the history and track the best H-mean; rank 0 writes ``last.pt``,
    ``best.pt`` when the H-mean improved, and the record to ``log.jsonl``."""
    state.history.append(record)
    hmean = record.get("metrics", {}).get("hmean")
    improved = hmean is not None and hmean > state.best
    state.best = hmean if improved else state.best
    rng = gather_objects(rng_state(run.device, _generators(run)), run.info)  # on every rank
    if run.info.is_main:
        _save_epoch(run, state, epoch + 1, rng)
        if improved:
            _save_epoch(run, state, epoch + 1, rng, name="best.pt")
        with open(run.out_dir / "log.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


def _finish(run: _Run, state: _RunState, started: float) -> dict[str, Any]:
    """The run's summary; rank 0 also writes it to ``summary.json``."""
    summary = _summary(run, state, started)
    summary.update(
        train_source=run.data.train_set.source.name,
        val_source=run.data.val_set.source.name,
        best_hmean=state.best,
        output_dir=str(run.out_dir),
    )
    if run.info.is_main:
        (run.out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def _save_epoch(
    run: _Run, state: _RunState, epoch: int, rng: list[dict[str, Any]], name: str = "last.pt"
) -> None:
    """Write a resumable checkpoint after ``epoch`` (1-based) into the output folder, with
    each rank's random states ``rng``."""
    learner = run.learner
    scheduler = learner.scheduler
    save_checkpoint(
        run.out_dir / name,
        {
            "model": learner.model.state_dict(),
            "optimizer": learner.optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "epoch": epoch,
            "best_hmean": state.best,
            "history": state.history,
            "rng": rng,
            "config": run.config,
        },
    )


def _summary(run: _Run, state: _RunState, started: float) -> dict[str, Any]:
    """Totals of the epochs this process ran (not those before a resume)."""
    run_epochs = [r for r in state.history if r["epoch"] > state.start_epoch]
    wall = sum(r["train"]["wall_s"] + r.get("val", {}).get("wall_s", 0.0) for r in run_epochs)
    wait = sum(
        r["train"]["data_wait_s"] + r.get("val", {}).get("data_wait_s", 0.0) for r in run_epochs
    )
    images = sum(r["train"]["images"] for r in run_epochs) * run.info.world_size
    train_wall = sum(r["train"]["wall_s"] for r in run_epochs)
    return {
        "device": str(run.device),
        "world_size": run.info.world_size,
        "epochs_run": len(run_epochs),
        "total_s": time.perf_counter() - started,
        "loop_s": wall,
        "data_wait_s": wait,
        "data_wait_share": wait / wall if wall > 0 else 0.0,
        "train_images_per_s": images / train_wall if train_wall > 0 else 0.0,
        "final_loss": run_epochs[-1]["train"]["loss"] if run_epochs else None,
        "metrics": state.last_eval.metrics if state.last_eval else None,
    }


def evaluate_checkpoint(
    config: dict[str, Any],
    checkpoint: str,
    split: str = "val_dataset",
    progress: bool = True,
    keep_predictions: bool = False,
    state: dict[str, Any] | None = None,
    draw_dir: str | None = None,
) -> EvalResult:
    """Evaluate a checkpoint on ``datasets.<split>`` of ``config`` (any image source).

    ``state`` is the checkpoint already read by ``load_checkpoint``, if the caller has it.
    ``draw_dir``: also write one PNG per image there, ground truth and detections drawn
    (``ocr.predictions.draw_predictions``; rank 0 only).
    """
    config = check_config(config)
    info, device, trainer = setup_run(config)
    try:
        state = state if state is not None else load_checkpoint(checkpoint)
        model_cfg = dict(section(config, "model"), weights=None)  # the checkpoint has them
        model = build_model(model_cfg).to(device)
        load_model_state(model, state, checkpoint)
        dataset, loader = build_eval_loader(config, split, info)
        result = evaluate(
            model,
            loader,
            normalizer=build_normalizer(config, device),
            post=build_postprocess(config),
            device=device,
            info=info,
            iou_threshold=float(config["metric"]["iou_threshold"]),
            amp=trainer["amp"],
            progress=progress and info.is_main,
            keep_predictions=keep_predictions or draw_dir is not None,
        )
        if draw_dir is not None and info.is_main:
            assert result.predictions is not None and result.truths is not None
            draw_predictions(draw_dir, dataset, result.predictions, result.truths)
    except BaseException:
        destroy_process_group()
        raise
    destroy_process_group(wait_for_peers=True)
    return result
