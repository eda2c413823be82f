"""GlobalBatchSampler: the samples of a step depend on (seed, epoch, step, global batch) only."""

from __future__ import annotations

import pytest
from torch.utils.data import DistributedSampler

from ocr.sampling import GlobalBatchSampler


def _all_ranks(length: int, batch: int, world: int, seed: int = 0, epoch: int = 0):
    """Each step's counted shares of every rank, in rank order."""
    samplers = [GlobalBatchSampler(length, batch, world, r, seed=seed) for r in range(world)]
    for s in samplers:
        s.set_epoch(epoch)
    per_rank = [list(s) for s in samplers]
    steps = []
    for step in range(samplers[0].steps):
        steps.append([per_rank[r][step] if samplers[r].counted(step) else [] for r in range(world)])
    return steps


def test_shares_of_an_unshuffled_epoch_are_hand_computed():
    # 7 samples, 3 ranks x 2: step 0 holds 0..5, step 1 only 6, which rank 0 takes.
    samplers = [GlobalBatchSampler(7, 2, 3, r, shuffle=False) for r in range(3)]
    assert [list(s) for s in samplers] == [[[0, 1], [6]], [[2, 3], [6]], [[4, 5], [6]]]
    assert [[s.counted(step) for step in (0, 1)] for s in samplers] == [
        [True, True],
        [True, False],
        [True, False],
    ]
    # 11 samples, 2 ranks x 3: the last step's 5 indices split 3 and 2.
    samplers = [GlobalBatchSampler(11, 3, 2, r, shuffle=False) for r in range(2)]
    assert [list(s) for s in samplers] == [[[0, 1, 2], [6, 7, 8]], [[3, 4, 5], [9, 10]]]


@pytest.mark.parametrize("length", [8, 9, 10, 13, 16])
@pytest.mark.parametrize("epoch", [0, 3])
def test_one_rank_of_8_and_two_of_4_and_four_of_2_take_the_same_sets(length, epoch):
    layouts = [_all_ranks(length, 8 // world, world, seed=5, epoch=epoch) for world in (1, 2, 4)]
    sets = [[sorted(i for share in step for i in share) for step in steps] for steps in layouts]
    assert sets[0] == sets[1] == sets[2]
    flat = [i for step in sets[0] for i in step]
    assert sorted(flat) == list(range(length)), "every sample once, none repeated or dropped"


def test_one_rank_keeps_the_batches_of_the_distributed_sampler_it_replaces():
    # The previous sampler, kept as the oracle: one rank's batches are unchanged.
    for epoch in range(3):
        old = DistributedSampler(range(21), num_replicas=1, rank=0, shuffle=True, seed=9)
        old.set_epoch(epoch)
        order = list(old)
        new = GlobalBatchSampler(21, 4, 1, 0, seed=9)
        new.set_epoch(epoch)
        assert list(new) == [order[i : i + 4] for i in range(0, 21, 4)]


def test_epochs_differ_and_seeds_differ():
    a = GlobalBatchSampler(50, 5, seed=1)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first
    assert list(GlobalBatchSampler(50, 5, seed=2)) != first


def test_start_at_skips_the_steps_done_once():
    sampler = GlobalBatchSampler(10, 2, 2, 1, seed=4)
    whole = list(sampler)
    sampler.start_at(2)
    assert list(sampler) == whole[2:]
    assert list(sampler) == whole  # the next pass is whole again
    with pytest.raises(ValueError, match="not in an epoch of 3 steps"):
        sampler.start_at(4)


@pytest.mark.parametrize(
    ("args", "message"),
    [((0, 2), "empty"), ((5, 0), "must be >= 1"), ((5, 2, 2, 2), "rank 2 is not in a world")],
)
def test_bad_arguments_are_refused(args, message):
    with pytest.raises(ValueError, match=message):
        GlobalBatchSampler(*args)
