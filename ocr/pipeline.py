"""Build what a config describes and run it: ``ocr-train`` and ``ocr-eval`` behind the CLI.

A training run writes into ``trainer.output_dir``:

* ``config.yaml``: the resolved config (file, ``_base_`` chain and overrides merged, every
  key left out set to its default);
* ``log.jsonl``: one JSON record per epoch (loss, timing, metrics, the epoch's
  ``samples`` and ``data`` digests), and with ``trainer.log_every_steps`` one per N global steps
  (``ocr.stepping``);
* ``last.pt`` every epoch (and with ``trainer.checkpoint_every_steps`` every N global steps)
  and ``best.pt`` at the best validation H-mean: resumable checkpoints
  (``ocr-train --resume runs/x/last.pt``);
* ``summary.json``: totals of the run (time split, images/s, final metrics) and its
  ``environment``: what the floats depend on (``ocr.runinfo``: threads, library versions,
  CPU), also the first line the run prints.

A checkpoint holds what the next step needs to go on as if the run had not stopped: weights,
optimizer, LR schedule, the position (epoch and step), history and step records, every
rank's tally of the epoch so far and random states (torch, numpy, Python, the DataLoaders'
generators as they were at the epoch's start) and the config. The data order and
augmentation need no state: the samples of a step follow from ``trainer.seed``, the epoch,
the step and the global batch (``ocr.sampling``), whatever the number of ranks. A resumed
run logs each setting in which its config differs from the checkpoint's.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from .agreement import check_ranks_agree, data_identity
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
    rng_state,
)
from .config import check_config
from .config_schema import SPLITS as SPLITS  # the datasets a config may hold
from .data.loader import build_dataset, build_loader
from .distributed import (
    DistInfo,
    destroy_process_group,
    gather_objects,
)
from .engine import (
    EpochTally,
    EvalResult,
    PhaseStats,
    evaluate,
    train_one_epoch,
)
from .evaluation import evaluate_checkpoint as evaluate_checkpoint  # ocr-eval's entry
from .losses import DBLoss
from .models import build_model
from .resume import generators, restore, save_run_checkpoint, save_step
from .run_parts import Learner, Run, RunState, TrainData
from .runinfo import environment_line, run_environment
from .sampling import GlobalBatchSampler
from .stepping import StepKeeper, append_record, epoch_digests, log_order, merged_tally


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
        record, line = _train_epoch(run, state, epoch)
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
) -> tuple[Run, RunState]:
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
    learner = _learner(config, device, epochs * data.sampler.steps)
    run = Run(
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
        log_every=trainer["log_every_steps"],
        checkpoint_every=trainer["checkpoint_every_steps"],
    )
    state = restore(run, resume, saved) if saved is not None and resume else RunState()
    if info.enabled:
        run.net = torch.nn.parallel.DistributedDataParallel(
            learner.model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if info.is_main:
        _start_run_folder(run, state)
    return run, state


def _training_data(config: dict[str, Any], info: DistInfo, seed: int) -> TrainData:
    """The train set with its targets and a ``GlobalBatchSampler`` (each rank its share of
    every global batch), and the validation set sharded over the ranks."""
    try:
        train_set = build_dataset(
            dataset_cfg(config, "train_dataset"), config["targets"], seed, name="train_dataset"
        )
        # The step records' data digest needs each sample's checksum, a cost paid only then.
        train_set.checksums = bool(config["trainer"]["log_every_steps"])
        loader_cfg = section(config, "dataloader")
        sampler = GlobalBatchSampler(
            len(train_set), loader_cfg["batch_size"], info.world_size, info.rank, seed=seed
        )
        train_loader = build_loader(train_set, loader_cfg, batch_sampler=sampler)
        val_set, val_loader = build_eval_loader(config, "val_dataset", info)
        identities = {}
        if info.enabled:  # every rank proves it reads what the others read
            identities = {
                split: data_identity(dataset, dataset_cfg(config, split))
                for split, dataset in (("train_dataset", train_set), ("val_dataset", val_set))
            }
    except Exception as e:
        if not info.enabled:
            raise
        check_ranks_agree({}, info, failure=e)  # the peers stop too, instead of waiting
        raise
    check_ranks_agree(identities, info)
    return TrainData(train_set, sampler, train_loader, val_set, val_loader)


def _learner(config: dict[str, Any], device: torch.device, total_steps: int) -> Learner:
    """The model on ``device``, the loss, the optimizer and the schedule over ``total_steps``."""
    model = build_model(section(config, "model")).to(device)
    loss_fn = DBLoss(**config["loss"])
    optimizer = build_optimizer(config, model.parameters())
    scheduler = build_scheduler(config, optimizer, total_steps)
    return Learner(model, loss_fn, optimizer, scheduler)


def _start_run_folder(run: Run, state: RunState) -> None:
    """Create the output folder, write the resolved ``config.yaml`` and ``log.jsonl`` (the
    checkpoint's epochs when resuming) and announce the run."""
    run.out_dir.mkdir(parents=True, exist_ok=True)
    (run.out_dir / "config.yaml").write_text(yaml.safe_dump(run.config, sort_keys=False))
    # The checkpoint's records, not the old log: a run killed between writing last.pt and
    # its log line, or resumed from best.pt, would otherwise log a step twice or never.
    records = log_order(state.history, state.steps)
    lines = "".join(json.dumps(record) + "\n" for record in records)
    (run.out_dir / "log.jsonl").write_text(lines, encoding="utf-8")
    train_set, val_set = run.data.train_set, run.data.val_set
    # The first line says what the floats of this process depend on (ocr.runinfo).
    run.say(environment_line(run_environment()))
    run.say(
        f"training on {run.device} x{run.info.world_size}: {len(train_set)} train images "
        f"({train_set.source.name}), {len(val_set)} val images "
        f"({val_set.source.name}), {run.epochs} epochs -> {run.out_dir}"
    )


def _train_epoch(run: Run, state: RunState, epoch: int) -> tuple[dict[str, Any], str]:
    """Train one epoch (0-based ``epoch``; after a mid-epoch resume, its steps left); returns
    its log record and its progress line."""
    sampler = run.data.sampler
    sampler.set_epoch(epoch)
    run.data.train_set.set_epoch(epoch)
    tally = EpochTally()
    if epoch == state.start_epoch and state.start_step and state.tallies:
        sampler.start_at(state.start_step)
        tally = merged_tally(state.tallies, run.info.rank, run.info.world_size)
    # What a mid-epoch checkpoint saves of the loaders' generators: their states before this
    # epoch's passes drew their workers' seeds, so a resumed pass draws the same ones.
    start_states = {name: g.get_state() for name, g in generators(run).items()}
    keeper = StepKeeper(
        info=run.info,
        epoch=epoch,
        steps_per_epoch=sampler.steps,
        log_every=run.log_every,
        checkpoint_every=run.checkpoint_every,
        record=lambda record: _log_step(run, state, record),
        save=lambda t: save_step(run, state, epoch, t, start_states),
        tally=tally,
    )
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
        tally=tally,
        counted=sampler.counted,
        on_step=keeper,
    )
    record: dict[str, Any] = {"epoch": epoch + 1, "train": stats.to_dict()}
    record.update(epoch_digests(tally, run.info))
    if not run.data.train_set.checksums:
        del record["data"]  # no sample was checksummed (trainer.log_every_steps: 0)
    line = (
        f"epoch {epoch + 1}/{run.epochs} | loss {stats.loss:.4f} | "
        f"{stats.images_per_s * run.info.world_size:.1f} img/s | train {_phase_text(stats)}"
    )
    return record, line


