"""Pieces of the training loop: device choice, LR schedule, timing stats."""

from __future__ import annotations

import gc

import pytest
import torch

from ocr.distributed import DistInfo
from ocr.engine import (
    PhaseStats,
    _timed,
    evaluate,
    poly_schedule,
    resolve_device,
    train_one_epoch,
)


def test_auto_device_is_cpu_without_cuda():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA; auto picks it")
    assert resolve_device("auto", DistInfo()) == torch.device("cpu")


def test_cuda_without_gpu_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ValueError, match="no GPU"):
        resolve_device("cuda", DistInfo())


def test_unknown_device_names_the_setting():
    with pytest.raises(ValueError, match="trainer.device 'tpu0'"):
        resolve_device("tpu0", DistInfo())


def test_poly_schedule_matches_the_formula():
    factor = poly_schedule(total_steps=10, power=0.9, warmup_steps=0)
    assert factor(0) == 1.0
    assert factor(5) == pytest.approx(0.5**0.9)
    assert factor(10) == 0.0
    assert factor(12) == 0.0


def test_poly_schedule_warms_up_linearly():
    factor = poly_schedule(total_steps=100, power=1.0, warmup_steps=4)
    assert [factor(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert factor(50) == pytest.approx(0.5)


def test_phase_stats_split_and_rates():
    stats = PhaseStats(images=30, wall_s=10.0, data_wait_s=2.5)
    assert stats.compute_s == 7.5
    assert stats.data_wait_share == 0.25
    assert stats.images_per_s == 3.0
    assert PhaseStats().data_wait_share == 0.0


@pytest.mark.parametrize("loop", [train_one_epoch, evaluate], ids=["train", "evaluate"])
def test_loops_take_keywords_after_model_and_loader(loop):
    # Refused before the loop starts, so placeholders do for the arguments.
    with pytest.raises(TypeError, match="positional argument"):
        loop(torch.nn.Identity(), [], None, None, None, None, None, None)


class _FreezeCounts(torch.utils.data.Dataset):
    """Each item: how many objects the garbage collector leaves alone in the worker."""

    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int) -> int:
        return gc.get_freeze_count()


def test_fork_workers_start_with_the_inherited_objects_frozen():
    loader = torch.utils.data.DataLoader(
        _FreezeCounts(), batch_size=1, num_workers=1, multiprocessing_context="fork"
    )
    stats = PhaseStats()
    counts = [int(batch) for batch in _timed(loader, stats)]
    assert min(counts) > 1000  # the main process's objects: torch alone makes far more


def test_main_process_objects_are_unfrozen_once_the_workers_started():
    loader = torch.utils.data.DataLoader(
        _FreezeCounts(), batch_size=1, num_workers=1, multiprocessing_context="fork"
    )
    for _ in _timed(loader, PhaseStats()):
        assert gc.get_freeze_count() == 0
