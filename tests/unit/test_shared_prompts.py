"""Shared-prompt micro-batches: each prompt computed once, answers under a block attention mask.

The layout (rl.batch.split_shared / collate_shared / attention_bias) must give every response token the
context and position it had in generation, so logprobs, losses and gradients equal those of one sequence
per row up to fp32 summation order. Error model for the comparisons: the two layouts add the same fp32
products in a different order (different matrix shapes), a few ulps of O(1)-O(10) values through two
layers: 1e-5 absolute on logprobs and losses, 1e-5 relative on gradients.
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from rl.batch import attention_bias, collate, collate_shared, split_by_token_budget, split_shared
from rl.loss_config import LossConfig
from rl.policy import PolicyModule, check_shared_prompts
from rl.types import Sample


def _groups(vocab: int, seed: int = 0, groups: int = 4, per: int = 4) -> list[Sample]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for k in range(groups):
        prompt = torch.randint(3, vocab, (3 + 2 * k,), generator=g).tolist()
        for _ in range(per):
            n = int(torch.randint(1, 7, (1,), generator=g))
            out.append(Sample(len(out), k, prompt, torch.randint(3, vocab, (n,), generator=g).tolist(),
                              (-torch.rand(n, generator=g)).tolist(), "stop", 0,
                              advantage=float(torch.randn(1, generator=g))))
    return out


def test_split_shared_rows_hold_one_prompt_and_fit_the_budget():
    samples = _groups(50, groups=3, per=5)
    budget = 24
    batches = split_shared(samples, budget)
    rows = [row for b in batches for row in b]
    assert sorted(i for row in rows for i in row) == list(range(len(samples)))  # each sample exactly once
    for row in rows:
        assert len({tuple(samples[i].prompt_ids) for i in row}) == 1
        length = len(samples[row[0]].prompt_ids) + sum(len(samples[i].response_ids) for i in row)
        assert length <= budget or len(row) == 1
    for b in batches:
        longest = max(len(samples[r[0]].prompt_ids) + sum(len(samples[i].response_ids) for i in r) for r in b)
        assert longest * len(b) <= budget or len(b) == 1


def test_collate_shared_layout():
    prompt = [1, 2, 3]
    samples = [Sample(0, 0, prompt, [10, 11], [-0.1, -0.2], "stop", 0, advantage=1.0),
               Sample(1, 0, prompt, [12, 13, 14], [-0.3, -0.4, -0.5], "stop", 0, advantage=-1.0),
               Sample(2, 0, prompt, [15], [-0.6], "stop", 0, advantage=2.0)]
    mb = collate_shared(samples, [[0, 1, 2]], pad_id=0, loss_mask=[True, False, True])
    assert mb.input_ids.tolist() == [[1, 2, 3, 10, 11, 12, 13, 14, 15]]
    assert mb.segment_ids.tolist() == [[0, 0, 0, 1, 1, 2, 2, 2, 3]]
    assert mb.position_ids.tolist() == [[0, 1, 2, 3, 4, 3, 4, 5, 3]]  # every answer starts after the prompt
    # the prompt's last position predicts every answer's first token; the masked sample trains nothing
    assert mb.token_index.tolist() == [2, 3, 2]
    assert mb.targets.tolist() == [10, 11, 15]
    assert mb.sample_ids == [0, 1, 2] and mb.seq_index.tolist() == [0, 0, 2] and mb.num_sequences == 3
    assert mb.advantages.tolist() == [1.0, 1.0, 2.0] and mb.num_seqs == 2
    allowed = attention_bias(mb.segment_ids, torch.float32)[0, 0] == 0
    assert allowed[6].tolist() == [True, True, True, False, False, True, True, False, False]  # answer 2, token 2
    assert allowed[8].tolist() == [True, True, True, False, False, False, False, False, True]  # answer 3
    with pytest.raises(ValueError, match="one prompt"):
        collate_shared([samples[0], Sample(3, 1, [4, 5], [6], [0.0], "stop", 0)], [[0, 1]], 0, [True, True])


@pytest.fixture(params=["sdpa", "eager"])
def policy(request, tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32,
                                                 attn_implementation=request.param)
    return PolicyModule(model)


def _per_sample(policy, mbs, samples, mask):
    """{sample: logprobs}, read back as the trainer does (packed in sample_ids order, masked rows empty)."""
    out = {}
    for mb in mbs:
        lp = policy(mb, mode="logprobs", temperature=0.7)
        pos = 0
        for i in mb.sample_ids:
            n = len(samples[i].response_ids) if mask[i] else 0
            out[i] = lp[pos:pos + n]
            pos += n
    return out


def test_shared_rows_give_the_same_logprobs(policy):
    samples = _groups(policy.head.weight.shape[0])
    mask = [True] * len(samples)
    mask[5] = False
    with torch.no_grad():
        sep = _per_sample(policy, [collate(samples, b, 0, mask) for b in split_by_token_budget(samples, 40)], samples, mask)
        shared = _per_sample(policy, [collate_shared(samples, rows, 0, mask) for rows in split_shared(samples, 40)],
                             samples, mask)
    assert sorted(sep) == sorted(shared)
    for i in sep:
        assert shared[i].shape == sep[i].shape == (len(samples[i].response_ids) if mask[i] else 0,)
        torch.testing.assert_close(shared[i], sep[i], atol=1e-5, rtol=0)


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean"])
def test_shared_rows_give_the_same_loss_and_gradients(policy, agg):
    samples = _groups(policy.head.weight.shape[0], seed=1)
    mask = [True] * len(samples)
    loss_cfg = LossConfig(loss_agg_mode=agg)
    n_tok = float(sum(len(s.response_ids) for s in samples))

    def grads(mbs):
        policy.zero_grad()
        total = 0.0
        for mb in mbs:
            loss, _ = policy(mb, mode="loss", temperature=0.7, loss=loss_cfg, global_num_tokens=n_tok,
                             global_num_seqs=float(len(samples)))
            loss.backward()
            total += float(loss.detach())
        return total, {k: p.grad.clone() for k, p in policy.named_parameters() if p.grad is not None}

    loss_a, ga = grads([collate(samples, b, 0, mask) for b in split_by_token_budget(samples, 40)])
    loss_b, gb = grads([collate_shared(samples, rows, 0, mask) for rows in split_shared(samples, 40)])
    assert loss_a == pytest.approx(loss_b, abs=1e-5)
    assert ga.keys() == gb.keys() and len(ga) > 0
    for k in ga:
        scale = float(ga[k].abs().max()) + 1e-12
        torch.testing.assert_close(gb[k], ga[k], atol=1e-5 * scale, rtol=0, msg=k)


def test_check_shared_prompts(policy):
    assert check_shared_prompts(policy) is None
    policy.model.config._attn_implementation = "flash_attention_2"
    assert "flash_attention_2" in check_shared_prompts(policy)
