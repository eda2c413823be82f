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


def _train(
    config: dict[str, Any],
    info: DistInfo,
    device: torch.device,
    trainer: dict[str, Any],
    progress: bool,
    echo: Callable[[str], None],
    started: float,
) -> dict[str, Any]:
    seed = int(trainer.get("seed", 0))
    torch.manual_seed(seed)
    epochs = int(trainer.get("epochs", 1))
    amp = bool(trainer.get("amp", False))
    out_dir = Path(trainer.get("output_dir") or "runs/dbnet")
    say = echo if info.is_main else (lambda _: None)

    train_set = build_dataset(_dataset_cfg(config, "train_dataset"), config.get("targets"), seed)
    sampler: DistributedSampler = DistributedSampler(
        train_set, num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=seed
    )
    loader_cfg = _section(config, "dataloader")
    train_loader = build_loader(train_set, loader_cfg, sampler=sampler)
    val_set, val_loader = _eval_loader(config, "val_dataset", info)
    model = build_model(_section(config, "model")).to(device)
    loss_fn = DBLoss(**(config.get("loss") or {}))
    optimizer = _optimizer(config, model.parameters())
    scheduler = _scheduler(config, optimizer, epochs * len(train_loader))
    normalizer = _normalizer(config, device)
    post = _postprocess(config)
    iou = float((config.get("metric") or {}).get("iou_threshold", 0.5))

    start_epoch, best, history = 0, -1.0, []
    resume = trainer.get("resume")
    if resume:
        state = load_checkpoint(resume)
        load_model_state(model, state, resume)
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state.get("scheduler"):
            scheduler.load_state_dict(state["scheduler"])
        start_epoch = int(state["epoch"])
        best = float(state.get("best_hmean", -1.0))
        history = list(state.get("history", []))
        say(f"resumed from {resume} after epoch {start_epoch}")
    net: torch.nn.Module = model
    if info.enabled:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )

    if info.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        say(
            f"training on {device} x{info.world_size}: {len(train_set)} train images "
            f"({train_set.source.name}), {len(val_set)} val images "
            f"({val_set.source.name}), {epochs} epochs -> {out_dir}"
        )
    val_every = int(trainer.get("val_every", 1))
    last_eval: EvalResult | None = None
    for epoch in range(start_epoch, epochs):
        sampler.set_epoch(epoch)
        train_set.set_epoch(epoch)
        stats = train_one_epoch(
            net,
            train_loader,
            loss_fn,
            optimizer,
            scheduler,
            normalizer,
            device,
            info,
            amp=amp,
            progress=progress,
            desc=f"epoch {epoch + 1}/{epochs}",
        )
        record: dict[str, Any] = {"epoch": epoch + 1, "train": stats.to_dict()}
        line = (
            f"epoch {epoch + 1}/{epochs} | loss {stats.loss:.4f} | "
            f"{stats.images_per_s * info.world_size:.1f} img/s | train {_phase_text(stats)}"
        )
        is_last = epoch + 1 == epochs
        if is_last or (val_every > 0 and (epoch + 1) % val_every == 0):
            last_eval = evaluate(
                model,
                val_loader,
                normalizer,
                post,
                device,
                info,
                iou,
                amp,
                progress,
                desc="validate",
            )
            record["val"] = last_eval.stats.to_dict()
            record["metrics"] = last_eval.metrics
            line += f" | val {_phase_text(last_eval.stats)} | {metrics_text(last_eval.metrics)}"
        history.append(record)
        hmean = record.get("metrics", {}).get("hmean")
        improved = hmean is not None and hmean > best
        best = hmean if improved else best
        if info.is_main:
            saved = (model, optimizer, scheduler, config, epoch + 1, history, best)
            _save_epoch(out_dir, *saved)
            if improved:
                _save_epoch(out_dir, *saved, name="best.pt")
            with open(out_dir / "log.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
        say(line)
    summary = _summary(history, start_epoch, last_eval, device, info, started)
    summary.update(
        train_source=train_set.source.name,
        val_source=val_set.source.name,
        best_hmean=best,
        output_dir=str(out_dir),
    )
    if info.is_main:
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def _save_epoch(
    out_dir: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    config: dict[str, Any],
    epoch: int,
    history: list[dict[str, Any]],
    best: float,
    name: str = "last.pt",
) -> None:
    save_checkpoint(
        out_dir / name,
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "epoch": epoch,
            "best_hmean": best,
            "history": history,
            "config": config,
        },
    )


def _summary(
    history: list[dict[str, Any]],
    start_epoch: int,
    last_eval: EvalResult | None,
    device: torch.device,
    info: DistInfo,
    started: float,
) -> dict[str, Any]:
    run = [r for r in history if r["epoch"] > start_epoch]
    wall = sum(r["train"]["wall_s"] + r.get("val", {}).get("wall_s", 0.0) for r in run)
    wait = sum(r["train"]["data_wait_s"] + r.get("val", {}).get("data_wait_s", 0.0) for r in run)
    images = sum(r["train"]["images"] for r in run) * info.world_size
    train_wall = sum(r["train"]["wall_s"] for r in run)
    return {
        "device": str(device),
        "world_size": info.world_size,
        "epochs_run": len(run),
        "total_s": time.perf_counter() - started,
        "loop_s": wall,
        "data_wait_s": wait,
        "data_wait_share": wait / wall if wall > 0 else 0.0,
        "train_images_per_s": images / train_wall if train_wall > 0 else 0.0,
        "final_loss": run[-1]["train"]["loss"] if run else None,
        "metrics": last_eval.metrics if last_eval else None,
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
