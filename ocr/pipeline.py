"""Build what a config describes and run it: ``ocr-train`` and ``ocr-eval`` behind the CLI.

A training run writes into ``trainer.output_dir``:

* ``config.yaml``: the resolved config (file, ``_base_`` chain and overrides merged);
* ``log.jsonl``: one JSON record per epoch (loss, timing, metrics);
* ``last.pt`` every epoch and ``best.pt`` at the best validation H-mean: resumable
  checkpoints (``trainer.resume=runs/x/last.pt``);
* ``summary.json``: totals of the run (time split, images/s, final metrics).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch.utils.data import DataLoader, DistributedSampler

from .checkpoint import load_checkpoint, load_model_state, save_checkpoint
from .config import ConfigError
from .data.dataset import OCRDataset
from .data.loader import build_dataset, build_loader
from .data.normalize import DeviceNormalizer
from .distributed import (
    DistInfo,
    ShardSampler,
    destroy_process_group,
    dist_info_from_env,
    init_process_group,
)
from .engine import (
    EvalResult,
    PhaseStats,
    evaluate,
    poly_schedule,
    resolve_device,
    train_one_epoch,
)
from .losses import DBLoss
from .models import build_model
from .postprocess import DBPostProcess

SPLITS = ("train_dataset", "val_dataset", "test_dataset")


def _section(config: dict[str, Any], name: str) -> dict[str, Any]:
    value = config.get(name)
    if not isinstance(value, dict):
        raise ConfigError(f"the config has no '{name}' section (a mapping); see configs/dbnet.yaml")
    return value


def _dataset_cfg(config: dict[str, Any], split: str) -> dict[str, Any]:
    datasets = _section(config, "datasets")
    if split not in datasets:
        raise ConfigError(f"the config has no datasets.{split}; it has {sorted(datasets)}")
    return datasets[split]


def _eval_loader(
    config: dict[str, Any], split: str, info: DistInfo
) -> tuple[OCRDataset, DataLoader]:
    dataset = build_dataset(_dataset_cfg(config, split))
    sampler = ShardSampler(len(dataset), info.rank, info.world_size)
    loader_cfg = _section(config, "dataloader")
    return dataset, build_loader(dataset, loader_cfg, shuffle=False, sampler=sampler)


def _normalizer(config: dict[str, Any], device: torch.device) -> DeviceNormalizer:
    norm = config.get("normalization") or {}
    kwargs = {k: norm[k] for k in ("mean", "std") if k in norm}
    return DeviceNormalizer(device, **kwargs)


def _postprocess(config: dict[str, Any]) -> DBPostProcess:
    cfg = dict(config.get("postprocess") or {})
    # The inverse unclip undoes the targets' shrink, so it takes their ratio unless told.
    cfg.setdefault("shrink_ratio", (config.get("targets") or {}).get("shrink_ratio", 0.4))
    return DBPostProcess(**cfg)


def _optimizer(config: dict[str, Any], params: Any) -> torch.optim.Optimizer:
    cfg = dict(_section(config, "optimizer"))
    name = cfg.pop("name", "adam")
    lr = float(cfg.get("lr", 1e-3))
    decay = float(cfg.get("weight_decay", 0.0))
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=decay)
    if name == "sgd":
        momentum = float(cfg.get("momentum", 0.9))
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=decay)
    raise ConfigError(f"optimizer.name {name!r} is not known; use adam or sgd")


def _scheduler(config: dict[str, Any], optimizer: torch.optim.Optimizer, total_steps: int) -> Any:
    cfg = config.get("scheduler") or {"name": "constant"}
    name = cfg.get("name", "constant")
    if name == "constant":
        return None
    if name == "poly":
        factor = poly_schedule(
            total_steps, float(cfg.get("power", 0.9)), int(cfg.get("warmup_steps", 0))
        )
        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    raise ConfigError(f"scheduler.name {name!r} is not known; use poly or constant")


def _setup(config: dict[str, Any]) -> tuple[DistInfo, torch.device, dict[str, Any]]:
    trainer = _section(config, "trainer")
    threads = trainer.get("threads")
    if threads:
        torch.set_num_threads(int(threads))
    info = dist_info_from_env()
    device = resolve_device(trainer.get("device"), info)
    init_process_group(info, device)
    return info, device, trainer


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
    config: dict[str, Any], progress: bool = True, echo: Callable[[str], None] = print
) -> dict[str, Any]:
    """Train DBNet as ``config`` says; returns the run summary (also in ``summary.json``).

    Under ``torchrun`` every rank trains on its part of each epoch (DistributedDataParallel);
    only rank 0 writes files and prints.
    """
    started = time.perf_counter()
    info, device, trainer = _setup(config)
    try:
        summary = _train(config, info, device, trainer, progress and info.is_main, echo, started)
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
) -> dict[str, Any]:
    """Train and validate epoch by epoch (after a resume, from the checkpoint's epoch on)."""
    run, state = _prepare(config, info, device, trainer, progress, echo)
    val_every = int(trainer.get("val_every", 1))
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
) -> tuple[_Run, _RunState]:
    """Seed, build the loaders, model, optimizer and schedule, restore ``trainer.resume``,
    wrap the model for DDP under torchrun, and (rank 0) start the output folder."""
    seed = int(trainer.get("seed", 0))
    torch.manual_seed(seed)
    epochs = int(trainer.get("epochs", 1))
    amp = bool(trainer.get("amp", False))
    out_dir = Path(trainer.get("output_dir") or "runs/dbnet")
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
        normalizer=_normalizer(config, device),
        post=_postprocess(config),
        iou=float((config.get("metric") or {}).get("iou_threshold", 0.5)),
    )
    state = _restore(trainer.get("resume"), learner, say)
    if info.enabled:
        run.net = torch.nn.parallel.DistributedDataParallel(
            learner.model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if info.is_main:
        _start_run_folder(run)
    return run, state


def _training_data(config: dict[str, Any], info: DistInfo, seed: int) -> _TrainData:
    """The train set with its targets and a shuffling ``DistributedSampler`` (each rank its
    part of every epoch), and the validation set sharded over the ranks."""
    train_set = build_dataset(_dataset_cfg(config, "train_dataset"), config.get("targets"), seed)
    sampler: DistributedSampler = DistributedSampler(
        train_set, num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=seed
    )
    loader_cfg = _section(config, "dataloader")
    train_loader = build_loader(train_set, loader_cfg, sampler=sampler)
    val_set, val_loader = _eval_loader(config, "val_dataset", info)
    return _TrainData(train_set, sampler, train_loader, val_set, val_loader)


def _learner(config: dict[str, Any], device: torch.device, total_steps: int) -> _Learner:
    """The model on ``device``, the loss, the optimizer and the schedule over ``total_steps``."""
    model = build_model(_section(config, "model")).to(device)
    loss_fn = DBLoss(**(config.get("loss") or {}))
    optimizer = _optimizer(config, model.parameters())
    scheduler = _scheduler(config, optimizer, total_steps)
    return _Learner(model, loss_fn, optimizer, scheduler)


def _restore(resume: str | None, learner: _Learner, say: Callable[[str], None]) -> _RunState:
    """Load the checkpoint ``resume`` (``trainer.resume``) into ``learner`` and return the
    progress it saved; a fresh state without one."""
    if not resume:
        return _RunState()
    state = load_checkpoint(resume)
    load_model_state(learner.model, state, resume)
    learner.optimizer.load_state_dict(state["optimizer"])
    if learner.scheduler is not None and state.get("scheduler"):
        learner.scheduler.load_state_dict(state["scheduler"])
    restored = _RunState(
        start_epoch=int(state["epoch"]),
        best=float(state.get("best_hmean", -1.0)),
        history=list(state.get("history", [])),
    )
    say(f"resumed from {resume} after epoch {restored.start_epoch}")
    return restored


def _start_run_folder(run: _Run) -> None:
    """Create the output folder, write the resolved ``config.yaml`` and announce the run."""
    run.out_dir.mkdir(parents=True, exist_ok=True)
    (run.out_dir / "config.yaml").write_text(yaml.safe_dump(run.config, sort_keys=False))
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
        learner.loss_fn,
        learner.optimizer,
        learner.scheduler,
        run.normalizer,
        run.device,
        run.info,
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
        run.normalizer,
        run.post,
        run.device,
        run.info,
        run.iou,
        run.amp,
        run.progress,
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
    if run.info.is_main:
        _save_epoch(run, state, epoch + 1)
        if improved:
            _save_epoch(run, state, epoch + 1, name="best.pt")
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


def _save_epoch(run: _Run, state: _RunState, epoch: int, name: str = "last.pt") -> None:
    """Write a resumable checkpoint after ``epoch`` (1-based) into the output folder."""
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
) -> EvalResult:
    """Evaluate a checkpoint on ``datasets.<split>`` of ``config`` (any image source).

    ``state`` is the checkpoint already read by ``load_checkpoint``, if the caller has it.
    """
    info, device, trainer = _setup(config)
    try:
        state = state if state is not None else load_checkpoint(checkpoint)
        model_cfg = dict(_section(config, "model"), weights=None)  # the checkpoint has them
        model = build_model(model_cfg).to(device)
        load_model_state(model, state, checkpoint)
        _, loader = _eval_loader(config, split, info)
        result = evaluate(
            model,
            loader,
            _normalizer(config, device),
            _postprocess(config),
            device,
            info,
            float((config.get("metric") or {}).get("iou_threshold", 0.5)),
            bool(trainer.get("amp", False)),
            progress and info.is_main,
            keep_predictions,
        )
    except BaseException:
        destroy_process_group()
        raise
    destroy_process_group(wait_for_peers=True)
    return result
