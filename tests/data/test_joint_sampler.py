"""JointSampler: ratios, seeded plans, exact resume of the position, and per-rank shards."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from mutr.data import JointDataset, JointSampler, SyntheticDataset, collate
from mutr.errors import InputError


def test_ratios_are_respected_and_indices_cover_each_dataset():
    sampler = JointSampler([50, 10], ratios=[3, 1], num_samples=8000, seed=1)
    keys = np.array(list(sampler))
    share = (keys[:, 0] == 0).mean()
    assert abs(share - 0.75) < 0.02
    small = keys[keys[:, 0] == 1, 1]
    assert sorted(small[:10]) == list(range(10))  # a permutation before any repeat
    assert len(set(keys[:, 2])) == len(keys)  # every sample gets its own seed


def test_default_ratio_is_proportional_to_sizes():
    keys = np.array(list(JointSampler([30, 10], seed=0, num_samples=4000)))
    assert abs((keys[:, 0] == 0).mean() - 0.75) < 0.03


def test_plan_is_a_function_of_seed_and_epoch():
    a, b = JointSampler([20, 20], seed=4), JointSampler([20, 20], seed=4)
    first = list(a)
    assert first == list(b)
    assert list(a) != first and a.epoch == 2  # the next epoch, after exhausting
    assert list(JointSampler([20, 20], seed=5)) != first


@pytest.mark.parametrize("stop", [0, 1, 17, 39, 40, 55])
def test_resume_continues_exactly_where_it_stopped(stop):
    ref = JointSampler([13, 7], ratios=[1, 1], num_samples=40, seed=9)
    stream = list(itertools.islice(itertools.chain(ref, ref), 80))  # two epochs
    run = JointSampler([13, 7], ratios=[1, 1], num_samples=40, seed=9)
    head = list(itertools.islice(iter(run), stop)) if stop <= 40 else list(run) + list(itertools.islice(iter(run), stop - 40))
    state = run.state_dict()
    resumed = JointSampler([13, 7], ratios=[1, 1], num_samples=40, seed=9)
    resumed.load_state_dict(state)
    resumed.set_epoch(state["epoch"])  # the usual call at the top of an epoch must not reset
    tail = list(resumed)
    assert head + tail == stream[: len(head) + len(tail)] and len(head) + len(tail) in (40, 80)


def test_resumed_training_batches_are_bit_identical():
    joint = JointDataset({"text": SyntheticDataset("text", num_videos=5, num_frames=2, size=32, seed=0),
                          "text2": SyntheticDataset("text", num_videos=3, num_frames=2, size=(32, 48), seed=1)})
    def loader(sampler):
        return DataLoader(joint, batch_size=2, sampler=sampler, collate_fn=collate, num_workers=0)

    full = [b.frames for b in loader(JointSampler(joint, [2, 1], num_samples=8, seed=3))]
    sampler = JointSampler(joint, [2, 1], num_samples=8, seed=3)
    first = next(iter(loader(sampler)))
    state = sampler.state_dict(position=2)  # consumed two samples (the sampler may have run ahead)
    again = JointSampler(joint, [2, 1], num_samples=8, seed=3)
    again.load_state_dict(state)
    rest = [b.frames for b in loader(again)]
    assert torch.equal(first.frames, full[0])
    assert len(rest) == 3 and all(torch.equal(x, y) for x, y in zip(rest, full[1:]))


def test_groups_keep_batches_to_one_dataset_and_ranks_split_the_plan():
    sampler = JointSampler([9, 9], seed=0, group_size=4, num_samples=40)
    keys = np.array(list(sampler))
    assert all(len(set(keys[i:i + 4, 0])) == 1 for i in range(0, len(keys), 4))
    ranks = [JointSampler([9, 9], seed=0, group_size=4, num_samples=40, rank=r, world_size=2) for r in (0, 1)]
    shards = [np.array(list(s)) for s in ranks]
    assert len(shards[0]) == len(shards[1]) == len(ranks[0]) == 20
    merged = np.concatenate([np.concatenate([shards[0][i:i + 4], shards[1][i:i + 4]]) for i in range(0, 20, 4)])
    assert np.array_equal(merged, keys)


def test_mismatched_state_and_bad_ratios_are_refused():
    state = JointSampler([5, 5], seed=1).state_dict()
    with pytest.raises(InputError, match="sizes"):
        JointSampler([5, 6], seed=1).load_state_dict(state)
    with pytest.raises(InputError, match="ratios"):
        JointSampler([5, 5], seed=1, ratios=[1, 3]).load_state_dict(state)
    with pytest.raises(InputError, match="empty"):
        JointSampler([5, 0], ratios=[1, 1])
    with pytest.raises(InputError, match="one non-negative number per dataset"):
        JointSampler([5, 5], ratios=[1])
