"""rl.ops.token_logprobs_entropy (torch path) against materialised logits (docs/fused_ops.md, "The math").

The oracle is the naive path: logits = h @ W.T / T, log_softmax, gather, -(p log p).sum. Gradients are
compared for a loss Σ g1·logp + g2·H with random upstream grads, so both backward terms are exercised.
"""

from __future__ import annotations

import math

import pytest
import torch

from rl.ops import token_logprobs_entropy
from rl.ops.logprob import resolve_impl


def naive(h, w, y, temperature=1.0):
    logp_all = torch.log_softmax((h @ w.t()) / temperature, dim=-1)  # (N, V)
    return logp_all.gather(-1, y[:, None])[:, 0], -(logp_all.exp() * logp_all).sum(-1)


def make(n, v, hdim, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, hdim, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
    w = (torch.randn(v, hdim, generator=g, dtype=torch.float64) * 0.7).to(dtype).requires_grad_()
    y = torch.randint(0, v, (n,), generator=g)
    g1, g2 = torch.randn(n, generator=g, dtype=torch.float64), torch.randn(n, generator=g, dtype=torch.float64)
    return h, w, y, g1, g2


def fwd_bwd(fn, h, w, y, g1, g2, **kw):
    lp, ent = fn(h, w, y, **kw)
    dh, dw = torch.autograd.grad((lp * g1.to(lp.dtype) + ent * g2.to(ent.dtype)).sum(), [h, w])
    return lp.detach(), ent.detach(), dh, dw


def test_worked_vector_6_5():
    # h=[1,0], W rows e1, e2, e1+e2, y=2: z=[1,0,1], lse=1.861995, p=[.422319,.155362,.422319].
    h = torch.tensor([[1.0, 0.0]], dtype=torch.float64, requires_grad=True)
    w = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=torch.float64, requires_grad=True)
    y = torch.tensor([2])
    lp, ent = token_logprobs_entropy(h, w, y, chunk_size=1)
    assert lp.item() == pytest.approx(-0.861995, abs=1e-6)
    assert ent.item() == pytest.approx(1.017357, abs=1e-6)
    # L = -2 logp + 0.5 H: dL/dz = [0.811831, 0.376337, -1.188169]; dL/dh = dL/dz @ W, dL/dW = dL/dz^T h.
    dh, dw = torch.autograd.grad((-2 * lp + 0.5 * ent).sum(), [h, w])
    torch.testing.assert_close(dh, torch.tensor([[-0.376337, -0.811831]], dtype=torch.float64), atol=1e-6, rtol=0)
    expect_dw = torch.tensor([[0.811831, 0.0], [0.376337, 0.0], [-1.188169, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(dw, expect_dw, atol=1e-6, rtol=0)
    lp2, _ = token_logprobs_entropy(h, w, y, temperature=2.0)
    assert lp2.item() == pytest.approx(-0.958020, abs=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("chunk", [1, 7, None])
def test_float64_matches_naive(temperature, chunk):
    h, w, y, g1, g2 = make(37, 1001, 19)
    ref = fwd_bwd(naive, h, w, y, g1, g2, temperature=temperature)
    out = fwd_bwd(token_logprobs_entropy, h, w, y, g1, g2, temperature=temperature, chunk_size=chunk)
    for a, b in zip(out, ref):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_float32_matches_float64_oracle(temperature):
    h, w, y, g1, g2 = make(29, 3001, 33)
    ref = fwd_bwd(naive, h, w, y, g1, g2, temperature=temperature)
    h32, w32 = h.detach().float().requires_grad_(), w.detach().float().requires_grad_()
    out = fwd_bwd(token_logprobs_entropy, h32, w32, y, g1, g2, temperature=temperature, chunk_size=7)
    assert all(t.dtype == torch.float32 for t in out)
    for a, b in zip(out, ref):
        torch.testing.assert_close(a.double(), b, atol=1e-5, rtol=1e-5)


def fp32_error_bounds(h, w, y, g1, g2, temperature):
    """Error bounds of fp32 (lp, entropy, dL/dh, dL/dW) against the fp64 oracle, from a first-order
    rounding-error analysis: a sum of n terms in any order errs by at most γ̃_n·Σ|terms| (and a dot product
    likewise), with the probabilistic constant of Higham & Mary (SIAM J. Sci. Comput. 41(5), 2019, Thm 2.4)
    γ̃_n(λ) = exp(λ·√n·u + n·u²/(1 − u)) − 1, u = 2^-24, λ = 8 (each bound fails with probability below
    ~1e-13 per term under the model). Rounding the inputs to fp32 adds two roundings to every product.
    The bounds depend on the data only, so they hold on any CPU, thread count or GEMM blocking."""
    u, lam = 2.0 ** -24, 8.0
    gamma = lambda n: math.expm1(lam * math.sqrt(n) * u + n * u * u / (1 - u))  # noqa: E731
    (n, hdim), v = h.shape, w.shape[0]
    h, w, t = h.detach().double(), w.detach().double(), temperature
    z = h @ w.t() / t  # (n, V)
    lse = torch.logsumexp(z, -1, keepdim=True)
    p = (z - lse).exp()
    ent = lse[:, 0] - (p * z).sum(-1)
    dz_abs = (h.abs() @ w.abs().t()) / t * gamma(hdim + 2)  # |δz| per logit
    dz_max = dz_abs.max(-1).values  # (n,)
    d_lse = dz_max + gamma(v)  # log of a sum of V positive terms, each off by exp(±δz)
    d_lp = dz_max + d_lse
    d_p = p * (dz_max + d_lse)[:, None]  # relative error of every probability
    d_ent = d_lse + (p * dz_abs + d_p * z.abs()).sum(-1) + gamma(v) * (p * z.abs()).sum(-1)
    onehot = torch.zeros_like(p).scatter_(1, y[:, None], 1.0)
    centred = z - lse + ent[:, None]  # z − E_p[z]
    dz = g1[:, None] * (onehot - p) - g2[:, None] * p * centred  # dL/dz
    d_dz = g1.abs()[:, None] * d_p + g2.abs()[:, None] * (d_p * centred.abs()
                                                         + p * (dz_abs + d_lse[:, None] + d_ent[:, None]))
    d_dh = (gamma(v + 1) * dz.abs() @ w.abs() + d_dz @ w.abs()) / t
    d_dw = (gamma(n + 1) * dz.abs().t() @ h.abs() + d_dz.t() @ h.abs()) / t
    return d_lp, d_ent, d_dh, d_dw


def test_qwen_vocab_151936_float32():
    # Full Qwen2.5 vocabulary (37 vocab tiles + a ragged one), few tokens so the naive oracle stays small.
    h, w, y, g1, g2 = make(5, 151936, 8, seed=1)
    ref = fwd_bwd(naive, h, w, y, g1, g2, temperature=0.7)
    bounds = fp32_error_bounds(h, w, y, g1, g2, 0.7)
    h32, w32 = h.detach().float().requires_grad_(), w.detach().float().requires_grad_()
    for chunk in (1, 3, None):
        out = fwd_bwd(token_logprobs_entropy, h32, w32, y, g1, g2, temperature=0.7, chunk_size=chunk)
        for name, a, b, bound in zip(("logprob", "entropy", "dh", "dw"), out, ref, bounds):
            err = (a.double() - b).abs()
            assert bool((err <= bound + 1e-12).all()), (name, chunk, float(err.max()), float(bound.min()))


def test_chunk_size_invariance_float32():
    h, w, y, g1, g2 = make(23, 517, 16, dtype=torch.float32, seed=2)
    outs = [fwd_bwd(token_logprobs_entropy, h, w, y, g1, g2, chunk_size=c) for c in (1, 7, 23)]
    for other in outs[1:]:
        for a, b in zip(other, outs[0]):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)  # GEMM blocking differs per chunk


def test_masked_rows_get_exactly_zero_gradient():
    h, w, y, g1, g2 = make(17, 300, 12)
    keep = torch.rand(17, generator=torch.Generator().manual_seed(3)) > 0.4
    lp, ent = token_logprobs_entropy(h, w, y, chunk_size=5)
    # policy_loss masks with where(mask, L * m, 0): masked rows send exactly zero upstream grads.
    loss = torch.where(keep, lp * g1 + ent * g2, torch.zeros_like(lp)).sum()
    dh, dw = torch.autograd.grad(loss, [h, w])
    assert torch.all(dh[~keep] == 0)
    # dW only sees the valid rows.
    hv = h.detach()[keep].requires_grad_()
    _, _, _, dw_valid = fwd_bwd(token_logprobs_entropy, hv, w, y[keep], g1[keep], g2[keep])
    torch.testing.assert_close(dw, dw_valid, atol=1e-12, rtol=1e-12)


def test_without_entropy_and_unused_entropy():
    h, w, y, g1, _ = make(11, 200, 9)
    lp, ent = token_logprobs_entropy(h, w, y, with_entropy=False)
    assert ent is None
    lp_ref, _ = naive(h, w, y)
    torch.testing.assert_close(lp, lp_ref, atol=1e-12, rtol=1e-12)
    dh, dw = torch.autograd.grad((lp * g1).sum(), [h, w])
    lp2, _ = token_logprobs_entropy(h, w, y)  # entropy computed but not in the loss: its grad is None
    dh2, dw2 = torch.autograd.grad((lp2 * g1).sum(), [h, w])
    torch.testing.assert_close(dh, dh2, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(dw, dw2, atol=1e-12, rtol=1e-12)


def test_tied_embeddings_accumulate():
    # The LM head is the input embedding: the op's dW must add to the embedding-lookup gradient.
    g = torch.Generator().manual_seed(4)
    v, hdim, n = 97, 10, 13
    base = torch.randn(v, hdim, generator=g, dtype=torch.float64)
    mix = torch.randn(hdim, hdim, generator=g, dtype=torch.float64)
    ids = torch.randint(0, v, (n,), generator=g)
    y = torch.randint(0, v, (n,), generator=g)

    def grads(fn):
        emb = torch.nn.Embedding(v, hdim, _weight=base.clone()).double()
        a = mix.clone().requires_grad_()
        hidden = torch.tanh(emb(ids) @ a)  # (n, H), depends on the embedding too
        lp, ent = fn(hidden, emb.weight, y)
        (lp.sum() - 0.3 * ent.sum()).backward()
        return emb.weight.grad, a.grad

    for got, exp in zip(grads(lambda h, w, t: token_logprobs_entropy(h, w, t, chunk_size=4)), grads(naive)):
        torch.testing.assert_close(got, exp, atol=1e-12, rtol=1e-12)


def test_bf16_inputs_accumulate_in_fp32():
    h, w, y, g1, g2 = make(19, 1500, 64, seed=5)
    hb, wb = h.detach().bfloat16().requires_grad_(), w.detach().bfloat16().requires_grad_()
    # Oracle: fp64 on the very same (bf16-rounded) values, so only the op's own error remains.
    ref = fwd_bwd(naive, hb.detach().double().requires_grad_(), wb.detach().double().requires_grad_(), y, g1, g2)
    lp, ent, dh, dw = fwd_bwd(token_logprobs_entropy, hb, wb, y, g1, g2, chunk_size=8)
    assert lp.dtype == ent.dtype == torch.float32 and dh.dtype == dw.dtype == torch.bfloat16
    torch.testing.assert_close(lp.double(), ref[0], atol=1e-4, rtol=1e-5)  # fp32 accumulation, not bf16
    torch.testing.assert_close(ent.double(), ref[1], atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(dh.double(), ref[2], atol=1e-3, rtol=8e-3)  # one bf16 rounding of the result
    torch.testing.assert_close(dw.double(), ref[3], atol=1e-3, rtol=8e-3)
    # Materialised bf16 logits (the naive bf16 path) are far less accurate than fp32 accumulation.
    lp_bf16, _ = naive(hb.detach(), wb.detach(), y)
    assert (lp.double() - ref[0]).abs().max() < 0.1 * (lp_bf16.double() - ref[0]).abs().max()


def test_no_grad_and_frozen_inputs():
    h, w, y, _, _ = make(9, 120, 7)
    with torch.no_grad():
        lp, ent = token_logprobs_entropy(h, w, y)
    lp_ref, ent_ref = naive(h, w, y)
    torch.testing.assert_close(lp, lp_ref.detach(), atol=1e-12, rtol=1e-12)
    assert not lp.requires_grad
    w_frozen = w.detach()  # e.g. a frozen LM head: only dL/dh
    lp, _ = token_logprobs_entropy(h, w_frozen, y)
    (dh,) = torch.autograd.grad(lp.sum(), [h])
    (dh_ref,) = torch.autograd.grad(naive(h, w_frozen, y)[0].sum(), [h])
    torch.testing.assert_close(dh, dh_ref, atol=1e-12, rtol=1e-12)


def test_impl_dispatch_and_errors():
    assert resolve_impl("auto", torch.device("cpu")) == "torch"
    assert resolve_impl("auto", torch.device("cuda"), torch.float64) == "torch"  # tl.dot has no fp64
    with pytest.raises(RuntimeError, match="float64"):
        resolve_impl("triton", torch.device("cuda"), torch.float64)
    h, w, y, _, _ = make(4, 10, 3)
    with pytest.raises(RuntimeError, match="impl='triton' needs CUDA"):
        token_logprobs_entropy(h, w, y, impl="triton")
    with pytest.raises(ValueError, match="impl="):
        token_logprobs_entropy(h, w, y, impl="cuda")
    with pytest.raises(ValueError, match="weight"):
        token_logprobs_entropy(h, w[:, :2], y)
    with pytest.raises(ValueError, match="targets"):
        token_logprobs_entropy(h, w, y[:3])
    with pytest.raises(ValueError, match="temperature"):
        token_logprobs_entropy(h, w, y, temperature=0.0)
    with pytest.raises(ValueError, match="chunk_size"):
        token_logprobs_entropy(h, w, y, chunk_size=0)
