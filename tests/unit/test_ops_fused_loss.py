"""rl.ops.fused_policy_loss == rl.losses.policy_loss(naive logprobs): value, dL/dh, dL/dW, metrics.

Every loss option (LossConfig) and per-token input (LossInputs) of policy_loss that the fused op supports is
compared on the same inputs (float64, so any mismatch is a real one), with a response mask and a global token
count that differs from the local one (the micro-batch's share of a larger mini-batch).
"""

from __future__ import annotations

import dataclasses
from unittest import mock

import pytest
import torch

from rl.loss_config import LossConfig, LossInputs
from rl.losses import policy_loss
from rl.ops import fused_policy_loss, reference

N, V, H = 31, 263, 11
GLOBAL_TOKENS = 57.0


def batch(dtype=torch.float64, seed=0, n=N, v=V, hdim=H):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, hdim, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
    w = (torch.randn(v, hdim, generator=g, dtype=torch.float64) * 0.8).to(dtype).requires_grad_()
    y = torch.randint(0, v, (n,), generator=g)
    with torch.no_grad():
        lp, _ = naive_logprobs(h.double(), w.double(), y)
    t = {
        # old logprobs spread around the current ones so every clip branch (and the dual clip) occurs
        "old": lp + 0.4 * torch.randn(n, generator=g, dtype=torch.float64),
        "adv": torch.randn(n, generator=g, dtype=torch.float64),
        "mask": (torch.rand(n, generator=g) > 0.25).double(),
        "ref": lp + 0.3 * torch.randn(n, generator=g, dtype=torch.float64),
        "rollout": lp + 0.5 * torch.randn(n, generator=g, dtype=torch.float64),
        "isw": torch.rand(n, generator=g, dtype=torch.float64) * 1.5,
        "replayed": torch.arange(n) % 3 == 0,  # rows drawn from the replay buffer (tis_scope=replayed)
    }
    return h, w, y, t


OPTIONS = {
    "clip_higher": dict(eps_low=0.2, eps_high=0.28),
    "symmetric_clip": dict(eps_low=0.2, eps_high=0.2),
    "dual_clip": dict(clip_ratio_c=3.0),
    **{f"kl_{e}": dict(kl_coef=0.05, kl_estimator=e, ref_logprobs="ref")
       for e in ("k1", "k2", "k3", "abs", "k1+", "k2+", "k3+")},
    "kl_metric_only": dict(kl_coef=0.0, ref_logprobs="ref"),
    "entropy_bonus": dict(entropy_coef=0.01),
    "tis": dict(tis_level="token", tis_cap=2.0, rollout_logprobs="rollout"),
    "is_weights": dict(is_weights="isw"),
    "tis_replayed": dict(tis_level="token", tis_cap=1.2, tis_scope="replayed", rollout_logprobs="rollout",
                         replayed="replayed", is_weights="isw"),
    "everything": dict(clip_ratio_c=3.0, kl_coef=0.1, ref_logprobs="ref", entropy_coef=0.02, tis_level="token",
                       tis_cap=1.5, rollout_logprobs="rollout", is_weights="isw"),
}
"""Keys of LossInputs name a tensor of `batch()`'s dict; every other key is a LossConfig field."""
INPUT_KEYS = {f.name for f in dataclasses.fields(LossInputs)}


def resolve(opts, t):
    return {k: (t[v] if k in INPUT_KEYS and isinstance(v, str) else v) for k, v in opts.items()}


def split(opts):
    """(LossConfig, per-token LossInputs fields) of resolved options."""
    return (LossConfig(**{k: v for k, v in opts.items() if k not in INPUT_KEYS}),
            {k: v for k, v in opts.items() if k in INPUT_KEYS})


def naive_logprobs(h, w, y, temperature=1.0):
    """Materialised logits: the oracle that rl.ops must reproduce."""
    logp_all = torch.log_softmax((h @ w.t()) / temperature, dim=-1)  # (N, V)
    return logp_all.gather(-1, y[:, None])[:, 0], -(logp_all.exp() * logp_all).sum(-1)


