"""What a training run does between epochs' ends: step records and mid-epoch checkpoints.

With ``trainer.log_every_steps: N`` every N-th global step adds one record to ``log.jsonl``::

    {"epoch": 1, "step": 12, "loss": 0.73412..., "images": 8,
     "samples": "9f0c...", "data": "51e2..."}

``step`` counts global steps from the run's start (1-based; an epoch has
``ceil(images / global batch)`` of them), ``loss`` is the step's loss over all ranks' images
at full precision, ``samples`` and ``data`` the step's digests (``ocr.data.digest``), all
ranks' parts added. With ``trainer.checkpoint_every_steps: N`` every N-th global step also
writes ``last.pt`` (not on an epoch's last step: the epoch's own checkpoint follows at once),
holding the position in the epoch and every rank's tally and random states, from which
``ocr-train --resume`` continues with the next step.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .data import digest
from .distributed import DistInfo, sum_across_ranks
from .engine import EpochTally, StepResult


class StepKeeper:
    """``on_step`` of ``train_one_epoch``: writes step records and mid-epoch checkpoints.

    Every rank calls it after every step (the records' sums are collective operations).

    Args:
        info: This process's rank and world size.
        epoch: The epoch (0-based).
        steps_per_epoch: Global steps in an epoch.
        log_every: Record every this many global steps (0: never).
        checkpoint_every: Checkpoint every this many global steps (0: never).
        record: Called on rank 0 with each step record.
        save: Called on every rank with the epoch's tally after a checkpointed step (the
            caller gathers the ranks' states and rank 0 writes).
        tally: The epoch's tally that ``train_one_epoch`` updates.
    """

    def __init__(
        self,
        *,
        info: DistInfo,
        epoch: int,
        steps_per_epoch: int,
        log_every: int,
        checkpoint_every: int,
        record: Callable[[dict[str, Any]], None],
        save: Callable[[EpochTally], None],
        tally: EpochTally,
    ) -> None:
        self.info = info
        self.epoch = epoch
        self.steps_per_epoch = steps_per_epoch
        self.log_every = log_every
        self.checkpoint_every = checkpoint_every
        self.record = record
        self.save = save
        self.tally = tally

    def global_step(self, index: int) -> int:
        """The 1-based global step of step ``index`` of this epoch."""
        return self.epoch * self.steps_per_epoch + index + 1

    def __call__(self, result: StepResult) -> None:
        step = self.global_step(result.index)
        if self.log_every and step % self.log_every == 0:
            record = self._step_record(result, step)
            if self.info.is_main:
                self.record(record)
        last = result.index + 1 == self.steps_per_epoch
        if self.checkpoint_every and step % self.checkpoint_every == 0 and not last:
            self.save(self.tally)

    def _step_record(self, result: StepResult, step: int) -> dict[str, Any]:
        """The step's record, its sums taken over all ranks."""
        values = [
            float(result.images),
            result.loss * result.images,
            *digest.to_limbs(result.samples),
            *digest.to_limbs(result.data),
        ]
        totals = sum_across_ranks(values, self.info)
        images = int(totals[0])
        limbs = [int(v) for v in totals[2:]]
        return {
            "epoch": self.epoch + 1,
            "step": step,
            "loss": totals[1] / max(images, 1),
            "images": images,
            "samples": digest.to_hex(digest.from_limbs(limbs[: digest.LIMBS])),
            "data": digest.to_hex(digest.from_limbs(limbs[digest.LIMBS :])),
        }


def epoch_digests(tally: EpochTally, info: DistInfo) -> dict[str, str]:
    """The epoch's ``samples`` and ``data`` digests over all ranks (a collective call)."""
    limbs = [int(v) for v in sum_across_ranks(
        [*digest.to_limbs(tally.samples), *digest.to_limbs(tally.data)], info
    )]  # fmt: skip
    return {
        "samples": digest.to_hex(digest.from_limbs(limbs[: digest.LIMBS])),
        "data": digest.to_hex(digest.from_limbs(limbs[digest.LIMBS :])),
    }


def merged_tally(tallies: list[dict[str, Any]], rank: int, world_size: int) -> EpochTally:
    """This rank's tally from a checkpoint's list of every rank's.

    The same number of ranks: each takes its own, so the epoch ends with the sums an
    uninterrupted run adds up. Another number: rank 0 takes all the sums (the epoch's totals
    are sums over ranks), the other ranks start from zero with the same step count.
    """
    if len(tallies) == world_size:
        return EpochTally.from_state(tallies[rank])
    parts = [EpochTally.from_state(t) for t in tallies]
    if rank != 0:
        return EpochTally(steps=parts[0].steps)
    out = EpochTally(steps=parts[0].steps)
    for part in parts:
        out.images += part.images
        out.loss_sum += part.loss_sum
        for name, value in part.part_sums.items():
            out.part_sums[name] = out.part_sums.get(name, 0.0) + value
        out.samples = digest.add(out.samples, part.samples)
        out.data = digest.add(out.data, part.data)
    return out


def append_record(path: Path, record: dict[str, Any]) -> None:
    """Append one record to a ``log.jsonl`` (written through at once: a run killed a moment
    later has it)."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def log_order(history: list[dict[str, Any]], steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Epoch records (``history``) and step records (``steps``) in the order a run writes
    them: each epoch's step records before its epoch record."""
    out: list[dict[str, Any]] = []
    pending = deque(steps)
    for record in history:
        while pending and pending[0]["epoch"] <= record["epoch"]:
            out.append(pending.popleft())
        out.append(record)
    return out + list(pending)
