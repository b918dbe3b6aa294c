"""Policy-gradient loss: clipped surrogate (PPO/GRPO/DAPO/GSPO), KL to a reference, entropy bonus,
truncated importance sampling (TIS), and the loss aggregation modes. Pure torch, no distributed calls.

    loss, metrics = policy_loss(logprobs, old_logprobs, advantages, response_mask,
                                global_num_tokens=n_tok_all_ranks)   # (B, T) inputs -> scalar
    loss.backward()

Layers, each usable on its own (the math, with worked numbers, is in docs/algorithms.md, `algorithm.loss`):
- `token_loss_terms`: the per-token loss, elementwise over any shape. The fused kernel in rl/ops
  imports it, so the kernel and `policy_loss` share one definition of the math.
- `agg_loss`: (B, T) per-token loss + mask -> scalar, four verl modes, exact global normalisers.
- `kl_penalty`, `tis_weights`: the KL estimators and the rollout/trainer mismatch weights.
- `policy_loss`: validation + optional GSPO sequence ratio + TIS + the two layers above + metrics.

Distributed convention (read this before writing a trainer): the loss returned for one micro-batch on
one rank is that micro-batch's SHARE of the global mini-batch loss. With `global_num_tokens` = the
all-reduced number of valid tokens of the whole mini-batch (all micro-batches, all DP ranks), the
token-mean loss is Σ(L·M)_local / global_num_tokens; gradients must then be SUMMED over micro-batches
(plain accumulation) and over DP ranks (all-reduce SUM, or DeepSpeed's average × world_size). The sum
equals the gradient of the exact global token mean Σ_all(L·M)/Σ_all M (DAPO arXiv 2503.14476 eq. 12),
independently of how the tokens are split. verl instead multiplies by dp_size to undo DDP averaging.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

AGG_MODES = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm")
KL_ESTIMATORS = ("k1", "k2", "k3", "abs", "k1+", "k2+", "k3+")
RATIO_LEVELS = ("token", "sequence")
LOG_RATIO_CLAMP = 20.0  # exp(20) ≈ 4.9e8: keeps ratios finite for very stale tokens (verl)


# --------------------------------------------------------------------------- KL


def kl_penalty(logprobs: Tensor, ref_logprobs: Tensor, estimator: str) -> Tensor:
    """Per-token KL(π_θ || π_ref) estimate, same shape as the inputs (Schulman's k1/k2/k3, "Approximating KL
    Divergence", 2020).

    - "k1": ℓ^θ − ℓ^ref          - "abs": |ℓ^θ − ℓ^ref|       - "k2": ½(ℓ^θ − ℓ^ref)²
    - "k3": exp(ℓ^ref − ℓ^θ) − (ℓ^ref − ℓ^θ) − 1, DeepSeekMath eq. (4); log-ratio clamped to ±20 and the
      value to [−10, 10] as verl's low_var_kl does.
    - "k1+", "k2+", "k3+": straight-through: the forward value of k1/k2/k3, the gradient of k2, which is
      the unbiased gradient of KL (k1/k3 gradients are not; verl `kl_penalty`).
    """
    if estimator not in KL_ESTIMATORS:
        raise ValueError(f"unknown kl_estimator {estimator!r}; use one of {', '.join(KL_ESTIMATORS)}")
    if estimator.endswith("+"):
        value = _kl_forward(logprobs, ref_logprobs, estimator[:-1])
        k2 = 0.5 * (logprobs - ref_logprobs).square()
        return k2 + (value - k2).detach()
    return _kl_forward(logprobs, ref_logprobs, estimator)


def _kl_forward(logprobs: Tensor, ref_logprobs: Tensor, estimator: str) -> Tensor:
    diff = logprobs - ref_logprobs
    if estimator == "k1":
        return diff
    if estimator == "abs":
        return diff.abs()
    if estimator == "k2":
        return 0.5 * diff.square()
    log_ref_over_pi = (-diff).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)  # k3
    return (log_ref_over_pi.exp() - log_ref_over_pi - 1.0).clamp(-10.0, 10.0)


# --------------------------------------------------------------------------- per-token loss


def token_loss_terms(
    logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, *,
    eps_low: float = 0.2, eps_high: float = 0.28, clip_ratio_c: float | None = None,
    ref_logprobs: Tensor | None = None, kl_coef: float = 0.0, kl_estimator: str = "k3",
    is_weights: Tensor | None = None, entropy: Tensor | None = None, entropy_coef: float = 0.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Per-token loss L_tok = is_weights * pg_tok + kl_coef * kl_tok - entropy_coef * entropy, all elementwise,
    same shape as logprobs (advantages already broadcast per token). Returns (L_tok, stats) where stats holds
    per-token tensors: "pg" (pg_tok), "kl" (kl_tok or zeros), "ratio", "clipped_high", "clipped_low", "dual_clipped"
    (float 0/1), "log_ratio" — unmasked; the caller masks and reduces.

    pg_tok is verl's `compute_policy_loss_vanilla`: with r = exp(clamp(ℓ^θ − ℓ^old, ±20)),
    max(−A·r, −A·clip(r, 1−eps_low, 1+eps_high)) (PPO arXiv 1707.06347 eq. 7; decoupled clip = DAPO
    arXiv 2503.14476 eq. 10), then for A < 0 the dual clip min(·, −A·c) (arXiv 1912.09729 eq. 5).
    `is_weights` (TIS / replay corrections) are detached. Stats are not detached. Flags: clipped_high =
    A > 0 and r > 1+eps_high; clipped_low = A < 0 and r < 1−eps_low; dual_clipped = A < 0 and −A·r > −A·c.
    """
    log_ratio = (logprobs - old_logprobs).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    ratio = log_ratio.exp()
    pg_unclipped = -advantages * ratio
    pg_clipped = -advantages * ratio.clamp(1.0 - eps_low, 1.0 + eps_high)
    use_clipped = pg_clipped > pg_unclipped  # strict: at a tie the unclipped branch carries the gradient
    pg = torch.where(use_clipped, pg_clipped, pg_unclipped)
    dual = torch.zeros_like(use_clipped)
    if clip_ratio_c is not None:
        # A < 0 and r > c: loss capped at |A|·c with zero gradient, so one huge ratio cannot dominate.
        pg_dual = -advantages * clip_ratio_c
        dual = (advantages < 0) & (pg > pg_dual)
        pg = torch.where(dual, pg_dual, pg)
    loss = pg if is_weights is None else is_weights.detach() * pg

    if ref_logprobs is not None:
        kl = kl_penalty(logprobs, ref_logprobs, kl_estimator)
    elif kl_coef != 0.0:
        raise ValueError(f"kl_coef={kl_coef} needs ref_logprobs (reference-policy log-probs); "
                         "pass them or set kl_coef=0")
    else:
        kl = torch.zeros_like(pg)
    if kl_coef != 0.0:
        loss = loss + kl_coef * kl
    if entropy_coef != 0.0:
        if entropy is None:
            raise ValueError(f"entropy_coef={entropy_coef} needs the per-token entropy; pass entropy= or set it to 0")
        loss = loss - entropy_coef * entropy

    stats = {
        "pg": pg, "kl": kl, "ratio": ratio, "log_ratio": log_ratio,
        "clipped_high": (use_clipped & (advantages > 0)).to(pg.dtype),
        "clipped_low": (use_clipped & (advantages < 0)).to(pg.dtype),
        "dual_clipped": dual.to(pg.dtype),
    }
    return loss, stats


# --------------------------------------------------------------------------- aggregation


def agg_loss(
    loss_mat: Tensor, mask: Tensor, mode: str, *,
    global_num_tokens: Tensor | float | None = None, global_num_seqs: Tensor | float | None = None,
    loss_scale_factor: float | None = None,
) -> Tensor:
    """Reduce a per-token loss (B, T) with mask (B, T) to a scalar (verl `agg_loss` in core_algos.py).

    - "token-mean":              Σ(L·M) / N_tok,  N_tok = global_num_tokens or local Σ M   (DAPO eq. 12)
    - "seq-mean-token-sum":      Σ_i s_i / N_seq, s_i = Σ_t L·M,
                                 N_seq = global_num_seqs or the local number of rows with Σ_t M > 0
    - "seq-mean-token-mean":     Σ_i s_i / N_seq, s_i = Σ_t L·M / Σ_t M
                                 (DeepSeekMath eq. 3: (1/G) Σ_i (1/|o_i|) Σ_t)
    - "seq-mean-token-sum-norm": Σ_i s_i / (N_seq · S), s_i = Σ_t L·M, S = loss_scale_factor or T =
      mask.shape[-1] (Dr. GRPO, arXiv 2503.20783: (1/G) Σ_i Σ_t / MAX_TOKENS, a constant per-token
      weight whatever a response's length), N_seq as above.

    Global counts: `global_num_tokens` is the all-reduced valid-token count of the WHOLE mini-batch (every
    micro-batch on every DP rank); `global_num_seqs` the all-reduced number of non-empty sequences. The
    returned value is then this micro-batch's share: summing it (and its gradient) over micro-batches and
    DP ranks gives the exact global mean. The trainer must SUM gradients across ranks, not average them.
    Without global counts the local counts are used (= the exact mean when there is one micro-batch, one rank).

    Denominators are clamped to >= 1 (>0 per row), so an all-masked micro-batch gives 0 with zero
    gradient instead of NaN. Rows with no valid token are excluded from seq-mean counts (verl). Masked
    positions are zeroed with `where`, so NaN/inf padding cannot leak into the loss or the gradient.
    For "seq-mean-token-sum-norm" pass a constant loss_scale_factor (e.g. the max response length):
    the default T depends on a micro-batch's padding, so the result would depend on micro-batching.
    """
    if mode not in AGG_MODES:
        raise ValueError(f"unknown loss_agg_mode {mode!r}; use one of {', '.join(AGG_MODES)}")
    if mask.shape != loss_mat.shape:
        raise ValueError(f"agg_loss: mask shape {tuple(mask.shape)} != loss shape {tuple(loss_mat.shape)}")
    m = mask.to(loss_mat.dtype)
    lm = torch.where(m != 0, loss_mat * m, torch.zeros_like(loss_mat))
    if mode == "token-mean":
        n_tok = m.sum() if global_num_tokens is None else _as_tensor(global_num_tokens, lm)
        return lm.sum() / n_tok.clamp(min=1.0)
    if lm.dim() < 2:
        raise ValueError(f"loss_agg_mode={mode!r} needs (B, T) inputs with one row per sequence, got {tuple(lm.shape)}")
    seq_sum = lm.sum(-1)  # (B,)
    seq_tokens = m.sum(-1)  # (B,)
    nonempty = seq_tokens > 0
    n_seq = nonempty.sum().to(lm.dtype) if global_num_seqs is None else _as_tensor(global_num_seqs, lm)
    if mode == "seq-mean-token-mean":
        seq_sum = seq_sum / torch.where(nonempty, seq_tokens, torch.ones_like(seq_tokens))
    elif mode == "seq-mean-token-sum-norm":  # Dr. GRPO: (1/N_seq) Σ_i Σ_t L_it / S over the whole mini-batch
        scale = float(mask.shape[-1]) if loss_scale_factor is None else float(loss_scale_factor)
        if scale <= 0:
            raise ValueError(f"agg_loss: loss_scale_factor={loss_scale_factor} must be > 0")
        seq_sum = seq_sum / scale
    return seq_sum.sum() / n_seq.clamp(min=1.0)


def _as_tensor(x: Tensor | float, like: Tensor) -> Tensor:
    return torch.as_tensor(x, dtype=like.dtype, device=like.device).detach()


# --------------------------------------------------------------------------- TIS


def tis_weights(
    old_logprobs: Tensor, rollout_logprobs: Tensor, mask: Tensor, *, level: str = "token", cap: float | None = 2.0
) -> tuple[Tensor, dict[str, float]]:
    """Truncated importance weights w = min(π_old/π_rollout, cap) (B, T), detached and zero at masked tokens.

    Corrects the rollout-engine/trainer probability mismatch (Yao et al. 2025 "off-policy RL" blog; verl
    PR #2953 and `rollout_corr_helper`; docs/algorithms.md, "Truncated importance sampling"). Upper truncation
    only. level="token": per-token ratio exp(clamp(ℓ^old − ℓ^μ, ±20)); level="sequence":
    exp(clamp(Σ_t M·(ℓ^old − ℓ^μ), ±20)) broadcast to the row's tokens (unbiased, high variance). cap=None
    only measures (no truncation).

    Metrics are measured BEFORE truncation over the units (valid tokens, or non-empty sequences):
    actor/tis_ess = (Σw)² / (n·Σw²), the effective sample size as a fraction in (0, 1] (1 = all equal);
    actor/tis_truncated_frac = share of units with w > cap; actor/tis_ratio_mean, actor/tis_ratio_max;
    actor/tis_log_ratio_abs_mean = mean |log w|.
    """
    if level not in RATIO_LEVELS:
        raise ValueError(f"tis level {level!r}: use 'token' or 'sequence'")
    if cap is not None and cap <= 0:
        raise ValueError(f"tis cap={cap} must be > 0 (verl/DAPO-TIS use 2.0)")
    with torch.no_grad():
        m = mask.to(old_logprobs.dtype)
        diff = torch.where(m != 0, old_logprobs - rollout_logprobs, torch.zeros_like(old_logprobs))
        if level == "token":
            log_w = diff.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)  # (B, T)
            units = m != 0
            w_units, log_units = log_w.exp()[units], log_w[units]
            w = log_w.exp() * m
        else:
            log_w = diff.sum(-1).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)  # (B,)
            units = m.sum(-1) > 0
            w_units, log_units = log_w.exp()[units], log_w[units]
            w = log_w.exp()[:, None] * m
        metrics = _tis_metrics(w_units, log_units, cap)
        if cap is not None:
            w = w.clamp(max=cap)
    return w, metrics


