"""The order of training samples: global batches that do not depend on the number of ranks.

Epoch ``e`` shuffles the ``n`` sample indices with ``torch.randperm(n)`` seeded by
``seed + e`` (the permutation ``DistributedSampler`` draws) and cuts it into global batches
of ``G = world_size x batch_size`` indices: global step ``s`` of the epoch holds
``perm[s * G : (s + 1) * G]``, the last step the ``n mod G`` indices left, if any. The sample
set of a step therefore depends only on (seed, epoch, step, G): one rank with batch 8 and two
ranks with batch 4 train on the same sets, step by step, and a run can stop after any step
and go on with any layout of the same global batch.

Each rank takes a contiguous share of its step's global batch: ``batch_size`` indices of a
full one; of the last, partial one, shares that differ by at most one index (earlier ranks
take the extra ones). When that last batch has fewer indices than there are ranks, the ranks
left without any still take one index (the batch's first) so that every rank runs the step
(DDP needs all of them for the gradient all-reduce); such a *filler* share is not counted:
its loss is multiplied by zero and it is left out of the step's loss, image count and
digests (``counted``). No index is repeated and none is dropped.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class GlobalBatchSampler(Sampler[list[int]]):
    """This rank's share of every global batch of an epoch, as a batch sampler.

    Args:
        length: Number of samples of the dataset.
        batch_size: Samples per rank in a full step.
        world_size: Number of ranks.
        rank: This rank.
        seed: Seeds the permutation of each epoch (``seed + epoch``).
        shuffle: False keeps the dataset's order (every epoch the same).

    Raises:
        ValueError: a size below 1 or a rank outside the world.
    """

    def __init__(
        self,
        length: int,
        batch_size: int,
        world_size: int = 1,
        rank: int = 0,
        seed: int = 0,
        shuffle: bool = True,
    ) -> None:
        if length < 1:
            raise ValueError("the dataset is empty: there is nothing to train on")
        if batch_size < 1 or world_size < 1:
            raise ValueError(f"batch_size {batch_size} and world_size {world_size} must be >= 1")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in a world of size {world_size}")
        self.length = length
        self.batch_size = batch_size
        self.world_size = world_size
        self.rank = rank
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self._start = 0

    @property
    def global_batch(self) -> int:
        """Samples per full step over all ranks."""
        return self.batch_size * self.world_size

    @property
    def steps(self) -> int:
        """Steps in an epoch (the last one possibly partial)."""
        return -(-self.length // self.global_batch)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def start_at(self, step: int) -> None:
        """Make the next pass begin at ``step`` of the epoch (the steps before it were done);
        the passes after it begin at 0 again."""
        if not 0 <= step <= self.steps:
            raise ValueError(f"step {step} is not in an epoch of {self.steps} steps")
        self._start = step

    def permutation(self, epoch: int) -> list[int]:
        """The epoch's order of the sample indices."""
        if not self.shuffle:
            return list(range(self.length))
        generator = torch.Generator()
        generator.manual_seed(self.seed + epoch)
        return torch.randperm(self.length, generator=generator).tolist()

    def global_indices(self, epoch: int, step: int) -> list[int]:
        """The indices of global step ``step`` of ``epoch``, all ranks together."""
        size = self.global_batch
        return self.permutation(epoch)[step * size : (step + 1) * size]

    def shares(self, count: int) -> list[tuple[int, int]]:
        """``(start, stop)`` of each rank's share of a global batch of ``count`` indices."""
        base, extra = divmod(count, self.world_size)
        out = []
        for rank in range(self.world_size):
            start = rank * base + min(rank, extra)
            out.append((start, start + base + (1 if rank < extra else 0)))
        return out

    def counted(self, step: int) -> bool:
        """Whether this rank's share of ``step`` holds samples (False: a filler share)."""
        count = min(self.global_batch, self.length - step * self.global_batch)
        start, stop = self.shares(count)[self.rank]
        return stop > start

    def __iter__(self) -> Iterator[list[int]]:
        start, self._start = self._start, 0
        order = self.permutation(self.epoch)
        size = self.global_batch
        for step in range(start, self.steps):
            batch = order[step * size : (step + 1) * size]
            first, stop = self.shares(len(batch))[self.rank]
            yield batch[first:stop] if stop > first else batch[:1]

    def __len__(self) -> int:
        return self.steps
