"""Sample.response_mask, the loss mask of a multi-turn rollout: a tool's output tokens are context, never a loss term.

With a mask, the packed (trained) tokens are the sampled ones only, in both micro-batch layouts; their logprobs
are the unmasked sample's at those positions; the loss and its gradients are those of the unmasked sample with a
zero advantage on the tool tokens and the token-mean over the sampled tokens. Error model: the body's forward is
the same, but the LM head and log-softmax run on the gathered tokens only, a matrix of another shape, and the
shared-prompt layout changes the body's shapes too: the same fp32 products summed in another order, a few ulps
of O(1)-O(10) values, so 1e-5 absolute on logprobs and losses and 1e-5 relative on gradients, as in
test_shared_prompts.py.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from transformers import AutoModelForCausalLM

from rl.batch import collate, collate_shared, split_by_token_budget, split_shared
from rl.loss_config import LossConfig
from rl.policy import PolicyModule
from rl.types import Sample

# response: 3 sampled tokens, 2 tool tokens, 2 sampled tokens
MASK = [True, True, True, False, False, True, True]


def _sample(prompt, response, mask=None, adv=1.0, sid=0):
    return Sample(sid, 0, prompt, response, [-0.1 * (k + 1) for k in range(len(response))], "stop", 0,
                  advantage=adv, response_mask=mask)


def test_collate_trains_the_sampled_tokens_and_keeps_tool_tokens_as_context():
    s = _sample([1, 2], [10, 11, 12, 20, 21, 13, 14], MASK, adv=0.5)
    mb = collate([s], [0], pad_id=0, loss_mask=[True])
    assert mb.input_ids.tolist() == [[1, 2, 10, 11, 12, 20, 21, 13, 14]]  # the whole trajectory is the input
    assert mb.targets.tolist() == [10, 11, 12, 13, 14]
    assert mb.token_index.tolist() == [1, 2, 3, 6, 7]  # position c predicts token c+1
    flat = mb.input_ids.reshape(-1)
    assert torch.equal(flat[mb.token_index + 1], mb.targets)
    assert mb.rollout_logprobs.tolist() == pytest.approx([-0.1, -0.2, -0.3, -0.6, -0.7])
    assert mb.num_tokens == 5 and mb.num_seqs == 1 and mb.advantages.tolist() == [0.5] * 5
    assert s.num_trained_tokens == 5 and s.trained_positions() == [0, 1, 2, 5, 6]


def test_collate_shared_trains_the_same_tokens():
    prompt = [1, 2, 3]
    samples = [_sample(prompt, [10, 11, 12, 20, 21, 13, 14], MASK, sid=0),
               _sample(prompt, [30, 31], [False, True], sid=1),  # a trajectory that opens with tool output
               _sample(prompt, [40], None, sid=2)]
    mb = collate_shared(samples, [[0, 1, 2]], pad_id=0, loss_mask=[True, True, True])
    flat = mb.input_ids.reshape(-1)
    assert mb.targets.tolist() == [10, 11, 12, 13, 14, 31, 40]
    assert mb.seq_index.tolist() == [0, 0, 0, 0, 0, 1, 2]
    # the prompt's last position (2) predicts the first token of sample 0, whose own tokens follow it, and of 2
    assert torch.equal(flat[mb.token_index[:-1] + 1], mb.targets[:-1])
    assert mb.token_index.tolist()[0] == 2 and mb.token_index.tolist()[-1] == 2
    assert mb.token_index.tolist()[5] == 10  # sample 1's token 31: predicted by its own token 30 (column 10)


def test_a_mask_of_the_wrong_length_is_refused():
    with pytest.raises(ValueError, match="response_mask of 2 flags for 3 response tokens"):
        _sample([1], [5, 6, 7], [True, False])


@pytest.fixture
def policy(tiny_model_dir):
    return PolicyModule(AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32))


def _trajectories(vocab: int) -> list[Sample]:
    g = torch.Generator().manual_seed(3)
    out = []
    for k in range(6):
        prompt = torch.randint(3, vocab, (4,), generator=g).tolist() if k % 3 else [5, 6, 7, 8]
        n = 5 + k
        mask = [bool(m) for m in (torch.rand(n, generator=g) > 0.4).tolist()]
        mask[0] = True
        out.append(_sample(prompt, torch.randint(3, vocab, (n,), generator=g).tolist(), mask,
                           adv=float(torch.randn(1, generator=g)), sid=k))
    return out


def test_masked_logprobs_are_the_unmasked_ones_at_the_sampled_positions(policy):
    samples = _trajectories(policy.head.weight.shape[0])
    plain = [replace(s, response_mask=None) for s in samples]
    keep = [True] * len(samples)
    with torch.no_grad():
        full = policy(collate(plain, list(range(len(plain))), 0, keep), mode="logprobs", temperature=0.7)
        masked = policy(collate(samples, list(range(len(samples))), 0, keep), mode="logprobs", temperature=0.7)
        shared = torch.cat([policy(collate_shared(samples, rows, 0, keep), mode="logprobs", temperature=0.7)
                            for rows in split_shared(samples, 10_000)])
    picked, pos = [], 0
    for s in samples:
        picked += [pos + k for k in s.trained_positions()]
        pos += len(s.response_ids)
    torch.testing.assert_close(masked, full[picked], atol=1e-5, rtol=0)
    shared_order = [i for rows in split_shared(samples, 10_000) for row in rows for i in row]
    by_sample, pos = {}, 0
    for i in shared_order:
        n = samples[i].num_trained_tokens
        by_sample[i], pos = shared[pos:pos + n], pos + n
    torch.testing.assert_close(torch.cat([by_sample[i] for i in range(len(samples))]), masked, atol=1e-5, rtol=0)


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean"])
def test_tool_tokens_add_nothing_to_the_loss_or_its_gradient(policy, agg):
    samples = _trajectories(policy.head.weight.shape[0])
    ids, keep = list(range(len(samples))), [True] * len(samples)
    n_tok = float(sum(s.num_trained_tokens for s in samples))
    loss_cfg = LossConfig(loss_agg_mode=agg)

    # reference: every token packed, the tool tokens' advantage 0, and (seq-mean) each sequence's mean over its
    # sampled tokens only, written out per token as the weight 1/n_sampled of its sequence
    ref = collate([replace(s, response_mask=None) for s in samples], ids, 0, keep)
    sampled = torch.tensor([m for s in samples for m in s.response_mask])
    ref = replace(ref, advantages=torch.where(sampled, ref.advantages, torch.zeros_like(ref.advantages)))

    def grads(mb, **kw):
        policy.zero_grad()
        loss, _ = policy(mb, mode="loss", temperature=0.7, loss=loss_cfg, global_num_tokens=n_tok,
                         global_num_seqs=float(len(samples)), **kw)
        loss.backward()
        return float(loss.detach()), {k: p.grad.clone() for k, p in policy.named_parameters() if p.grad is not None}

    loss_m, gm = grads(collate(samples, ids, 0, keep))
    if agg == "token-mean":
        loss_r, gr = grads(ref)
        assert loss_m == pytest.approx(loss_r, abs=1e-5)
        for k in gr:
            scale = float(gr[k].abs().max()) + 1e-12
            torch.testing.assert_close(gm[k], gr[k], atol=1e-5 * scale, rtol=0, msg=k)
    else:
        # per sequence the mean runs over its sampled tokens: each sample alone, token-mean over its own count,
        # averaged over sequences, is the same objective
        total, acc = 0.0, None
        for i, s in enumerate(samples):
            policy.zero_grad()
            loss, _ = policy(collate(samples, [i], 0, keep), mode="loss", temperature=0.7,
                             loss=LossConfig(loss_agg_mode="token-mean"),
                             global_num_tokens=float(s.num_trained_tokens), global_num_seqs=1.0)
            (loss / len(samples)).backward()
            total += float(loss.detach()) / len(samples)
            g = {k: p.grad.clone() for k, p in policy.named_parameters() if p.grad is not None}
            acc = g if acc is None else {k: acc[k] + g[k] for k in acc}
        assert loss_m == pytest.approx(total, abs=1e-5)
        for k in acc:
            scale = float(acc[k].abs().max()) + 1e-12
            torch.testing.assert_close(gm[k], acc[k], atol=1e-5 * scale, rtol=0, msg=k)
