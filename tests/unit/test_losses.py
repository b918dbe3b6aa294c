"""rl/losses.py: worked vectors (clipped loss, KL, agg_loss modes, TIS), gradients, gradcheck, GSPO, TIS, edge
cases, micro-batch × grad-accumulation invariance, and the config -> policy_loss mapping."""

from __future__ import annotations

import inspect
import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from launch.schema_algorithm import AlgorithmConfig, LossConfig
from rl.losses import AGG_MODES, agg_loss, kl_penalty, policy_loss, tis_weights, token_loss_terms

ATOL = 1e-5
D = torch.float64


def t(x, dtype=D):
    return torch.tensor(x, dtype=dtype)


def close(actual, expected, atol=ATOL):
    torch.testing.assert_close(actual.detach().to(D), t(expected), atol=atol, rtol=0)


# ----------------------------------------------------------------------------- per-token clipped loss

# rows: A, r, L_tok for (ε_low, ε_high, c) = (0.2,0.2,3), (0.2,0.28,3), (0.2,0.28,10), ∂L/∂ℓ^θ at (0.2,0.28,3)
CLIP_TABLE = [
    (+1, 1.5, -1.2, -1.28, -1.28, 0.0),  # A>0, r above 1+ε_high: clipped at −A(1+ε_high), no gradient
    (+1, 1.1, -1.1, -1.1, -1.1, -1.1),  # inside the range: −A·r, gradient −A·r
    (+1, 0.5, -0.5, -0.5, -0.5, -0.5),  # A>0, r low: min picks the unclipped −A·r (pessimistic)
    (-1, 0.5, 0.8, 0.8, 0.8, 0.0),  # A<0, r below 1−ε_low: clipped at |A|(1−ε_low)
    (-1, 1.5, 1.5, 1.5, 1.5, 1.5),  # A<0, r high but < c: unclipped |A|·r, gradient |A|·r
    (-1, 4.0, 3.0, 3.0, 4.0, 0.0),  # A<0, r > c=3: dual clip caps at |A|·c; with c=10 still |A|·r
    (-1, 10.0, 3.0, 3.0, 10.0, 0.0),
    (0, 2.0, 0.0, 0.0, 0.0, 0.0),  # A=0: no signal
]


@pytest.mark.parametrize("a, r, l1, l2, l3, grad", CLIP_TABLE)
def test_clipped_surrogate_table(a, r, l1, l2, l3, grad):
    logp = t([math.log(r)]).requires_grad_()
    old, adv = t([0.0]), t([float(a)])
    for (el, eh, c), want in zip([(0.2, 0.2, 3.0), (0.2, 0.28, 3.0), (0.2, 0.28, 10.0)], (l1, l2, l3)):
        loss, _ = token_loss_terms(logp, old, adv, eps_low=el, eps_high=eh, clip_ratio_c=c)
        close(loss, [want])
    loss, stats = token_loss_terms(logp, old, adv, eps_low=0.2, eps_high=0.28, clip_ratio_c=3.0)
    loss.sum().backward()
    close(logp.grad, [grad])
    assert stats["clipped_high"].item() == float(a > 0 and r > 1.28)
    assert stats["clipped_low"].item() == float(a < 0 and r < 0.8)
    assert stats["dual_clipped"].item() == float(a < 0 and r > 3.0)


def test_token_loss_terms_is_elementwise_over_any_shape():
    g = torch.Generator().manual_seed(1)
    shape = (2, 3, 4)
    lp, old, ref = (torch.randn(shape, generator=g, dtype=D) * 0.3 - 1 for _ in range(3))
    adv = torch.randn(shape, generator=g, dtype=D)
    w, ent = torch.rand(shape, generator=g, dtype=D), torch.rand(shape, generator=g, dtype=D)
    kw = dict(clip_ratio_c=3.0, ref_logprobs=ref, kl_coef=0.1, is_weights=w, entropy=ent, entropy_coef=0.01)
    full, stats = token_loss_terms(lp, old, adv, **kw)
    assert full.shape == shape and all(v.shape == shape for v in stats.values())
    # L_tok = w·pg + β·kl − c_H·H, and each element only depends on its own inputs
    torch.testing.assert_close(full, w * stats["pg"] + 0.1 * stats["kl"] - 0.01 * ent)
    flat, _ = token_loss_terms(lp.flatten(), old.flatten(), adv.flatten(),
                               **{k: (v.flatten() if torch.is_tensor(v) else v) for k, v in kw.items()})
    torch.testing.assert_close(flat, full.flatten())


