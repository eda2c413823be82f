"""Running under ``torchrun``: process group, samplers and gathering results across ranks.

``torchrun --nproc_per_node N`` sets ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``; without them
everything here degrades to one process (rank 0 of 1) and no process group is created.
Every rank opens the same ``.lmdb`` itself (the reader opens lazily per process), so N ranks
share one page-cache copy of the images.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import Sampler


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def dist_info_from_env() -> DistInfo:
    """The rank layout ``torchrun`` put in the environment (one process when absent)."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError as e:
        raise ValueError(f"WORLD_SIZE, RANK and LOCAL_RANK must be integers: {e}") from e
    return DistInfo(rank=rank, world_size=world, local_rank=local)


def init_process_group(info: DistInfo, device: torch.device) -> None:
    """Join the process group: NCCL for CUDA devices, gloo for CPU."""
    if not info.enabled or dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, rank=info.rank, world_size=info.world_size)


def destroy_process_group(wait_for_peers: bool = False) -> None:
    """Leave the process group.

    Args:
        wait_for_peers: Meet every rank at a barrier first (after a run that ended normally).
            A rank that tears its connections down while a peer still finishes the last
            collective makes gloo abort that peer (SIGABRT at exit); after an error the
            peers may never arrive, so it is not used then.
    """
    if dist.is_available() and dist.is_initialized():
        if wait_for_peers:
            try:
                dist.barrier()
            except Exception:  # a peer is gone: nothing left to wait for
                pass
        dist.destroy_process_group()


class ShardSampler(Sampler[int]):
    """Indices ``rank, rank + world, ...``: every sample on exactly one rank, none repeated.

    Unlike ``DistributedSampler`` it never pads the last shard with repeated samples, which
    would count those images twice in an evaluation.
    """

    def __init__(self, length: int, rank: int, world_size: int) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in a world of size {world_size}")
        self.length = length
        self.rank = rank
        self.world_size = world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.length, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.length, self.world_size))


def gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank (``[obj]`` in one process)."""
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def sum_across_ranks(values: list[float], info: DistInfo) -> list[float]:
    """Element-wise sum of a list of numbers over all ranks."""
    return _all_reduce(values, info, dist.ReduceOp.SUM)


def max_across_ranks(values: list[float], info: DistInfo) -> list[float]:
    """Element-wise maximum of a list of numbers over all ranks (e.g. wall times)."""
    return _all_reduce(values, info, dist.ReduceOp.MAX)


def _all_reduce(values: list[float], info: DistInfo, op: Any) -> list[float]:
    if not info.enabled:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=_collective_device())
    dist.all_reduce(tensor, op=op)
    return tensor.tolist()


def _collective_device() -> torch.device:
    # NCCL reduces CUDA tensors only; gloo reduces CPU tensors.
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
