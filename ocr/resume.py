"""Checkpoints of a training run: what ``last.pt`` holds and how a run goes on from it.

A checkpoint is taken at an epoch's end, or with ``trainer.checkpoint_every_steps`` after a
step in the middle of one (``position``: the step and every rank's ``EpochTally``); see
``ocr.pipeline`` for what it holds and ``ocr.sampling`` for why the samples of the steps left
need no state.
"""

from __future__ import annotations

from typing import Any

import torch

from .checkpoint import (
    CheckpointError,
    load_model_state,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from .config import config_changes
from .config_schema import complete
from .distributed import gather_objects
from .engine import EpochTally
from .run_parts import Run, RunState


def restore(run: Run, resume: str, state: dict[str, Any]) -> RunState:
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
    restore_rng(run, state.get("rng"))
    restored = RunState(
        start_epoch=int(state["epoch"]),
        start_step=int(state.get("step", 0)),
        tallies=state.get("tally"),
        best=float(state.get("best_hmean", -1.0)),
        history=list(state.get("history", [])),
        steps=list(state.get("steps", [])),
    )
    if restored.start_step:
        _check_position(run, resume, state, restored.start_step)
        run.say(
            f"resumed from {resume} at step {restored.start_step} of epoch "
            f"{restored.start_epoch + 1} (global step "
            f"{restored.start_epoch * run.data.sampler.steps + restored.start_step})"
        )
    else:
        run.say(f"resumed from {resume} after epoch {restored.start_epoch}")
    return restored


def _check_position(run: Run, resume: str, state: dict[str, Any], step: int) -> None:
    """Raise unless this run can go on from a mid-epoch checkpoint's ``step``: the same
    global batch (the samples of a step depend on it) and as many steps per epoch."""
    sampler = run.data.sampler
    saved_batch = state.get("global_batch")
    if saved_batch != sampler.global_batch:
        raise CheckpointError(
            f"checkpoint '{resume}' stopped at step {step} of an epoch with a global batch of "
            f"{saved_batch}; this run's is {sampler.global_batch} ({run.info.world_size} "
            f"rank(s) x dataloader.batch_size {sampler.batch_size}). Resume with a layout of "
            f"the same global batch (e.g. dataloader.batch_size="
            f"{(saved_batch or 0) // run.info.world_size or 1}), or from a checkpoint taken at "
            "an epoch's end"
        )
    if state.get("steps_per_epoch") != sampler.steps or not state.get("tally"):
        raise CheckpointError(
            f"checkpoint '{resume}' stopped at step {step} of an epoch of "
            f"{state.get('steps_per_epoch')} steps; this run's epoch has {sampler.steps} "
            "(the training set changed): resume from a checkpoint taken at an epoch's end"
        )


def generators(run: Run) -> dict[str, Any]:
    """The DataLoaders' generators: each pass draws from them the seeds of its workers."""
    return {"train": run.data.train_loader.generator, "val": run.data.val_loader.generator}


def restore_rng(run: Run, saved: list[dict[str, Any]] | None) -> None:
    """Restore this rank's random states from a checkpoint's list (one entry per rank)."""
    if not saved:  # a checkpoint from before random states were saved
        run.say("the checkpoint has no random states: the run goes on from new ones")
        return
    if len(saved) != run.info.world_size:
        run.say(
            f"the checkpoint's run had {len(saved)} rank(s), this one has "
            f"{run.info.world_size}: each step trains on the same samples, rank r starts "
            f"from the random states of rank r mod {len(saved)}"
        )
    set_rng_state(saved[run.info.rank % len(saved)], run.device, generators(run))


def save_run_checkpoint(
    run: Run,
    state: RunState,
    epoch: int,
    rng: list[dict[str, Any]],
    name: str = "last.pt",
    position: dict[str, Any] | None = None,
) -> None:
    """Write a resumable checkpoint into the output folder, with each rank's random states
    ``rng``: after ``epoch`` epochs, or with ``position`` (``step`` and ``tally``) that many
    steps into epoch ``epoch`` (0-based)."""
    learner = run.learner
    scheduler = learner.scheduler
    save_checkpoint(
        run.out_dir / name,
        {
            "model": learner.model.state_dict(),
            "optimizer": learner.optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "epoch": epoch,
            "step": 0,
            "global_batch": run.data.sampler.global_batch,
            "steps_per_epoch": run.data.sampler.steps,
            **(position or {}),
            "best_hmean": state.best,
            "history": state.history,
            "steps": state.steps,
            "rng": rng,
            "config": run.config,
        },
    )


def save_step(
    run: Run,
    state: RunState,
    epoch: int,
    tally: EpochTally,
    start_states: dict[str, torch.Tensor],
) -> None:
    """Write ``last.pt`` after step ``tally.steps`` of ``epoch`` (0-based): every rank's tally
    and random states, the loaders' generators as they were at the epoch's start."""
    rng = rng_state(run.device, {})
    rng["generators"] = start_states
    rngs = gather_objects(rng, run.info)  # on every rank
    tallies = gather_objects(tally.to_state(), run.info)
    if run.info.is_main:
        position = {"step": tally.steps, "tally": tallies}
        save_run_checkpoint(run, state, epoch, rngs, position=position)