# ----------------------------------------------------------------------------- KL estimators

KL_TABLE = [  # π_θ, π_ref, k1, k2, k3, ∂k3/∂ℓ^θ = 1 − π_ref/π_θ
    (0.5, 0.25, 0.693147, 0.240227, 0.193147, 0.5),
    (0.25, 0.5, -0.693147, 0.240227, 0.306853, -1.0),
    (0.3, 0.3, 0.0, 0.0, 0.0, 0.0),
    (0.9, 0.1, 2.197225, 2.413898, 1.308336, 0.888889),
]


@pytest.mark.parametrize("p, p_ref, k1, k2, k3, dk3", KL_TABLE)
def test_kl_estimators(p, p_ref, k1, k2, k3, dk3):
    lp, ref = t([math.log(p)]).requires_grad_(), t([math.log(p_ref)])
    close(kl_penalty(lp, ref, "k1"), [k1])  # log(π/π_ref)
    close(kl_penalty(lp, ref, "abs"), [abs(k1)])
    close(kl_penalty(lp, ref, "k2"), [k2])  # ½ k1²
    kl3 = kl_penalty(lp, ref, "k3")  # π_ref/π − log(π_ref/π) − 1
    close(kl3, [k3])
    kl3.sum().backward()
    close(lp.grad, [dk3])
    # straight-through "+": value of kN, gradient of k2 = ℓ^θ − ℓ^ref = k1
    for est, value in (("k1+", k1), ("k2+", k2), ("k3+", k3)):
        lp.grad = None
        kl = kl_penalty(lp, ref, est)
        close(kl, [value])
        kl.sum().backward()
        close(lp.grad, [k1])


def test_k3_is_clamped_and_unknown_estimator_rejected():
    # ℓ^ref − ℓ^θ = 30 is clamped to 20, and exp(20) − 21 is clamped to 10 (verl low_var_kl)
    assert kl_penalty(t([-30.0]), t([0.0]), "k3").item() == 10.0
    with pytest.raises(ValueError, match="unknown kl_estimator 'k4'"):
        kl_penalty(t([0.0]), t([0.0]), "k4")


# ----------------------------------------------------------------------------- end-to-end mini batch

MASK = [[1, 1, 0], [1, 1, 1]]
P_OLD = [[0.5, 0.4, 1.0], [0.3, 0.6, 0.2]]  # padding slot (0, 2) holds prob 1 (logprob 0), any finite value
P_THETA = [[0.7, 0.44, 1.0], [0.3, 0.5, 0.3]]
P_REF = [[0.5, 0.5, 1.0], [0.25, 0.6, 0.2]]


def mini_batch():
    logp = t(P_THETA).log().requires_grad_()
    # rewards [1, 0]: mean 0.5, ddof=1 std 0.707107 -> Â = ±0.707106 (eps=1e-6)
    adv = t([0.5, -0.5]) / (math.sqrt(0.5) + 1e-6)
    return logp, t(P_OLD).log(), adv, t(MASK), t(P_REF).log()