def _log_step(run: Run, state: RunState, record: dict[str, Any]) -> None:
    """Keep a step record (rank 0) and append it to ``log.jsonl`` at once."""
    state.steps.append(record)
    append_record(run.out_dir / "log.jsonl", record)


def _validate(run: Run, record: dict[str, Any]) -> tuple[EvalResult, str]:
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


def _end_epoch(run: Run, state: RunState, record: dict[str, Any], epoch: int) -> None:
    """Add the epoch to the history and track the best H-mean; rank 0 writes ``last.pt``,
    ``best.pt`` when the H-mean improved, and the record to ``log.jsonl``."""
    state.history.append(record)
    hmean = record.get("metrics", {}).get("hmean")
    improved = hmean is not None and hmean > state.best
    state.best = hmean if improved else state.best
    rng = gather_objects(rng_state(run.device, generators(run)), run.info)  # on every rank
    if run.info.is_main:
        save_run_checkpoint(run, state, epoch + 1, rng)
        if improved:
            save_run_checkpoint(run, state, epoch + 1, rng, name="best.pt")
        with open(run.out_dir / "log.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


def _finish(run: Run, state: RunState, started: float) -> dict[str, Any]:
    """The run's summary; rank 0 also writes it to ``summary.json``."""
    summary = _summary(run, state, started)
    summary.update(
        train_source=run.data.train_set.source.name,
        val_source=run.data.val_set.source.name,
        best_hmean=state.best,
        output_dir=str(run.out_dir),
        environment=run_environment(),
    )
    if run.info.is_main:
        (run.out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def _summary(run: Run, state: RunState, started: float) -> dict[str, Any]:
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
