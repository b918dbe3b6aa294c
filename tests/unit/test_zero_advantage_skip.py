"""The trainer skips forward/backward of zero-advantage samples (no KL, no entropy term) but keeps
their tokens in the global counts. That is exact: the loss and the gradient are unchanged."""

from __future__ import annotations

import pytest
import torch

from rl.loss_config import LossConfig, LossInputs
from rl.losses import policy_loss


@pytest.mark.parametrize("tis_scope", ["all", "replayed"])  # replayed: the trainer's replay correction (+ PER)
@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"])
def test_dropping_zero_advantage_rows_keeps_loss_and_grad(mode, tis_scope):
    g = torch.Generator().manual_seed(0)
    B, T = 6, 5
    logprobs = (-torch.rand(B, T, generator=g) * 3).requires_grad_(True)
    old = logprobs.detach() + 0.3 * torch.randn(B, T, generator=g)  # off-policy: ratios != 1, some clipped
    rollout = old + 0.1 * torch.randn(B, T, generator=g)
    adv = torch.tensor([1.0, 0.0, -0.5, 0.0, 2.0, -1.0])
    mask = (torch.rand(B, T, generator=g) > 0.2).float()
    n_tok, n_seq = mask.sum(), (mask.sum(-1) > 0).sum()
    cfg = LossConfig(loss_agg_mode=mode, clip_ratio_c=3.0, tis_level="token", tis_cap=2.0, tis_scope=tis_scope)
    assert cfg.zero_advantage_is_zero  # the trainer's condition for skipping these rows
    replay = {}
    if tis_scope == "replayed":  # rows 1, 2 and 4 were replayed, with PER weights
        replayed = torch.tensor([False, True, True, False, True, False])[:, None].expand(B, T)
        replay = dict(replayed=replayed, is_weights=torch.where(replayed, 0.7, 1.0))
    inputs = LossInputs(old, adv, mask, rollout_logprobs=rollout, global_num_tokens=n_tok, global_num_seqs=n_seq,
                        **replay)
    full, _ = policy_loss(logprobs, inputs, cfg)
    (g_full,) = torch.autograd.grad(full, logprobs)

    keep = adv != 0
    part, _ = policy_loss(logprobs[keep], inputs.map(lambda v: v[keep]), cfg)
    (g_part,) = torch.autograd.grad(part, logprobs)
    assert part.item() == pytest.approx(full.item(), abs=1e-7)
    assert torch.allclose(g_part, g_full, atol=1e-7)
    assert torch.all(g_full[~keep] == 0)