def test_end_to_end_grpo():
    logp, old, adv, mask, ref = mini_batch()
    loss_tok, stats = token_loss_terms(logp, old, adv[:, None].expand(2, 3), eps_high=0.2)
    # ratios π_θ/π_old = [[1.4, 1.1], [1.0, 0.833333, 1.5]]; (0,0) clipped at 1.2 -> −0.707106·1.2 = −0.848527
    close(stats["ratio"] * mask, [[1.4, 1.1, 0], [1.0, 0.833333, 1.5]])
    close(loss_tok * mask, [[-0.848527, -0.777816, 0], [0.707106, 0.589255, 1.060659]])
    close(kl_penalty(logp, ref, "k3") * mask, [[0.050758, 0.008530, 0], [0.015655, 0.017678, 0.072132]])
    # seq-mean-token-mean: ((−0.848527−0.777816)/2 + (0.707106+0.589255+1.060659)/3)/2 = −0.013749,
    # plus 0.04 · ((0.050758+0.008530)/2 + (0.015655+0.017678+0.072132)/3)/2 = 0.001296 -> −0.012453
    loss, metrics = policy_loss(logp, old, adv, mask, eps_high=0.2, loss_agg_mode="seq-mean-token-mean",
                                ref_logprobs=ref, kl_coef=0.04)
    close(loss, -0.012453)
    loss.backward()
    # token (0,0) is clipped so only KL flows: 0.04·(1 − 0.5/0.7)/(2·2) = 0.002857
    close(logp.grad, [[0.002857, -0.195818, 0.0], [0.118962, 0.096876, 0.178999]])
    assert metrics["loss/total"] == pytest.approx(-0.012453, abs=ATOL)
    assert metrics["loss/policy"] + 0.04 * metrics["loss/kl"] == pytest.approx(metrics["loss/total"], abs=1e-12)
    assert metrics["actor/pg_clipfrac_high"] == pytest.approx(1 / 5)  # one of five valid tokens
    assert metrics["actor/num_tokens"] == 5.0
    assert metrics["actor/ratio_max"] == pytest.approx(1.5)


def test_end_to_end_dapo():
    logp, old, adv, mask, _ = mini_batch()
    # token-mean over 5 tokens, ε 0.2/0.28 (1.4 still clipped at 1.28): (−0.905097 − 0.777816 + 0.707106
    # + 0.589255 + 1.060659)/5 = 0.134822
    loss, _ = policy_loss(logp, old, adv, mask)
    close(loss, 0.134822)
    loss.backward()
    # ∂/∂ℓ = −A·r/5 on unclipped tokens: −0.707106·1.1/5 = −0.155563, 0.707106·1.0/5 = 0.141421, ...
    close(logp.grad, [[0.0, -0.155563, 0.0], [0.141421, 0.117851, 0.212132]])


# ----------------------------------------------------------------------------- agg_loss

L_AGG = [[1, 2, 3], [4, 9, 9], [7, 7, 7]]
M_AGG = [[1, 1, 1], [1, 0, 0], [0, 0, 0]]  # row 3 is a length-0 sequence


@pytest.mark.parametrize("mode, kw, expected", [
    ("token-mean", {}, 2.5),  # (1+2+3+4)/4
    ("seq-mean-token-sum", {}, 5.0),  # (6 + 4)/2, the empty row is not counted
    ("seq-mean-token-mean", {}, 3.0),  # (6/3 + 4/1)/2 (verl: 2.99999998 from its +1e-8)
    ("seq-mean-token-sum-norm", {}, 1.666667),  # 10 / (N_seq · T), N_seq = 2 non-empty rows, T = 3
    ("seq-mean-token-sum-norm", {"loss_scale_factor": 4}, 1.25),  # 10 / (2 · 4)
    ("seq-mean-token-sum-norm", {"loss_scale_factor": 4, "global_num_seqs": 5}, 0.5),  # this rank's share
    ("token-mean", {"global_num_tokens": 8}, 1.25),  # this rank's share: 10 / 8
    ("seq-mean-token-mean", {"global_num_seqs": 4}, 1.5),  # 6 / 4
])
def test_agg_loss_vectors(mode, kw, expected):
    close(agg_loss(t(L_AGG), t(M_AGG), mode, **kw), expected)