def _tis_metrics(w: Tensor, log_w: Tensor, cap: float | None) -> dict[str, float]:
    n = w.numel()
    if n == 0:
        return {"actor/tis_ess": 1.0, "actor/tis_truncated_frac": 0.0, "actor/tis_ratio_mean": 1.0,
                "actor/tis_ratio_max": 1.0, "actor/tis_log_ratio_abs_mean": 0.0}
    ess = w.sum().square() / (n * w.square().sum())
    trunc = (w > cap).to(w.dtype).mean() if cap is not None else w.new_zeros(())
    vals = torch.stack([ess, trunc, w.mean(), w.max(), log_w.abs().mean()]).tolist()
    names = ["actor/tis_ess", "actor/tis_truncated_frac", "actor/tis_ratio_mean", "actor/tis_ratio_max",
             "actor/tis_log_ratio_abs_mean"]
    return dict(zip(names, vals))


# --------------------------------------------------------------------------- policy loss


def policy_loss(
    logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, response_mask: Tensor, *,
    eps_low: float = 0.2, eps_high: float = 0.28, clip_ratio_c: float | None = None,
    loss_agg_mode: str = "token-mean", ratio_level: str = "token",
    ref_logprobs: Tensor | None = None, kl_coef: float = 0.0, kl_estimator: str = "k3",
    rollout_logprobs: Tensor | None = None, tis_cap: float | None = None, tis_level: str = "token",
    is_weights: Tensor | None = None, entropy: Tensor | None = None, entropy_coef: float = 0.0,
    global_num_tokens: Tensor | float | None = None, global_num_seqs: Tensor | float | None = None,
    loss_scale_factor: float | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """Scalar policy loss for logprobs/old_logprobs/response_mask (B, T), advantages (B,) or (B, T).

    = agg_loss(token_loss_terms(...)) with the GRPO/DAPO pieces: log-ratio clamp ±20,
    asymmetric clip (eps_low/eps_high), optional dual clip (clip_ratio_c > 1), optional TIS weights
    (tis_cap with rollout_logprobs; tis_level), extra detached per-token `is_weights` (e.g. replay
    corrections), KL to ref_logprobs in the loss (kl_coef, kl_estimator), entropy bonus (entropy_coef).

    ratio_level="sequence" is GSPO (arXiv 2507.18071 eq. 7, GSPO-token eq. 13): every token of row i uses
    s_i = exp(mean_t(ℓ^θ − ℓ^old)) with gradient s_i·∇ℓ^θ_t; the paper aggregates with
    "seq-mean-token-mean" and much smaller clip ranges (3e-4 / 4e-4) — set them explicitly.

    Global counts and the sum-over-ranks convention: see `agg_loss` and the module docstring.
    Metrics: loss/* use the same normalisation as the loss (with global counts they are this
    micro-batch's share: sum them over micro-batches and ranks); actor/* are masked means over this
    call's valid tokens (weight them by actor/num_tokens when combining).
    """
    _validate(logprobs, old_logprobs, advantages, response_mask, ref_logprobs=ref_logprobs,
              rollout_logprobs=rollout_logprobs, entropy=entropy, is_weights=is_weights)
    check_loss_params(eps_low, eps_high, clip_ratio_c, loss_agg_mode, ratio_level, kl_coef, kl_estimator,
                      tis_cap, tis_level)
    mask = response_mask.to(logprobs.dtype)
    adv = advantages[:, None].expand_as(logprobs) if advantages.dim() == 1 else advantages  # (B, T)
    old = old_logprobs.detach()
    if ratio_level == "sequence":
        # GSPO-token: ℓ^θ − old_eff = sg(mean_t(ℓ^θ − ℓ^old)) + ℓ^θ − sg(ℓ^θ): value = the sequence
        # log-ratio on every token, gradient = 1 w.r.t. each ℓ^θ_t. Reuses token_loss_terms unchanged.
        n_tok = mask.sum(-1).clamp(min=1.0)
        seq_log_ratio = ((logprobs.detach() - old) * mask).sum(-1) / n_tok  # (B,)
        old = logprobs.detach() - seq_log_ratio[:, None]

    weights = None if is_weights is None else is_weights.detach()
    metrics: dict[str, float] = {}
    if tis_cap is not None:
        if rollout_logprobs is None:
            raise ValueError("tis_cap is set but rollout_logprobs is None: pass the rollout engine's log-probs, "
                             "or turn TIS off (tis_cap=None; config algorithm.loss.tis_level=null)")
        tis_w, metrics = tis_weights(old_logprobs.detach(), rollout_logprobs, mask, level=tis_level, cap=tis_cap)
        weights = tis_w if weights is None else weights * tis_w

    loss_tok, stats = token_loss_terms(
        logprobs, old, adv, eps_low=eps_low, eps_high=eps_high, clip_ratio_c=clip_ratio_c,
        ref_logprobs=ref_logprobs, kl_coef=kl_coef, kl_estimator=kl_estimator, is_weights=weights,
        entropy=entropy, entropy_coef=entropy_coef,
    )
    agg_kw: dict[str, Any] = dict(mode=loss_agg_mode, global_num_tokens=global_num_tokens,
                                  global_num_seqs=global_num_seqs, loss_scale_factor=loss_scale_factor)
    loss = agg_loss(loss_tok, mask, **agg_kw)
    metrics.update(_loss_metrics(loss, stats, weights, entropy, logprobs, old_logprobs, mask, agg_kw))
    return loss, metrics


def _loss_metrics(loss: Tensor, stats: dict[str, Tensor], weights: Tensor | None, entropy: Tensor | None,
                  logprobs: Tensor, old_logprobs: Tensor, mask: Tensor, agg_kw: dict[str, Any]) -> dict[str, float]:
    """All metrics in one device->host transfer (one sync on GPU)."""
    with torch.no_grad():
        n_tok = mask.sum()

        def mmean(x: Tensor) -> Tensor:
            return (x.detach() * mask).sum() / n_tok.clamp(min=1.0)

        pg = stats["pg"].detach() if weights is None else stats["pg"].detach() * weights
        ratio = stats["ratio"].detach()
        vals = {
            "loss/total": loss.detach(),
            "loss/policy": agg_loss(pg, mask, **agg_kw),
            "loss/kl": agg_loss(stats["kl"].detach(), mask, **agg_kw),
            "actor/pg_clipfrac": mmean(stats["clipped_high"] + stats["clipped_low"]),
            "actor/pg_clipfrac_high": mmean(stats["clipped_high"]),
            "actor/pg_clipfrac_low": mmean(stats["clipped_low"]),
            "actor/pg_clipfrac_dual": mmean(stats["dual_clipped"]),
            # verl ppo_kl: mean(ℓ^old − ℓ^θ), the k1 estimate of KL(π_old || π_θ) on the sampled tokens.
            "actor/approx_kl": mmean(old_logprobs - logprobs),
            "actor/ratio_mean": mmean(ratio),
            "actor/ratio_max": _masked_max(ratio, mask),
            "actor/kl": mmean(stats["kl"]),
            "actor/num_tokens": n_tok,
        }
        if entropy is not None:
            vals["loss/entropy"] = agg_loss(entropy.detach(), mask, **agg_kw)
            vals["actor/entropy"] = mmean(entropy)
        host = torch.stack([v.to(torch.float64).reshape(()) for v in vals.values()]).tolist()
    return dict(zip(vals.keys(), host))


def _masked_max(x: Tensor, mask: Tensor) -> Tensor:
    """Max of x over valid positions; 0 when there are none (x is a positive ratio here)."""
    if x.numel() == 0:
        return x.new_zeros(())
    return torch.where(mask != 0, x, torch.zeros_like(x)).max()


def _validate(logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, response_mask: Tensor,
              **optional: Tensor | None) -> None:
    """Shapes must match (B, T); every float input must be finite everywhere (padding included: a NaN
    at a masked position still poisons a sum or a gradient)."""
    if logprobs.dim() != 2:
        raise ValueError(f"policy_loss: logprobs must be (B, T), got shape {tuple(logprobs.shape)}")
    shape = tuple(logprobs.shape)
    named = {"old_logprobs": old_logprobs, "response_mask": response_mask, **optional}
    for name, t in named.items():
        if t is not None and tuple(t.shape) != shape:
            raise ValueError(f"policy_loss: {name} has shape {tuple(t.shape)}, expected {shape} like logprobs")
    if tuple(advantages.shape) not in (shape, shape[:1]):
        raise ValueError(f"policy_loss: advantages has shape {tuple(advantages.shape)}, "
                         f"expected {shape[:1]} or {shape}")
    floats = {"logprobs": logprobs, "old_logprobs": old_logprobs, "advantages": advantages,
              "response_mask": response_mask, **{k: v for k, v in optional.items() if v is not None}}
    finite = torch.stack([torch.isfinite(t.detach()).all() for t in floats.values()]).tolist()
    for (name, t), ok in zip(floats.items(), finite):
        if not ok:
            bad = (~torch.isfinite(t.detach())).nonzero()
            raise ValueError(
                f"policy_loss: {name} has {len(bad)} non-finite value(s) (NaN/inf), first at index "
                f"{tuple(bad[0].tolist())}; padding positions must hold finite values (e.g. 0), and a NaN in a "
                "valid position means the upstream forward pass or rollout engine produced it"
            )


def check_loss_params(eps_low: float, eps_high: float, clip_ratio_c: float | None, mode: str, ratio_level: str,
                      kl_coef: float, kl_estimator: str, tis_cap: float | None, tis_level: str) -> None:
    """Raise ValueError naming the loss parameter that is out of range (shared by rl.ops.fused_loss)."""
    if not 0.0 <= eps_low < 1.0 or eps_high < 0.0:
        raise ValueError(f"clip range: need 0 <= eps_low < 1 and eps_high >= 0, got {eps_low}, {eps_high}")
    if clip_ratio_c is not None and clip_ratio_c <= 1.0:
        raise ValueError(f"clip_ratio_c={clip_ratio_c}: the dual-clip bound must be > 1 (verl 3.0, DAPO 10.0) or None")
    if mode not in AGG_MODES:
        raise ValueError(f"unknown loss_agg_mode {mode!r}; use one of {', '.join(AGG_MODES)}")
    if ratio_level not in RATIO_LEVELS:
        raise ValueError(f"ratio_level={ratio_level!r}: use 'token' (PPO/GRPO) or 'sequence' (GSPO)")
    if kl_coef < 0:
        raise ValueError(f"kl_coef={kl_coef} must be >= 0")
    if kl_estimator not in KL_ESTIMATORS:
        raise ValueError(f"unknown kl_estimator {kl_estimator!r}; use one of {', '.join(KL_ESTIMATORS)}")
    if tis_level not in RATIO_LEVELS:
        raise ValueError(f"tis_level={tis_level!r}: use 'token' or 'sequence'")
    if tis_cap is not None and tis_cap <= 0:
        raise ValueError(f"tis_cap={tis_cap} must be > 0 (2.0 in verl's DAPO-TIS recipe) or None")
