"""Samples → micro-batches: token budget, packing indices, unpacking."""

from __future__ import annotations

import pytest
import torch

from rl.batch import collate, split_by_token_budget, unpack
from rl.types import Sample


def _sample(p, r, adv=1.0):
    return Sample(0, 0, list(range(1, p + 1)), list(range(10, 10 + r)), [-0.5] * r, "stop", 0, advantage=adv)


def test_token_budget_bounds_padded_cost():
    samples = [_sample(3, n) for n in (1, 9, 2, 7, 4, 4)]
    batches = split_by_token_budget(samples, budget=24)
    assert sorted(i for b in batches for i in b) == list(range(6))
    for b in batches:
        longest = max(len(samples[i].prompt_ids) + len(samples[i].response_ids) for i in b)
        assert longest * len(b) <= 24 or len(b) == 1


def test_collate_packs_response_positions_only():
    samples = [_sample(2, 3, adv=0.5), _sample(4, 1, adv=-1.0), _sample(1, 2)]
    mb = collate(samples, [0, 1, 2], pad_id=0, loss_mask=[True, True, False])
    assert mb.input_ids.shape == (3, 5)
    # row 0: prompt [1,2], response [10,11,12] → positions 1,2,3 predict 10,11,12
    flat = mb.input_ids.reshape(-1)
    assert torch.equal(flat[mb.token_index + 1], mb.targets)
    assert mb.targets.tolist() == [10, 11, 12, 10]
    assert mb.advantages.tolist() == [0.5, 0.5, 0.5, -1.0]
    assert mb.num_seqs == 2 and mb.num_tokens == 4  # the masked row trains nothing
    assert mb.position_ids[1].tolist() == [0, 1, 2, 3, 4]


def test_unpack_inverts_packing():
    values = torch.tensor([1.0, 2.0, 3.0, 4.0])
    seq = torch.tensor([0, 0, 2, 2])
    mat, mask = unpack(values, seq, 3)
    assert mat.tolist() == [[1, 2], [0, 0], [3, 4]] and mask.tolist() == [[1, 1], [0, 0], [1, 1]]


@pytest.mark.parametrize("n, parts, sizes", [(10, 4, [3, 3, 2, 2]), (9, 4, [3, 2, 2, 2]), (8, 4, [2, 2, 2, 2]),
                                              (3, 4, [1, 1, 1, 0]), (5, 1, [5])])
def test_mini_batches_differ_in_size_by_at_most_one(n, parts, sizes):
    from rl.trainer import split_even

    split = split_even(list(range(n)), parts)
    assert [len(s) for s in split] == sizes
    assert sum(split, []) == list(range(n))  # contiguous, in order, nothing dropped