def test_agg_loss_all_masked_and_nan_padding():
    lm = t([[float("nan"), float("inf")]]).requires_grad_()
    for mode in AGG_MODES:
        loss = agg_loss(lm, t([[0, 0]]), mode)
        assert loss.item() == 0.0
        (g,) = torch.autograd.grad(loss, lm)
        assert torch.equal(g, torch.zeros_like(g)), mode
    with pytest.raises(ValueError, match="unknown loss_agg_mode 'mean'"):
        agg_loss(lm, t([[0, 0]]), "mean")


# ----------------------------------------------------------------------------- TIS

def test_tis_vectors():
    old, mu, mask = t([[0.5, 0.2, 0.9, 0.3]]).log(), t([[0.2, 0.4, 0.9, 0.31]]).log(), t([[1, 1, 1, 1]])
    # ratios π_old/π_μ = [2.5, 0.5, 1.0, 0.967742]; verl TIS C=2 truncates only the 2.5
    w, m = tis_weights(old, mu, mask, level="token", cap=2.0)
    close(w, [[2.0, 0.5, 1.0, 0.967742]])
    assert not w.requires_grad
    assert m["actor/tis_truncated_frac"] == 0.25 and m["actor/tis_ratio_max"] == pytest.approx(2.5)
    # ESS before truncation: (Σw)²/(n Σw²) = 4.967742² / (4 · 8.186524) = 0.753647
    assert m["actor/tis_ess"] == pytest.approx(4.967742 ** 2 / (4 * (6.25 + 0.25 + 1 + 0.967742 ** 2)), abs=1e-6)
    # OpenRLHF tis [0.5, 5]: nothing is above 5 (its lower bound 0.5 is not implemented: upper truncation only)
    close(tis_weights(old, mu, mask, cap=5.0)[0], [[2.5, 0.5, 1.0, 0.967742]])
    # sequence level: Π ratios = 2.5·0.5·1·0.967742 = 1.209677 < C=2, broadcast to every valid token
    ws, ms = tis_weights(old, mu, mask, level="sequence", cap=2.0)
    close(ws, [[1.209677] * 4])
    assert ms["actor/tis_truncated_frac"] == 0.0
    # geometric-mean ratio 1.209677^(1/4) = 1.048739 (the seq-mask-tis statistic), from the same log-ratios
    assert math.exp((old - mu).mean().item()) == pytest.approx(1.048739, abs=1e-6)
    # icepop [0.5, 2] (mask instead of truncate) is not implemented; its kept weights equal ours below C:
    close(torch.where(t([[2.5, 0.5, 1.0, 0.967742]]) > 2.0, 0.0, w), [[0, 0.5, 1.0, 0.967742]])


def test_tis_masked_and_empty_rows():
    old, mu = t([[0.0, 5.0], [0.0, 0.0]]), t([[0.0, -5.0], [3.0, 0.0]])
    mask = t([[1, 0], [0, 0]])  # masked (0,1) would be e^10; row 2 is empty
    w, m = tis_weights(old, mu, mask, level="sequence", cap=2.0)
    close(w, [[1.0, 0.0], [0.0, 0.0]])  # only row 1 counts: its valid log-ratio sum is 0
    assert m["actor/tis_ratio_max"] == 1.0 and m["actor/tis_truncated_frac"] == 0.0


def test_policy_loss_tis_and_is_weights_multiply_pg():
    logp, old, adv, mask, _ = mini_batch()
    rollout = old - t([[math.log(3.0), 0, 0], [0, 0, math.log(0.5)]])  # π_old/π_μ = 3 (capped to 2) and 0.5
    extra = t([[1.0, 0.5, 1.0], [1.0, 1.0, 2.0]])
    loss, m = policy_loss(logp, old, adv, mask, rollout_logprobs=rollout, tis_cap=2.0, is_weights=extra)
    _, stats = token_loss_terms(logp, old, adv[:, None].expand(2, 3))
    w = t([[2.0, 1.0, 1.0], [1.0, 1.0, 0.5]]) * extra
    close(loss, (agg_loss(w * stats["pg"], mask, "token-mean")).item())
    assert m["actor/tis_truncated_frac"] == pytest.approx(1 / 5)
    assert "actor/tis_ess" in m
    with pytest.raises(ValueError, match="rollout_logprobs is None"):
        policy_loss(logp, old, adv, mask, tis_cap=2.0)


