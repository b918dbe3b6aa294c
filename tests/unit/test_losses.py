"""rl/losses.py: worked vectors (clipped loss, KL, agg_loss modes, TIS), gradients, gradcheck, GSPO, TIS, edge
cases, micro-batch × grad-accumulation invariance, importance weights (TIS scope, PER), plug-in policy-loss
terms, and the config -> LossConfig the trainer runs (rl/loss_config.py)."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from launch import schema_algorithm
from launch.schema_algorithm import AlgorithmConfig, ReplayConfig
from rl.loss_config import LossConfig, LossInputs
from rl.losses import (AGG_MODES, POLICY_TERMS, agg_loss, importance_weights, kl_penalty, policy_loss, run_term,
                       tis_weights, token_loss_terms)

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
        loss, _ = token_loss_terms(logp, old, adv, LossConfig(eps_low=el, eps_high=eh, clip_ratio_c=c))
        close(loss, [want])
    loss, stats = token_loss_terms(logp, old, adv, LossConfig(eps_low=0.2, eps_high=0.28, clip_ratio_c=3.0))
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
    cfg = LossConfig(clip_ratio_c=3.0, kl_coef=0.1, entropy_coef=0.01)
    kw = dict(ref_logprobs=ref, is_weights=w, entropy=ent)
    full, stats = token_loss_terms(lp, old, adv, cfg, **kw)
    assert full.shape == shape and all(v.shape == shape for v in stats.values())
    # L_tok = w·pg + β·kl − c_H·H, and each element only depends on its own inputs
    torch.testing.assert_close(full, w * stats["pg"] + 0.1 * stats["kl"] - 0.01 * ent)
    flat, _ = token_loss_terms(lp.flatten(), old.flatten(), adv.flatten(), cfg,
                               **{k: v.flatten() for k, v in kw.items()})
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
    loss_tok, stats = token_loss_terms(logp, old, adv[:, None].expand(2, 3), LossConfig(eps_high=0.2))
    # ratios π_θ/π_old = [[1.4, 1.1], [1.0, 0.833333, 1.5]]; (0,0) clipped at 1.2 -> −0.707106·1.2 = −0.848527
    close(stats["ratio"] * mask, [[1.4, 1.1, 0], [1.0, 0.833333, 1.5]])
    close(loss_tok * mask, [[-0.848527, -0.777816, 0], [0.707106, 0.589255, 1.060659]])
    close(kl_penalty(logp, ref, "k3") * mask, [[0.050758, 0.008530, 0], [0.015655, 0.017678, 0.072132]])
    # seq-mean-token-mean: ((−0.848527−0.777816)/2 + (0.707106+0.589255+1.060659)/3)/2 = −0.013749,
    # plus 0.04 · ((0.050758+0.008530)/2 + (0.015655+0.017678+0.072132)/3)/2 = 0.001296 -> −0.012453
    loss, metrics = policy_loss(logp, LossInputs(old, adv, mask, ref_logprobs=ref),
                                LossConfig(eps_high=0.2, loss_agg_mode="seq-mean-token-mean", kl_coef=0.04))
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
    loss, _ = policy_loss(logp, LossInputs(old, adv, mask), LossConfig())
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
    loss, m = policy_loss(logp, LossInputs(old, adv, mask, rollout_logprobs=rollout, is_weights=extra),
                          LossConfig(tis_level="token", tis_cap=2.0))
    _, stats = token_loss_terms(logp, old, adv[:, None].expand(2, 3), LossConfig())
    w = t([[2.0, 1.0, 1.0], [1.0, 1.0, 0.5]]) * extra
    close(loss, (agg_loss(w * stats["pg"], mask, "token-mean")).item())
    assert m["actor/tis_truncated_frac"] == pytest.approx(1 / 5)
    assert "actor/tis_ess" in m
    with pytest.raises(ValueError, match="rollout_logprobs is None"):
        policy_loss(logp, LossInputs(old, adv, mask), LossConfig(tis_level="token", tis_cap=2.0))


# ----------------------------------------------------------------------------- GSPO sequence ratio

def test_gspo_sequence_ratio_value_and_gradient():
    logp, old, adv, mask, _ = mini_batch()
    loss, _ = policy_loss(logp, LossInputs(old, adv, mask), LossConfig(
        ratio_level="sequence", eps_low=0.5, eps_high=0.5, loss_agg_mode="seq-mean-token-mean"))
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
            cfg = LossConfig(loss_agg_mode=mode, ratio_level=ratio_level, clip_ratio_c=3.0, kl_coef=0.1,
                             kl_estimator="k3", tis_cap=2.0, tis_level=ratio_level, entropy_coef=0.01,
                             loss_scale_factor=5.0)
            inputs = LossInputs(old, adv, mask, ref_logprobs=ref, rollout_logprobs=rollout, global_num_tokens=9.0)

            def f(lp, h, cfg=cfg, inputs=inputs):
                return policy_loss(lp, inputs, cfg, entropy=h)[0]
            assert torch.autograd.gradcheck(f, (logp, ent)), (mode, ratio_level)


# ----------------------------------------------------------------------------- edge cases and errors

def test_fully_masked_rows_and_empty_responses():
    logp, old, adv, _, _ = mini_batch()
    mask = t([[0, 0, 0], [1, 1, 1]])
    for mode in AGG_MODES:
        loss, m = policy_loss(logp, LossInputs(old, adv, mask), LossConfig(loss_agg_mode=mode, loss_scale_factor=3.0))
        (g,) = torch.autograd.grad(loss, logp)
        assert torch.equal(g[0], torch.zeros(3, dtype=D)) and torch.isfinite(g).all(), mode
    all_masked = LossInputs(old, adv, torch.zeros(2, 3, dtype=D))
    loss, m = policy_loss(logp, all_masked, LossConfig())  # all masked: 0, not NaN
    assert loss.item() == 0.0 and m["actor/num_tokens"] == 0.0 and m["actor/ratio_mean"] == 0.0
    empty = torch.zeros(2, 0, dtype=D, requires_grad=True)  # T = 0
    loss, m = policy_loss(empty, LossInputs(empty.detach(), adv, empty.detach()), LossConfig(ratio_level="sequence"))
    assert loss.item() == 0.0 and m["actor/ratio_max"] == 0.0


@pytest.mark.parametrize("name", ["logprobs", "old_logprobs", "advantages", "response_mask", "ref_logprobs",
                                  "rollout_logprobs", "entropy", "is_weights"])
@pytest.mark.parametrize("bad", [float("nan"), float("-inf")])
def test_non_finite_inputs_rejected_by_name(name, bad):
    logp, old, adv, mask, ref = mini_batch()
    ones = torch.ones(2, 3, dtype=D)
    tensors = dict(logprobs=logp.detach().clone(), old_logprobs=old, advantages=adv, response_mask=mask,
                   ref_logprobs=ref, rollout_logprobs=old.clone(), entropy=ones, is_weights=ones)
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[-1] = bad  # the last slot; for (B, T) inputs it is a valid token
    logprobs, entropy = tensors.pop("logprobs"), tensors.pop("entropy")
    with pytest.raises(ValueError, match=f"policy_loss: {name} has 1 non-finite"):
        policy_loss(logprobs, LossInputs(**tensors), LossConfig(), entropy=entropy)


def test_bad_params_and_shapes_have_clear_errors():
    logp, old, adv, mask, ref = mini_batch()
    call_cases = [  # valid config, but the call lacks what it needs
        (dict(kl_coef=0.1), {}, "needs ref_logprobs"),
        (dict(entropy_coef=0.1), {}, "needs the per-token entropy"),
        ({}, dict(ref_logprobs=ref[:, :2]), "ref_logprobs has shape \\(2, 2\\)"),
    ]
    for cfg_kw, inputs_kw, msg in call_cases:
        with pytest.raises(ValueError, match=msg):
            policy_loss(logp, LossInputs(old, adv, mask, **inputs_kw), LossConfig(**cfg_kw))
    # out-of-range parameters are rejected when the LossConfig is built, naming the config key
    config_cases = [
        (dict(clip_ratio_c=0.5), "algorithm.loss.clip_ratio_c=0.5: must be > 1"),
        (dict(loss_agg_mode="sum"), "algorithm.loss.loss_agg_mode='sum': use one of token-mean"),
        (dict(ratio_level="seq"), "algorithm.loss.ratio_level='seq'"),
    ]
    for cfg_kw, msg in config_cases:
        with pytest.raises(ValueError, match=msg):
            LossConfig(**cfg_kw)
    with pytest.raises(ValueError, match="advantages has shape \\(3,\\)"):
        policy_loss(logp, LossInputs(old, t([1.0, 2.0, 3.0]), mask), LossConfig())
    with pytest.raises(ValueError, match="logprobs must be \\(B, T\\)"):
        policy_loss(logp[0], LossInputs(old[0], adv, mask[0]), LossConfig())
    with pytest.raises(ValueError, match="response_mask is required"):
        policy_loss(logp, LossInputs(old, adv), LossConfig())


def test_policy_loss_equals_token_terms_plus_agg():
    logp, old, adv, mask, ref = mini_batch()
    ent = torch.rand(2, 3, dtype=D)
    for mode in AGG_MODES:
        cfg = LossConfig(clip_ratio_c=3.0, kl_coef=0.05, entropy_coef=0.01, loss_agg_mode=mode, loss_scale_factor=7.0)
        loss, _ = policy_loss(logp, LossInputs(old, adv, mask, ref_logprobs=ref), cfg, entropy=ent)
        tok, _ = token_loss_terms(logp, old, adv[:, None].expand(2, 3), cfg, ref_logprobs=ref, entropy=ent)
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
    cfg = LossConfig(loss_agg_mode=mode, clip_ratio_c=3.0, loss_scale_factor=5.0)
    for rows in rows_per_micro:
        r = torch.tensor(rows)
        logp = torch.log_softmax(x[r] @ w.T, -1).gather(-1, y[r][..., None])[..., 0]  # (b, T)
        inputs = LossInputs(old[r], adv[r], mask[r], global_num_tokens=n_tok, global_num_seqs=n_seq)
        loss, _ = policy_loss(logp, inputs, cfg)
        loss.backward()  # accumulate: the sum of shares is the full-batch loss
    opt.step()
    return w.detach()


@pytest.mark.parametrize("mode", AGG_MODES)
def test_microbatch_grad_accumulation_invariance(mode):
    full = _step([[0, 1, 2, 3, 4, 5]], mode)
    for split in ([[0, 1, 2], [3, 4, 5]], [[5], [0, 3], [1, 2, 4]], [[i] for i in range(6)]):
        torch.testing.assert_close(_step(split, mode), full, atol=1e-12, rtol=0)


# ----------------------------------------------------------------------------- importance weights (TIS scope, PER)

# π_old/π_μ per token: row 0 [3, 0.5, pad], row 1 [2.5, 1.0, 0.8]; only row 1 was drawn from the replay buffer
TIS_RATIOS = [[3.0, 0.5, 1.0], [2.5, 1.0, 0.8]]
REPLAYED = [[False, False, False], [True, True, True]]


def replay_inputs(**kw):
    logp, old, adv, mask, _ = mini_batch()
    rollout = old - t(TIS_RATIOS).log()
    return logp, LossInputs(old, adv, mask, rollout_logprobs=rollout, replayed=torch.tensor(REPLAYED), **kw)


def test_importance_weights_replayed_scope_is_tis_on_replayed_rows_only():
    _, inputs = replay_inputs()
    mask = inputs.response_mask
    w, m = importance_weights(inputs, LossConfig(tis_level="token", tis_cap=2.0, tis_scope="replayed"), mask)
    # replayed row: min(ratio, C=2) = [2.0, 1.0, 0.8]; the fresh row keeps weight 1 (its ratio 3 is not truncated)
    close(w * mask, [[1.0, 1.0, 0.0], [2.0, 1.0, 0.8]])
    assert not w.requires_grad
    # metrics over the 3 replayed tokens only, before truncation (row 0's 3.0 would make these 2/5 and 3.0)
    assert m["actor/tis_truncated_frac"] == pytest.approx(1 / 3)
    assert m["actor/tis_ratio_max"] == pytest.approx(2.5)
    assert m["actor/tis_ratio_mean"] == pytest.approx(4.3 / 3)  # (2.5 + 1 + 0.8) / 3
    assert m["actor/tis_ess"] == pytest.approx(4.3 ** 2 / (3 * (6.25 + 1 + 0.64)), abs=1e-9)  # 0.781158
    assert m["actor/tis_log_ratio_abs_mean"] == pytest.approx((math.log(2.5) + abs(math.log(0.8))) / 3)  # 0.379811
    # scope `all` is tis_weights over every valid token: the fresh row's 3.0 is truncated to 2 as well
    w_all, m_all = importance_weights(inputs, LossConfig(tis_level="token", tis_cap=2.0), mask)
    close(w_all * mask, [[2.0, 0.5, 0.0], [2.0, 1.0, 0.8]])
    assert m_all == tis_weights(inputs.old_logprobs, inputs.rollout_logprobs, mask, cap=2.0)[1]
    assert m_all["actor/tis_truncated_frac"] == pytest.approx(2 / 5)
    assert m_all["actor/tis_ratio_max"] == pytest.approx(3.0)


def test_importance_weights_per_weights_multiply_in():
    per = t([[0.9, 0.9, 0.9], [0.5, 0.5, 0.5]])  # PER weights of each row (1 for fresh rows in the trainer)
    _, inputs = replay_inputs(is_weights=per)
    mask = inputs.response_mask
    w, m = importance_weights(inputs, LossConfig(tis_level="token", tis_cap=2.0, tis_scope="replayed"), mask)
    close(w * mask, [[0.9, 0.9, 0.0], [1.0, 0.5, 0.4]])  # PER × [[1, 1], [2, 1, 0.8]]
    assert m["actor/tis_truncated_frac"] == pytest.approx(1 / 3)  # PER weights do not enter the TIS metrics
    # TIS off: the PER weights alone, no TIS metrics
    w_off, m_off = importance_weights(inputs, LossConfig(), mask)
    assert torch.equal(w_off, per) and m_off == {}
    # no PER and TIS off: no weights at all
    assert importance_weights(replay_inputs()[1], LossConfig(), mask) == (None, {})
    # scope `replayed` on a batch without replayed rows (replayed=None): nothing is weighted by TIS
    none_replayed = dataclasses.replace(inputs, replayed=None)
    w_none, m_none = importance_weights(none_replayed, LossConfig(tis_level="token", tis_scope="replayed"), mask)
    assert torch.equal(w_none, per) and m_none == {}
    with pytest.raises(ValueError, match="rollout_logprobs is None"):
        importance_weights(dataclasses.replace(inputs, rollout_logprobs=None),
                           LossConfig(tis_level="token", tis_scope="replayed"), mask)


def test_policy_loss_with_replayed_scope_and_per():
    cfg = LossConfig(tis_level="token", tis_cap=2.0, tis_scope="replayed")
    logp, inputs = replay_inputs()
    loss, m = policy_loss(logp, inputs, cfg)
    # token-mean of w·pg, pg = [−0.905095, −0.777816 | 0.707106, 0.589255, 1.060659] (test_end_to_end_dapo),
    # w = [1, 1 | 2, 1, 0.8]: (−0.905095 − 0.777816 + 1.414212 + 0.589255 + 0.848527)/5 = 0.233816
    close(loss, 0.233816)
    assert m["actor/tis_truncated_frac"] == pytest.approx(1 / 3) and m["actor/num_tokens"] == 5.0
    loss.backward()
    # ∂/∂ℓ = −w·A·r/5 on unclipped tokens: (1,0) 2·0.707106·1.0/5 = 0.282842,
    # (1,2) 0.8·0.707106·1.5/5 = 0.169705; (0,0) is clipped (r = 1.4 > 1.28)
    close(logp.grad, [[0.0, -0.155563, 0.0], [0.282842, 0.117851, 0.169705]])
    # PER weights multiply in: w = [0.9, 0.9 | 1.0, 0.5, 0.4] -> −0.017725
    logp, inputs = replay_inputs(is_weights=t([[0.9, 0.9, 0.9], [0.5, 0.5, 0.5]]))
    close(policy_loss(logp, inputs, cfg)[0], -0.017725)
    # the replay section of the config sets up exactly this loss when TIS is off (see test_trainer_loss_*)
    assert AlgorithmConfig(replay=ReplayConfig(enable=True, staleness_cap=2.0)).trainer_loss() == cfg


# ----------------------------------------------------------------------------- plug-in policy-loss terms

PLUGIN = '''
import torch


def scaled_pg(logprobs, old_logprobs, advantages, cfg, scale=1.0):
    """Unclipped policy gradient, scaled: -scale * A * exp(l - l_old)."""
    return -scale * advantages * (logprobs - old_logprobs).exp()


def leaky(logprobs, old_logprobs, advantages, cfg):
    return -(advantages + 0.1) * (logprobs - old_logprobs).exp()


def two_args(logprobs, advantages):
    return -advantages * logprobs


def scalar(logprobs, old_logprobs, advantages, cfg):
    return (-advantages * (logprobs - old_logprobs).exp()).sum()


def detached(logprobs, old_logprobs, advantages, cfg):
    return (-advantages * (logprobs - old_logprobs).exp()).detach()


def raises(logprobs, old_logprobs, advantages, cfg):
    raise RuntimeError("boom")
'''


@pytest.fixture()
def plugin_file(tmp_path):
    path = tmp_path / "my_terms.py"
    path.write_text(PLUGIN)
    return path


def test_plugin_term_from_file_spec(plugin_file):
    cfg = LossConfig(term=f"{plugin_file}:scaled_pg", term_params={"scale": 2.0})
    logp, old, adv, mask, _ = mini_batch()
    adv_tok = adv[:, None].expand(2, 3)
    pg, stats = run_term(cfg, logp, old, adv_tok)
    # −2·A·r with r = [[1.4, 1.1], [1.0, 0.833333, 1.5]], A = ±0.707106
    close(pg * mask, [[-1.979896, -1.555633, 0.0], [1.414212, 1.178510, 2.121317]])
    # ratio, log_ratio and the clip flags are filled in for a term that reports none
    close(stats["ratio"] * mask, [[1.4, 1.1, 0], [1.0, 0.833333, 1.5]])
    assert all(torch.equal(stats[k], torch.zeros_like(pg)) for k in ("clipped_high", "clipped_low", "dual_clipped"))
    loss_tok, tstats = token_loss_terms(logp, old, adv_tok, cfg)
    torch.testing.assert_close(loss_tok, pg, atol=0, rtol=0)
    torch.testing.assert_close(tstats["pg"], pg, atol=0, rtol=0)
    loss, m = policy_loss(logp, LossInputs(old, adv, mask), cfg)
    close(loss, 0.235702)  # (−1.979896 − 1.555633 + 1.414212 + 1.178510 + 2.121317)/5
    loss.backward()
    close(logp.grad, [[-0.395979, -0.311127, 0.0], [0.282842, 0.235702, 0.424263]])  # −2·A·r/5, nothing clipped
    assert m["actor/pg_clipfrac"] == 0.0 and m["actor/ratio_max"] == pytest.approx(1.5)


def test_plugin_term_specs_are_resolved(plugin_file, monkeypatch):
    # a relative file spec is made absolute when the config is built (trainer ranks may run in another cwd)
    monkeypatch.chdir(plugin_file.parent)
    cfg = LossConfig(term="my_terms.py:scaled_pg")
    assert cfg.term == f"{plugin_file}:scaled_pg"
    # an importable `pkg.module:fn` spec: the built-in ppo_clip named as a plug-in gives the default loss
    logp, old, adv, mask, _ = mini_batch()
    as_plugin, _ = policy_loss(logp, LossInputs(old, adv, mask), LossConfig(term="rl.losses:ppo_clip"))
    builtin, _ = policy_loss(logp, LossInputs(old, adv, mask), LossConfig())
    torch.testing.assert_close(as_plugin, builtin, atol=0, rtol=0)
    assert "ppo_clip" in POLICY_TERMS


@pytest.mark.parametrize("fn, params, match", [
    ("leaky", {}, r"algorithm\.loss\.term='.*:leaky': probe call failed: ValueError: is not 0 at tokens whose "
                  r"advantage is 0"),
    ("two_args", {}, r"algorithm\.loss\.term='.*:two_args': signature \(logprobs, advantages\) must take "
                     r"\(logprobs, old_logprobs, advantages, cfg\)"),
    ("scaled_pg", {"temperature": 1.0}, r"algorithm\.loss\.term_params=\{'temperature': 1\.0\}: .*:scaled_pg' got "
                                        r"unknown params \['temperature'\]; it accepts \['scale'\]"),
    ("scalar", {}, r"algorithm\.loss\.term='.*:scalar': probe call failed: ValueError: returned shape \(\)"),
    ("detached", {}, r"algorithm\.loss\.term='.*:detached': probe call failed: .*carries no gradient"),
    ("raises", {}, r"algorithm\.loss\.term='.*:raises': probe call failed: RuntimeError: boom"),
    ("missing", {}, r"algorithm\.loss\.term='.*:missing'"),
])
def test_loss_config_rejects_bad_plugin_terms(plugin_file, fn, params, match):
    with pytest.raises(ValueError, match=match):
        LossConfig(term=f"{plugin_file}:{fn}", term_params=params)


def test_loss_config_builds_under_no_grad():
    with torch.no_grad():
        assert LossConfig(kl_coef=0.1).kl_coef == 0.1
    with torch.inference_mode():
        assert LossConfig(entropy_coef=0.1).entropy_coef == 0.1


def test_loss_config_rejects_unknown_term_names():
    with pytest.raises(ValueError, match=r"algorithm\.loss\.term='ppo_clipp': .*did you mean 'ppo_clip'"):
        LossConfig(term="ppo_clipp")
    with pytest.raises(ValueError, match=r"algorithm\.loss\.term_params=\{'scale': 2\.0\}: policy-loss term "
                                         r"'ppo_clip' got unknown params \['scale'\]"):
        LossConfig(term_params={"scale": 2.0})


# ----------------------------------------------------------------------------- config -> LossConfig the trainer runs

def test_trainer_loss_is_the_configured_loss():
    loss = LossConfig(tis_level="sequence", clip_ratio_c=10.0)
    run = AlgorithmConfig(loss=loss).trainer_loss()
    assert isinstance(run, LossConfig) and run == loss
    assert run.tis_cap == 2.0 and run.tis_level == "sequence" and run.tis_scope == "all"
    assert AlgorithmConfig().trainer_loss().tis_level is None  # TIS off by default
    logp, old, adv, mask, _ = mini_batch()
    policy_loss(logp, LossInputs(old, adv, mask, rollout_logprobs=old), run)
    # one source of truth for the default loss: the schema's loss section is rl.loss_config.LossConfig
    assert schema_algorithm.LossConfig is LossConfig
    assert AlgorithmConfig().loss == LossConfig() and AlgorithmConfig().trainer_loss() == LossConfig()
    defaults = {f.name: getattr(LossConfig(), f.name) for f in dataclasses.fields(LossConfig)}
    assert defaults == {"term": "ppo_clip", "term_params": {}, "eps_low": 0.2, "eps_high": 0.28, "clip_ratio_c": None,
                        "loss_agg_mode": "token-mean", "ratio_level": "token", "kl_coef": 0.0, "kl_estimator": "k3",
                        "entropy_coef": 0.0, "tis_level": None, "tis_cap": 2.0, "tis_scope": "all",
                        "loss_scale_factor": None}
    with pytest.raises(dataclasses.FrozenInstanceError):
        run.eps_low = 0.1  # every trainer rank gets the same object: it cannot be changed on the way


def test_trainer_loss_turns_replay_staleness_cap_into_tis_on_replayed_rows():
    # replay on, TIS off: the decoupled-PPO weight min(π_old/π_rollout, staleness_cap) on replayed rows
    on = AlgorithmConfig(replay=ReplayConfig(enable=True, staleness_cap=1.5))
    assert on.trainer_loss() == LossConfig(tis_level="token", tis_cap=1.5, tis_scope="replayed")
    assert on.loss == LossConfig()  # the config section itself is unchanged
    # no correction asked for, replay off, or TIS already on for every row: the loss as configured
    assert AlgorithmConfig(replay=ReplayConfig(enable=True, staleness_cap=None)).trainer_loss() == LossConfig()
    assert AlgorithmConfig(replay=ReplayConfig(enable=False, staleness_cap=1.5)).trainer_loss() == LossConfig()
    tis = LossConfig(tis_level="token", tis_cap=1.5)
    assert AlgorithmConfig(loss=tis, replay=ReplayConfig(enable=True, staleness_cap=1.5)).trainer_loss() == tis


@pytest.mark.parametrize("recipe, expected", [
    ("grpo", {"eps_high": 0.2, "loss_agg_mode": "seq-mean-token-mean", "kl_coef": 0.04, "kl_estimator": "k3"}),
    ("dapo", {"eps_low": 0.2, "eps_high": 0.28, "clip_ratio_c": 10.0, "kl_coef": 0.0, "loss_agg_mode": "token-mean"}),
    ("stratified_grpo", {"loss_agg_mode": "token-mean"}),
])
def test_recipes_map_to_trainer_loss(recipe, expected):
    path = Path(__file__).resolve().parents[2] / "configs" / f"{recipe}.yaml"
    section = OmegaConf.load(path).get("algorithm", {})
    cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(AlgorithmConfig), section))
    loss = cfg.trainer_loss()
    assert isinstance(loss, LossConfig)
    for k, v in expected.items():
        assert getattr(loss, k) == v, (recipe, k)


@pytest.mark.parametrize("kw, match", [  # every LossConfig key names itself and says how to fix it
    (dict(eps_low=1.0), "algorithm.loss.eps_low=1.0: must be in \\[0, 1\\)"),
    (dict(eps_low=-0.1), "algorithm.loss.eps_low=-0.1: must be in \\[0, 1\\)"),
    (dict(eps_high=-0.1), "algorithm.loss.eps_high=-0.1: must be >= 0"),
    (dict(clip_ratio_c=1.0), "algorithm.loss.clip_ratio_c=1.0: must be > 1"),
    (dict(loss_agg_mode="mean"), "algorithm.loss.loss_agg_mode='mean': use one of token-mean"),
    (dict(ratio_level="seq"), "algorithm.loss.ratio_level='seq': use `token` or `sequence`"),
    (dict(kl_coef=-0.1), "algorithm.loss.kl_coef=-0.1: must be >= 0"),
    (dict(kl_estimator="k4"), "algorithm.loss.kl_estimator='k4': use one of k1"),
    (dict(tis_level="seq"), "algorithm.loss.tis_level='seq': use `token`, `sequence` or null"),
    (dict(tis_cap=0.0), "algorithm.loss.tis_cap=0.0: must be > 0"),
    (dict(tis_scope="fresh"), "algorithm.loss.tis_scope='fresh': use `all` or `replayed`"),
    (dict(loss_scale_factor=0.0), "algorithm.loss.loss_scale_factor=0.0: must be > 0"),
    (dict(loss_agg_mode="seq-mean-token-sum-norm"), "algorithm.loss.loss_scale_factor=None: seq-mean-token-sum-norm "
                                                    "needs a constant divisor"),
])
def test_loss_config_rejects_each_bad_value_by_key(kw, match):
    with pytest.raises(ValueError, match=match):
        LossConfig(**kw)


def test_loss_config_validation_says_how_to_fix():
    with pytest.raises(ValueError, match="algorithm.loss.clip_ratio_c=1.0: must be > 1"):
        LossConfig(clip_ratio_c=1.0)
    with pytest.raises(ValueError, match="seq-mean-token-sum-norm needs a constant divisor"):
        LossConfig(loss_agg_mode="seq-mean-token-sum-norm")
    with pytest.raises(ValueError, match="loss_agg_mode='mean': use one of token-mean"):
        LossConfig(loss_agg_mode="mean")
    with pytest.raises(ValueError, match="algorithm.loss.tis_scope='fresh'"):  # through the YAML path too
        OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(AlgorithmConfig), {"loss": {"tis_scope": "fresh"}}))
    with pytest.raises(ValueError, match="use one: set loss.kl_coef=0"):
        OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(AlgorithmConfig),
                                            {"loss": {"kl_coef": 0.1}, "kl_in_reward": {"enable": True}}))
