"""Triton kernels of rl.ops against the torch twin and an fp32 oracle (skipped without CUDA + Triton).

bf16 criterion: the kernel's error against an fp32 oracle (materialised fp32 logits on the fp32
originals of the inputs) must be no worse than ERR_FACTOR x the torch twin's own error on the same
bf16 inputs (plus a tiny floor), forward and backward, including Qwen2.5's V=151936.
"""

from __future__ import annotations

import pytest
import torch

from rl.loss_config import LossConfig, LossInputs
from rl.losses import policy_loss
from rl.ops import fused_policy_loss, token_logprobs_entropy
from rl.ops import logprob as logprob_mod

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
    pytest.mark.skipif(not logprob_mod.triton_available(), reason="needs triton"),
]

ERR_FACTOR = 2.0


@pytest.fixture(autouse=True)
def _no_tf32():
    # The oracle must be real fp32; the kernel follows the same switch for fp32 operands.
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = old


def make(n, v, hdim, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    h = torch.randn(n, hdim, device="cuda", generator=g)
    w = torch.randn(v, hdim, device="cuda", generator=g) * (1.0 / hdim**0.5) * 2.0
    y = torch.randint(0, v, (n,), device="cuda", generator=g)
    g1, g2 = torch.randn(n, device="cuda", generator=g), torch.randn(n, device="cuda", generator=g)
    return h, w, y, g1, g2


def naive(h, w, y, temperature=1.0):
    logp_all = torch.log_softmax((h.float() @ w.float().t()) / temperature, dim=-1)
    return logp_all.gather(-1, y[:, None])[:, 0], -(logp_all.exp() * logp_all).sum(-1)


def fwd_bwd(fn, h, w, y, g1, g2, dtype, **kw):
    h = h.detach().to(dtype).requires_grad_()
    w = w.detach().to(dtype).requires_grad_()
    lp, ent = fn(h, w, y, **kw)
    dh, dw = torch.autograd.grad((lp * g1 + ent * g2).sum(), [h, w])
    return [t.detach().float() for t in (lp, ent, dh, dw)]


def max_err(a, b):
    return (a - b).abs().max().item()


@pytest.mark.parametrize("n, v, hdim", [(1, 50, 16), (37, 1001, 96), (300, 32000, 128), (2000, 5000, 64)])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_fp32_kernel_matches_torch_twin(n, v, hdim, temperature):
    h, w, y, g1, g2 = make(n, v, hdim)
    kern = fwd_bwd(token_logprobs_entropy, h, w, y, g1, g2, torch.float32, temperature=temperature, impl="triton")
    ref = fwd_bwd(token_logprobs_entropy, h, w, y, g1, g2, torch.float32, temperature=temperature, impl="torch")
    for a, b in zip(kern, ref):
        torch.testing.assert_close(a, b, atol=2e-4, rtol=2e-4)


@pytest.mark.parametrize("n, v, hdim", [(64, 151936, 896), (1000, 151936, 512), (513, 49152, 576)])
def test_bf16_error_no_worse_than_torch_twin(n, v, hdim):
    h, w, y, g1, g2 = make(n, v, hdim, seed=1)
    oracle = fwd_bwd(naive, h, w, y, g1, g2, torch.float32, temperature=0.8)
    kern = fwd_bwd(token_logprobs_entropy, h, w, y, g1, g2, torch.bfloat16, temperature=0.8, impl="triton")
    twin = fwd_bwd(token_logprobs_entropy, h, w, y, g1, g2, torch.bfloat16, temperature=0.8, impl="torch")
    for name, k, t, o in zip(("logprob", "entropy", "dh", "dw"), kern, twin, oracle):
        floor = 1e-6 * (1.0 + o.abs().max().item())
        assert max_err(k, o) <= ERR_FACTOR * max_err(t, o) + floor, name


def test_backward_chunking_and_vocab_splits(monkeypatch):
    # A small dlogits budget forces several backward chunks (dW accumulated across them); N=3 forces
    # many vocab splits in the forward, N=4096 a single one.
    monkeypatch.setattr(logprob_mod, "DLOGITS_BUDGET_BYTES", 64 * 1000 * 4)
    for n in (3, 4096):
        h, w, y, g1, g2 = make(n, 1000, 64, seed=2)
        kern = fwd_bwd(token_logprobs_entropy, h, w, y, g1, g2, torch.float32, impl="triton")
        ref = fwd_bwd(token_logprobs_entropy, h, w, y, g1, g2, torch.float32, impl="torch")
        for a, b in zip(kern, ref):
            torch.testing.assert_close(a, b, atol=2e-4, rtol=2e-4)


def test_fused_policy_loss_triton_matches_unfused():
    n, v, hdim = 777, 32000, 128
    h, w, y, _, _ = make(n, v, hdim, seed=3)
    g = torch.Generator(device="cuda").manual_seed(4)
    with torch.no_grad():
        lp0, _ = token_logprobs_entropy(h, w, y, impl="torch")
    old = lp0 + 0.3 * torch.randn(n, device="cuda", generator=g)
    adv = torch.randn(n, device="cuda", generator=g)
    ref = lp0 + 0.2 * torch.randn(n, device="cuda", generator=g)
    mask = (torch.rand(n, device="cuda", generator=g) > 0.2).float()
    cfg = LossConfig(clip_ratio_c=3.0, kl_coef=0.05, entropy_coef=0.01)
    inputs = LossInputs(old, adv, mask, ref_logprobs=ref)

    hh, ww = h.clone().requires_grad_(), w.clone().requires_grad_()
    loss1, m1 = fused_policy_loss(hh, ww, y, inputs, cfg, impl="triton")
    g_fused = torch.autograd.grad(loss1, [hh, ww])
    lp, ent = token_logprobs_entropy(hh, ww, y, impl="torch")
    loss0, m0 = policy_loss(lp[None], inputs.map(lambda t: t[None]), cfg, entropy=ent[None])
    g_ref = torch.autograd.grad(loss0, [hh, ww])
    torch.testing.assert_close(loss1, loss0, atol=1e-5, rtol=1e-4)
    for a, b in zip(g_fused, g_ref):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-3)
    assert m1["actor/pg_clipfrac"] == pytest.approx(m0["actor/pg_clipfrac"], abs=1e-3)
    assert torch.all(g_fused[0][mask == 0] == 0)