# ----------------------------------------------------------------------------- GSPO sequence ratio

def test_gspo_sequence_ratio_value_and_gradient():
    logp, old, adv, mask, _ = mini_batch()
    loss, _ = policy_loss(logp, old, adv, mask, ratio_level="sequence", eps_low=0.5, eps_high=0.5,
                          loss_agg_mode="seq-mean-token-mean")
    # s_i = exp(mean_t log r): row 0 sqrt(1.4·1.1) = 1.240967, row 1 (1·0.833333·1.5)^(1/3) = 1.077217
    s = t([math.sqrt(1.4 * 1.1), (1.0 * (0.5 / 0.6) * 1.5) ** (1 / 3)])
    # GSPO eq. 5 (unclipped): J = (1/G) Σ_i s_i Â_i; loss = −J
    close(loss, -(s * adv).mean().item())
    loss.backward()
    # eq. 10: ∂(−J)/∂ℓ_{i,t} = −(1/G) Â_i s_i / |o_i| on valid tokens
    n = t([2.0, 3.0])
    close(logp.grad, (-(adv * s / n / 2)[:, None] * t(MASK)).tolist())


# ----------------------------------------------------------------------------- gradcheck

def test_gradcheck_policy_loss_float64():
    # k3, not a straight-through "+" estimator: those have the k2 gradient by design, not the true one.
    # GSPO: the GSPO-token gradient (eq. 13) is the exact gradient of the sequence objective only when the
    # per-token factors of a row are equal, so it is checked with sequence-level TIS (one weight per row).
    g = torch.Generator().manual_seed(0)
    B, T = 3, 5
    old = torch.randn(B, T, generator=g, dtype=D) * 0.5 - 1.0
    logp = (old + torch.randn(B, T, generator=g, dtype=D) * 0.3).requires_grad_()  # some ratios clipped
    ent = torch.rand(B, T, generator=g, dtype=D).requires_grad_()
    ref = old + torch.randn(B, T, generator=g, dtype=D) * 0.2
    rollout = old + torch.randn(B, T, generator=g, dtype=D) * 0.5
    adv = torch.randn(B, generator=g, dtype=D)
    mask = t([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0], [0, 0, 0, 0, 0]])
    for mode in AGG_MODES:
        for ratio_level in ("token", "sequence"):
            def f(lp, h):
                return policy_loss(lp, old, adv, mask, loss_agg_mode=mode, ratio_level=ratio_level, clip_ratio_c=3.0,
                                   ref_logprobs=ref, kl_coef=0.1, kl_estimator="k3", rollout_logprobs=rollout,
                                   tis_cap=2.0, tis_level=ratio_level, entropy=h, entropy_coef=0.01,
                                   global_num_tokens=9.0, loss_scale_factor=5.0)[0]
            assert torch.autograd.gradcheck(f, (logp, ent)), (mode, ratio_level)


# ----------------------------------------------------------------------------- edge cases and errors

def test_fully_masked_rows_and_empty_responses():
    logp, old, adv, _, _ = mini_batch()
    mask = t([[0, 0, 0], [1, 1, 1]])
    for mode in AGG_MODES:
        loss, m = policy_loss(logp, old, adv, mask, loss_agg_mode=mode, loss_scale_factor=3.0)
        (g,) = torch.autograd.grad(loss, logp)
        assert torch.equal(g[0], torch.zeros(3, dtype=D)) and torch.isfinite(g).all(), mode
    loss, m = policy_loss(logp, old, adv, torch.zeros(2, 3, dtype=D))  # all masked: 0, not NaN
    assert loss.item() == 0.0 and m["actor/num_tokens"] == 0.0 and m["actor/ratio_mean"] == 0.0
    empty = torch.zeros(2, 0, dtype=D, requires_grad=True)  # T = 0
    loss, m = policy_loss(empty, empty.detach(), adv, empty.detach(), ratio_level="sequence")
    assert loss.item() == 0.0 and m["actor/ratio_max"] == 0.0