def unfused(h, w, y, t, temperature, opts):
    """The reference composition: naive per-token logprobs/entropy, then policy_loss on a (1, N) batch."""
    lp, ent = naive_logprobs(h, w, y, temperature)
    cfg, tensors = split(opts)
    inputs = LossInputs(t["old"], t["adv"], t["mask"], global_num_tokens=GLOBAL_TOKENS, **tensors)
    inputs = inputs.map(lambda v: v[None])  # (1, N): one row
    return policy_loss(lp[None], inputs, cfg, entropy=ent[None])


def fused(h, w, y, t, temperature, opts, **kw):
    cfg, tensors = split(opts)
    inputs = LossInputs(t["old"], t["adv"], t["mask"], global_num_tokens=GLOBAL_TOKENS, **tensors)
    return fused_policy_loss(h, w, y, inputs, cfg, temperature=temperature, compute_entropy=True, **kw)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("name", list(OPTIONS))
def test_matches_policy_loss(name, temperature):
    h, w, y, t = batch()
    opts = resolve(OPTIONS[name], t)
    loss0, m0 = unfused(h, w, y, t, temperature, opts)
    dh0, dw0 = torch.autograd.grad(loss0, [h, w])
    loss1, m1 = fused(h, w, y, t, temperature, opts, chunk_size=7)
    dh1, dw1 = torch.autograd.grad(loss1, [h, w])
    torch.testing.assert_close(loss1, loss0, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(dh1, dh0, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(dw1, dw0, atol=1e-12, rtol=1e-12)
    assert m1.keys() == m0.keys()
    for k in m0:
        assert m1[k] == pytest.approx(m0[k], abs=1e-12), k


def test_all_clip_branches_are_exercised():
    # Guard for the test above: the batch really hits clip-high, clip-low and the dual clip.
    h, w, y, t = batch()
    _, m = fused(h, w, y, t, 1.0, dict(clip_ratio_c=1.5))
    assert m["actor/pg_clipfrac_high"] > 0 and m["actor/pg_clipfrac_low"] > 0 and m["actor/pg_clipfrac_dual"] > 0


@pytest.mark.parametrize("chunk", [1, 7, N, None])
def test_float32_and_chunk_invariance(chunk):
    h, w, y, t = batch(torch.float32, seed=1)
    opts = resolve(OPTIONS["everything"], t)
    t32 = {k: (v.float() if v.is_floating_point() else v) for k, v in t.items()}
    loss0, _ = unfused(h, w, y, t32, 0.8, resolve(OPTIONS["everything"], t32))
    dh0, dw0 = torch.autograd.grad(loss0, [h, w])
    loss1, _ = fused(h, w, y, t, 0.8, opts, chunk_size=chunk)
    dh1, dw1 = torch.autograd.grad(loss1, [h, w])
    assert loss1.dtype == torch.float32 and dh1.dtype == dw1.dtype == torch.float32
    torch.testing.assert_close(loss1, loss0, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(dh1, dh0, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(dw1, dw0, atol=1e-6, rtol=1e-5)


def test_masked_and_zero_weight_rows_get_exactly_zero_gradient():
    h, w, y, t = batch(seed=2)
    t["old"][t["mask"] == 0] = float("nan")  # padding garbage never reaches the math: rows are dropped
    isw = t["isw"].clone()
    isw[:5] = 0.0  # TIS/replay weight 0: the pg gradient of those rows is exactly zero
    # A clip range wide enough that no valid row is clipped: every other valid row has a gradient.
    loss, _ = fused(h, w, y, t, 1.0, dict(is_weights=isw, eps_low=0.99, eps_high=100.0))
    dh, _ = torch.autograd.grad(loss, [h, w])
    assert torch.isfinite(loss)
    assert torch.all(dh[t["mask"] == 0] == 0)
    assert torch.all(dh[:5] == 0)
    assert torch.all(dh[5:][t["mask"][5:] != 0].abs().sum(-1) > 0)


def test_micro_batch_split_with_global_count_sums_to_full_batch():
    # Exact global token-mean: micro-batch losses/grads with the mini-batch token count add up exactly.
    h, w, y, t = batch(seed=3)
    n_tok = t["mask"].sum()
    full, _ = fused_policy_loss(h, w, y, LossInputs(t["old"], t["adv"], t["mask"]), LossConfig())
    g_full = torch.autograd.grad(full, [h, w])
    total, g_sum = 0.0, [torch.zeros_like(h), torch.zeros_like(w)]
    for part in (slice(0, 12), slice(12, N)):
        inputs = LossInputs(t["old"][part], t["adv"][part], t["mask"][part], global_num_tokens=n_tok)
        loss, _ = fused_policy_loss(h[part], w, y[part], inputs, LossConfig())
        dh, dw = torch.autograd.grad(loss, [h, w])
        total, g_sum = total + loss, [g_sum[0] + dh, g_sum[1] + dw]
    torch.testing.assert_close(total, full, atol=1e-12, rtol=1e-12)
    for a, b in zip(g_sum, g_full):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)


def test_no_gradient_work_without_grad():
    h, w, y, t = batch(seed=4)
    loss_ref, m_ref = fused(h, w, y, t, 1.0, {})
    # the config is built before the no_grad block, as at config load (LossConfig probes its term with autograd)
    cfg, inputs = LossConfig(), LossInputs(t["old"], t["adv"], t["mask"], global_num_tokens=GLOBAL_TOKENS)
    with mock.patch("rl.ops.fused_loss.chunk_grad", side_effect=AssertionError("gradient work under no_grad")):
        with torch.no_grad():
            loss, m = fused_policy_loss(h, w, y, inputs, cfg, compute_entropy=True)
        loss2, _ = fused_policy_loss(h.detach(), w.detach(), y, inputs, cfg, compute_entropy=True)
    assert not loss.requires_grad and not loss2.requires_grad
    torch.testing.assert_close(loss, loss_ref.detach(), atol=1e-12, rtol=1e-12)
    assert m == pytest.approx(m_ref)


def test_entropy_skipped_when_not_needed():
    h, w, y, t = batch(seed=5)
    with mock.patch("rl.ops.fused_loss.chunk_stats", wraps=reference.chunk_stats) as spy:
        _, m = fused_policy_loss(h, w, y, LossInputs(t["old"], t["adv"], t["mask"]), LossConfig())
    assert all(call.args[2] is False for call in spy.call_args_list)  # with_entropy=False
    assert "actor/entropy" not in m


def test_all_masked_micro_batch():
    # A micro-batch with no valid token (e.g. every response overlong-filtered): 0 loss, zero grads.
    h, w, y, t = batch(seed=9)
    inputs = LossInputs(t["old"], t["adv"], torch.zeros(N), global_num_tokens=10)
    loss, m = fused_policy_loss(h, w, y, inputs, LossConfig())
    dh, dw = torch.autograd.grad(loss, [h, w])
    assert loss.item() == 0.0 and m["actor/num_tokens"] == 0.0
    assert torch.all(dh == 0) and torch.all(dw == 0)


def test_upstream_scale_and_single_backward():
    h, w, y, t = batch(seed=6)
    loss, _ = fused(h, w, y, t, 1.0, {})
    dh1, dw1 = torch.autograd.grad(loss, [h, w])
    loss, _ = fused(h, w, y, t, 1.0, {})
    dh3, dw3 = torch.autograd.grad(3.0 * loss, [h, w], retain_graph=True)
    torch.testing.assert_close(dh3, 3 * dh1, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(dw3, 3 * dw1, atol=1e-12, rtol=1e-12)
    with pytest.raises(RuntimeError, match="twice"):
        torch.autograd.grad(loss, [h, w])


def test_tied_embeddings_accumulate():
    g = torch.Generator().manual_seed(7)
    v, hdim, n = 89, 9, 15
    base = torch.randn(v, hdim, generator=g, dtype=torch.float64)
    ids, y = torch.randint(0, v, (n,), generator=g), torch.randint(0, v, (n,), generator=g)
    old, adv = -torch.rand(n, generator=g, dtype=torch.float64) * 5, torch.randn(n, generator=g, dtype=torch.float64)
    mask = torch.ones(n, dtype=torch.float64)

    def emb_grad(use_fused):
        emb = torch.nn.Embedding(v, hdim, _weight=base.clone()).double()
        hidden = torch.tanh(emb(ids) * 1.3)  # the hidden states depend on the same matrix as the LM head
        cfg = LossConfig(entropy_coef=0.1)
        if use_fused:
            loss, _ = fused_policy_loss(hidden, emb.weight, y, LossInputs(old, adv), cfg, chunk_size=4)
        else:
            lp, ent = naive_logprobs(hidden, emb.weight, y)
            loss, _ = policy_loss(lp[None], LossInputs(old[None], adv[None], mask[None]), cfg, entropy=ent[None])
        loss.backward()
        return emb.weight.grad

    torch.testing.assert_close(emb_grad(True), emb_grad(False), atol=1e-12, rtol=1e-12)


def test_bf16_inputs():
    h, w, y, t = batch(seed=8, hdim=32)
    hb, wb = h.detach().bfloat16().requires_grad_(), w.detach().bfloat16().requires_grad_()
    h64, w64 = hb.detach().double().requires_grad_(), wb.detach().double().requires_grad_()
    opts = dict(kl_coef=0.05, ref_logprobs=t["ref"], entropy_coef=0.01)
    loss0, _ = fused(h64, w64, y, t, 1.0, opts)
    dh0, dw0 = torch.autograd.grad(loss0, [h64, w64])
    loss1, _ = fused(hb, wb, y, t, 1.0, opts)
    dh1, dw1 = torch.autograd.grad(loss1, [hb, wb])
    assert loss1.dtype == torch.float32 and dh1.dtype == dw1.dtype == torch.bfloat16
    assert loss1.item() == pytest.approx(loss0.item(), abs=1e-5)  # fp32 accumulation on bf16 values
    torch.testing.assert_close(dh1.double(), dh0, atol=1e-4, rtol=8e-3)
    torch.testing.assert_close(dw1.double(), dw0, atol=1e-4, rtol=8e-3)


@pytest.mark.parametrize("kw, match", [
    (dict(loss_agg_mode="seq-mean-token-mean"), "fused_loss=false"),
    (dict(ratio_level="sequence"), "GSPO"),
    (dict(tis_cap=2.0, tis_level="sequence", rollout_logprobs="old"), "fused_loss=false"),
    (dict(tis_cap=2.0, tis_level="token"), "rollout_logprobs"),
])
def test_unsupported_params(kw, match):
    h, w, y, t = batch()
    cfg, tensors = split(resolve(kw, t))
    with pytest.raises(ValueError, match=match):
        fused_policy_loss(h, w, y, LossInputs(t["old"], t["adv"], **tensors), cfg)
    with pytest.raises(ValueError, match=r"\(N,\)"):
        fused_policy_loss(h, w, y, LossInputs(t["old"][:3], t["adv"]), LossConfig())


@pytest.mark.parametrize("kw, match", [  # out-of-range values never reach the op: LossConfig rejects them by key
    (dict(clip_ratio_c=0.5), r"algorithm\.loss\.clip_ratio_c=0\.5: must be > 1 \(verl 3\.0, DAPO 10\.0\) or null"),
    (dict(kl_estimator="k9"), r"algorithm\.loss\.kl_estimator='k9': use one of k1"),
])
def test_invalid_params_rejected_by_loss_config(kw, match):
    with pytest.raises(ValueError, match=match):
        LossConfig(**kw)