@pytest.mark.parametrize("name", ["logprobs", "old_logprobs", "advantages", "response_mask", "ref_logprobs",
                                  "rollout_logprobs", "entropy", "is_weights"])
@pytest.mark.parametrize("bad", [float("nan"), float("-inf")])
def test_non_finite_inputs_rejected_by_name(name, bad):
    logp, old, adv, mask, ref = mini_batch()
    ones = torch.ones(2, 3, dtype=D)
    inputs = dict(logprobs=logp.detach().clone(), old_logprobs=old, advantages=adv, response_mask=mask,
                  ref_logprobs=ref, rollout_logprobs=old.clone(), entropy=ones, is_weights=ones)
    inputs[name] = inputs[name].clone()
    inputs[name].view(-1)[-1] = bad  # the last slot; for (B, T) inputs it is a valid token
    with pytest.raises(ValueError, match=f"policy_loss: {name} has 1 non-finite"):
        policy_loss(inputs.pop("logprobs"), inputs.pop("old_logprobs"), inputs.pop("advantages"),
                    inputs.pop("response_mask"), **inputs)


def test_bad_params_and_shapes_have_clear_errors():
    logp, old, adv, mask, ref = mini_batch()
    cases = [
        (dict(kl_coef=0.1), "needs ref_logprobs"),
        (dict(entropy_coef=0.1), "needs the per-token entropy"),
        (dict(clip_ratio_c=0.5), "dual-clip bound must be > 1"),
        (dict(loss_agg_mode="sum"), "unknown loss_agg_mode 'sum'"),
        (dict(ratio_level="seq"), "ratio_level='seq'"),
        (dict(ref_logprobs=ref[:, :2]), "ref_logprobs has shape \\(2, 2\\)"),
    ]
    for kw, msg in cases:
        with pytest.raises(ValueError, match=msg):
            policy_loss(logp, old, adv, mask, **kw)
    with pytest.raises(ValueError, match="advantages has shape \\(3,\\)"):
        policy_loss(logp, old, t([1.0, 2.0, 3.0]), mask)
    with pytest.raises(ValueError, match="logprobs must be \\(B, T\\)"):
        policy_loss(logp[0], old[0], adv, mask[0])


def test_policy_loss_equals_token_terms_plus_agg():
    logp, old, adv, mask, ref = mini_batch()
    ent = torch.rand(2, 3, dtype=D)
    kw = dict(clip_ratio_c=3.0, ref_logprobs=ref, kl_coef=0.05, entropy=ent, entropy_coef=0.01)
    for mode in AGG_MODES:
        loss, _ = policy_loss(logp, old, adv, mask, loss_agg_mode=mode, loss_scale_factor=7.0, **kw)
        tok, _ = token_loss_terms(logp, old, adv[:, None].expand(2, 3), **kw)
        torch.testing.assert_close(loss, agg_loss(tok, mask, mode, loss_scale_factor=7.0), atol=0, rtol=0)


# ----------------------------------------------------------------------------- micro-batch × grad-accum invariance

def _linear_policy_batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    B, T, H, V = 6, 5, 4, 7
    x = torch.randn(B, T, H, generator=g, dtype=D)
    y = torch.randint(0, V, (B, T), generator=g)
    lengths = t([5, 1, 3, 0, 4, 2], torch.long)  # unequal lengths and one empty response
    mask = (torch.arange(T)[None] < lengths[:, None]).to(D)
    adv = torch.randn(B, generator=g, dtype=D)
    w0 = torch.randn(V, H, generator=g, dtype=D) * 0.5
    with torch.no_grad():
        old = torch.log_softmax(x @ w0.T, -1).gather(-1, y[..., None])[..., 0]
        old = old + 0.1 * torch.randn(B, T, generator=g, dtype=D)
    return x, y, mask, adv, old, w0


def _step(rows_per_micro: list[list[int]], mode: str) -> torch.Tensor:
    """One SGD step of a linear softmax policy; gradients summed over micro-batches, global counts."""
    x, y, mask, adv, old, w0 = _linear_policy_batch()
    w = torch.nn.Parameter(w0.clone())
    opt = torch.optim.SGD([w], lr=0.5)
    n_tok, n_seq = mask.sum(), (mask.sum(-1) > 0).sum()  # counted once for the whole mini-batch
    for rows in rows_per_micro:
        r = torch.tensor(rows)
        logp = torch.log_softmax(x[r] @ w.T, -1).gather(-1, y[r][..., None])[..., 0]  # (b, T)
        loss, _ = policy_loss(logp, old[r], adv[r], mask[r], loss_agg_mode=mode, clip_ratio_c=3.0,
                              global_num_tokens=n_tok, global_num_seqs=n_seq, loss_scale_factor=5.0)
        loss.backward()  # accumulate: the sum of shares is the full-batch loss
    opt.step()
    return w.detach()


@pytest.mark.parametrize("mode", AGG_MODES)
def test_microbatch_grad_accumulation_invariance(mode):
    full = _step([[0, 1, 2, 3, 4, 5]], mode)
    for split in ([[0, 1, 2], [3, 4, 5]], [[5], [0, 3], [1, 2, 4]], [[i] for i in range(6)]):
        torch.testing.assert_close(_step(split, mode), full, atol=1e-12, rtol=0)


# ----------------------------------------------------------------------------- config -> policy_loss

def test_config_loss_params_match_policy_loss_signature():
    accepted = set(inspect.signature(policy_loss).parameters)
    cfg = AlgorithmConfig(loss=LossConfig(tis_level="sequence", clip_ratio_c=10.0))
    params = cfg.loss_params()
    assert set(params) <= accepted
    assert params["tis_cap"] == 2.0 and params["tis_level"] == "sequence"
    assert AlgorithmConfig().loss_params()["tis_cap"] is None  # TIS off by default
    logp, old, adv, mask, _ = mini_batch()
    policy_loss(logp, old, adv, mask, rollout_logprobs=old, **params)
    # schema defaults are the function defaults: one source of truth for the default loss
    defaults = {k: p.default for k, p in inspect.signature(policy_loss).parameters.items()}
    for k, v in AlgorithmConfig().loss_params().items():
        assert defaults[k] == v, k


@pytest.mark.parametrize("recipe, expected", [
    ("grpo", {"eps_high": 0.2, "loss_agg_mode": "seq-mean-token-mean", "kl_coef": 0.04, "kl_estimator": "k3"}),
    ("dapo", {"eps_low": 0.2, "eps_high": 0.28, "clip_ratio_c": 10.0, "kl_coef": 0.0, "loss_agg_mode": "token-mean"}),
    ("stratified_grpo", {"loss_agg_mode": "token-mean"}),
])
def test_recipes_map_to_policy_loss_params(recipe, expected):
    path = Path(__file__).resolve().parents[2] / "configs" / f"{recipe}.yaml"
    section = OmegaConf.load(path).get("algorithm", {})
    cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(AlgorithmConfig), section))
    params = cfg.loss_params()
    for k, v in expected.items():
        assert params[k] == v, (recipe, k)


def test_loss_config_validation_says_how_to_fix():
    with pytest.raises(ValueError, match="algorithm.loss.clip_ratio_c=1.0: must be > 1"):
        LossConfig(clip_ratio_c=1.0)
    with pytest.raises(ValueError, match="seq-mean-token-sum-norm needs a constant divisor"):
        LossConfig(loss_agg_mode="seq-mean-token-sum-norm")
    with pytest.raises(ValueError, match="loss_agg_mode='mean': use one of token-mean"):
        LossConfig(loss_agg_mode="mean")
    with pytest.raises(ValueError, match="use one: set loss.kl_coef=0"):
        OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(AlgorithmConfig),
                                            {"loss": {"kl_coef": 0.1}, "kl_in_reward": {"enable": True}}))
