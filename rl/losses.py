"""Policy-gradient loss: clipped surrogate (PPO/GRPO/DAPO/GSPO) or a plug-in per-token term, KL to a
reference, entropy bonus, truncated importance sampling (TIS), and the loss aggregation modes. Pure torch,
no distributed calls.

    cfg = LossConfig()                                                  # rl/loss_config.py
    inputs = LossInputs(old_logprobs, advantages, response_mask, global_num_tokens=n_tok_all_ranks)
    loss, metrics = policy_loss(logprobs, inputs, cfg)                  # (B, T) inputs -> scalar
    loss.backward()

Layers, each usable on its own (the math, with worked numbers, is in docs/algorithms.md, `algorithm.loss`):
- `POLICY_TERMS`: per-token policy-gradient terms by name (`ppo_clip`; plug-ins via `cfg.term`).
- `token_loss_terms`: the per-token loss, elementwise over any shape. The fused kernel in rl/ops
  imports it, so the kernel and `policy_loss` share one definition of the math.
- `agg_loss`: (B, T) per-token loss + mask -> scalar, four verl modes, exact global normalisers.
- `kl_penalty`, `tis_weights`: the KL estimators and the rollout/trainer mismatch weights;
  `importance_weights`: the one place that turns them (and PER weights) into the loss's per-token weights.
- `policy_loss`: validation + optional GSPO sequence ratio + the layers above + `metric_table`.

Distributed convention (read this before writing a trainer): the loss returned for one micro-batch on
one rank is that micro-batch's SHARE of the global mini-batch loss. With `global_num_tokens` = the
all-reduced number of valid tokens of the whole mini-batch (all micro-batches, all DP ranks), the
token-mean loss is Σ(L·M)_local / global_num_tokens; gradients must then be SUMMED over micro-batches
(plain accumulation) and over DP ranks (all-reduce SUM, or DeepSpeed's average × world_size). The sum
equals the gradient of the exact global token mean Σ_all(L·M)/Σ_all M (DAPO arXiv 2503.14476 eq. 12),
independently of how the tokens are split. verl instead multiplies by dp_size to undo DDP averaging.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from rl.registry import Registry

if TYPE_CHECKING:
    from rl.loss_config import LossConfig, LossInputs

AGG_MODES = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm")
KL_ESTIMATORS = ("k1", "k2", "k3", "abs", "k1+", "k2+", "k3+")
RATIO_LEVELS = ("token", "sequence")
LOG_RATIO_CLAMP = 20.0  # exp(20) ≈ 4.9e8: keeps ratios finite for very stale tokens (verl)
POLICY_TERMS: Registry[Callable[..., "Tensor | tuple[Tensor, dict[str, Tensor]]"]] = Registry("policy-loss term")
register_policy_term = POLICY_TERMS.register
STAT_KEYS = ("clipped_high", "clipped_low", "dual_clipped")
"""Per-token 0/1 flags a term may report (logged as actor/pg_clipfrac*); missing ones are zeros."""


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


@register_policy_term("ppo_clip")
def ppo_clip(logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, cfg: LossConfig) -> tuple[Tensor, dict]:
    """verl's `compute_policy_loss_vanilla`: with r = exp(clamp(ℓ^θ − ℓ^old, ±20)),
    max(−A·r, −A·clip(r, 1−eps_low, 1+eps_high)) (PPO arXiv 1707.06347 eq. 7; decoupled clip = DAPO
    arXiv 2503.14476 eq. 10), then for A < 0 the dual clip min(·, −A·c) (arXiv 1912.09729 eq. 5).
    Flags: clipped_high = A > 0 and r > 1+eps_high; clipped_low = A < 0 and r < 1−eps_low;
    dual_clipped = A < 0 and −A·r > −A·c."""
    log_ratio = (logprobs - old_logprobs).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    ratio = log_ratio.exp()
    pg_unclipped = -advantages * ratio
    pg_clipped = -advantages * ratio.clamp(1.0 - cfg.eps_low, 1.0 + cfg.eps_high)
    use_clipped = pg_clipped > pg_unclipped  # strict: at a tie the unclipped branch carries the gradient
    pg = torch.where(use_clipped, pg_clipped, pg_unclipped)
    dual = torch.zeros_like(use_clipped)
    if cfg.clip_ratio_c is not None:
        # A < 0 and r > c: loss capped at |A|·c with zero gradient, so one huge ratio cannot dominate.
        pg_dual = -advantages * cfg.clip_ratio_c
        dual = (advantages < 0) & (pg > pg_dual)
        pg = torch.where(dual, pg_dual, pg)
    return pg, {"ratio": ratio, "log_ratio": log_ratio,
                "clipped_high": (use_clipped & (advantages > 0)).to(pg.dtype),
                "clipped_low": (use_clipped & (advantages < 0)).to(pg.dtype), "dual_clipped": dual.to(pg.dtype)}


def run_term(cfg: LossConfig, logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor) -> tuple[Tensor, dict]:
    """`cfg.term`'s per-token policy-gradient loss and its stats, with ratio, log_ratio and the STAT_KEYS
    flags filled in when the term does not report them."""
    out = _term(cfg.term)(logprobs, old_logprobs, advantages, cfg, **cfg.term_params)
    pg, stats = out if isinstance(out, tuple) else (out, {})
    if "ratio" not in stats:
        stats["log_ratio"] = (logprobs - old_logprobs).detach().clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
        stats["ratio"] = stats["log_ratio"].exp()
    for k in STAT_KEYS:
        stats.setdefault(k, torch.zeros_like(pg))
    return pg, stats


@functools.lru_cache(maxsize=None)
def _term(spec: str) -> Callable:
    """The term a spec names, resolved once per process (a plug-in file is not re-stat'ed per chunk)."""
    return POLICY_TERMS.resolve(spec)


def token_loss_terms(
    logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, cfg: LossConfig, *,
    ref_logprobs: Tensor | None = None, is_weights: Tensor | None = None, entropy: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Per-token loss L_tok = is_weights * pg_tok + kl_coef * kl_tok - entropy_coef * entropy, all elementwise,
    same shape as logprobs (advantages already broadcast per token), pg_tok = `cfg.term` (`ppo_clip` by
    default). Returns (L_tok, stats) where stats holds per-token tensors: "pg", "kl" (kl_tok or zeros),
    "ratio", "log_ratio", and the STAT_KEYS flags (float 0/1) — unmasked; the caller masks and reduces.
    `is_weights` (TIS / replay corrections) are detached. Stats are not detached."""
    pg, stats = run_term(cfg, logprobs, old_logprobs, advantages)
    loss = pg if is_weights is None else is_weights.detach() * pg
    if ref_logprobs is not None:
        kl = kl_penalty(logprobs, ref_logprobs, cfg.kl_estimator)
    elif cfg.kl_coef != 0.0:
        raise ValueError(f"kl_coef={cfg.kl_coef} needs ref_logprobs (reference-policy log-probs); "
                         "pass them or set kl_coef=0")
    else:
        kl = torch.zeros_like(pg)
    if cfg.kl_coef != 0.0:
        loss = loss + cfg.kl_coef * kl
    if cfg.entropy_coef != 0.0:
        if entropy is None:
            raise ValueError(f"entropy_coef={cfg.entropy_coef} needs the per-token entropy; pass entropy= or set it to 0")
        loss = loss - cfg.entropy_coef * entropy
    return loss, {**stats, "pg": pg, "kl": kl}

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


def importance_weights(inputs: LossInputs, cfg: LossConfig, mask: Tensor) -> tuple[Tensor | None, dict[str, float]]:
    """The loss's detached per-token weights: `inputs.is_weights` (PER) × the TIS weight min(π_old/π_rollout,
    tis_cap) on the rows in `cfg.tis_scope` (1 elsewhere), and the TIS metrics over those rows. None when
    every weight is 1. The one importance-weight path of both loss implementations: TIS against the engine
    (scope `all`) and the decoupled-PPO staleness weight of replayed rows (scope `replayed`, arXiv 2110.00641)
    are the same formula. Inputs (B, T) like `mask`, or packed (1, N)."""
    w = None if inputs.is_weights is None else inputs.is_weights.detach()
    if cfg.tis_level is None or (cfg.tis_scope == "replayed" and inputs.replayed is None):
        return w, {}
    if inputs.rollout_logprobs is None:
        raise ValueError("TIS is on (loss.tis_level) but rollout_logprobs is None: pass the rollout engine's "
                         "log-probs, or turn TIS off (config algorithm.loss.tis_level=null)")
    scope = mask if cfg.tis_scope == "all" else mask * inputs.replayed.to(mask.dtype)
    tis_w, metrics = tis_weights(inputs.old_logprobs.detach(), inputs.rollout_logprobs, scope,
                                 level=cfg.tis_level, cap=cfg.tis_cap)
    if cfg.tis_scope == "replayed":
        tis_w = torch.where(inputs.replayed, tis_w, torch.ones_like(tis_w))
    return (tis_w if w is None else w * tis_w), metrics


# --------------------------------------------------------------------------- policy loss


def policy_loss(logprobs: Tensor, inputs: LossInputs, cfg: LossConfig, *,
                entropy: Tensor | None = None) -> tuple[Tensor, dict[str, float]]:
    """Scalar policy loss for logprobs (B, T) and `inputs` of the same shape (advantages (B,) or (B, T);
    `inputs.response_mask` required): agg_loss(token_loss_terms(...)) with `importance_weights` applied.

    ratio_level="sequence" is GSPO (arXiv 2507.18071 eq. 7, GSPO-token eq. 13): every token of row i uses
    s_i = exp(mean_t(ℓ^θ − ℓ^old)) with gradient s_i·∇ℓ^θ_t; the paper aggregates with
    "seq-mean-token-mean" and much smaller clip ranges (3e-4 / 4e-4) — set them explicitly.

    Global counts and the sum-over-ranks convention: see `agg_loss` and the module docstring.
    Metrics (`metric_table`): loss/* use the same normalisation as the loss (with global counts they are this
    micro-batch's share: sum them over micro-batches and ranks); actor/* are masked means over this
    call's valid tokens (weight them by actor/num_tokens when combining).
    """
    if inputs.response_mask is None:
        raise ValueError("policy_loss: inputs.response_mask is required for (B, T) inputs")
    _validate(logprobs, inputs, entropy)
    mask = inputs.response_mask.to(logprobs.dtype)
    adv = inputs.advantages
    adv = adv[:, None].expand_as(logprobs) if adv.dim() == 1 else adv  # (B, T)
    old_logprobs = inputs.old_logprobs.detach()
    old = old_logprobs
    if cfg.ratio_level == "sequence":
        # GSPO-token: ℓ^θ − old_eff = sg(mean_t(ℓ^θ − ℓ^old)) + ℓ^θ − sg(ℓ^θ): value = the sequence
        # log-ratio on every token, gradient = 1 w.r.t. each ℓ^θ_t. Reuses token_loss_terms unchanged.
        n_tok = mask.sum(-1).clamp(min=1.0)
        seq_log_ratio = ((logprobs.detach() - old) * mask).sum(-1) / n_tok  # (B,)
        old = logprobs.detach() - seq_log_ratio[:, None]
    weights, tis_metrics = importance_weights(inputs, cfg, mask)
    loss_tok, stats = token_loss_terms(logprobs, old, adv, cfg, ref_logprobs=inputs.ref_logprobs,
                                       is_weights=weights, entropy=entropy)
    agg = dict(mode=cfg.loss_agg_mode, global_num_tokens=inputs.global_num_tokens,
               global_num_seqs=inputs.global_num_seqs, loss_scale_factor=cfg.loss_scale_factor)
    loss = agg_loss(loss_tok, mask, **agg)
    with torch.no_grad():
        pg = stats["pg"].detach() if weights is None else stats["pg"].detach() * weights
        ratio = stats["ratio"].detach()
        per_token = {"pg": pg, "kl": stats["kl"].detach(), "approx_kl": old_logprobs - logprobs.detach(),
                     "ratio": ratio, **{k: stats[k].detach() for k in STAT_KEYS}}
        if entropy is not None:
            per_token["entropy"] = entropy.detach()
        sums = {k: (v * mask).sum() for k, v in per_token.items()}
        parts = {k: agg_loss(per_token[k], mask, **agg) for k in ("pg", "kl", "entropy") if k in per_token}
        metrics = metric_table(loss.detach(), sums, parts, mask.sum(), _masked_max(ratio, mask))
    return loss, {**tis_metrics, **metrics}


def metric_table(loss: Tensor, sums: dict[str, Tensor], parts: dict[str, Tensor], n_tok: Tensor,
                 ratio_max: Tensor) -> dict[str, float]:
    """The metrics of one loss call, for both implementations (`policy_loss` and the fused op), in one
    device->host transfer. `sums`: masked sums over this call's valid tokens of pg, kl, approx_kl
    (ℓ^old − ℓ^θ, verl ppo_kl: the k1 estimate of KL(π_old‖π_θ)), ratio, the STAT_KEYS flags and, when
    computed, entropy; `parts`: pg, kl (and entropy) aggregated like the loss; `n_tok`: valid tokens."""
    local = n_tok.clamp(min=1.0)
    vals = {
        "loss/total": loss, "loss/policy": parts["pg"], "loss/kl": parts["kl"],
        "actor/pg_clipfrac": (sums["clipped_high"] + sums["clipped_low"]) / local,
        "actor/pg_clipfrac_high": sums["clipped_high"] / local, "actor/pg_clipfrac_low": sums["clipped_low"] / local,
        "actor/pg_clipfrac_dual": sums["dual_clipped"] / local, "actor/approx_kl": sums["approx_kl"] / local,
        "actor/ratio_mean": sums["ratio"] / local, "actor/ratio_max": ratio_max, "actor/kl": sums["kl"] / local,
        "actor/num_tokens": n_tok,
    }
    if "entropy" in parts:
        vals["loss/entropy"] = parts["entropy"]
        vals["actor/entropy"] = sums["entropy"] / local
    host = torch.stack([v.to(torch.float64).reshape(()) for v in vals.values()]).tolist()
    return dict(zip(vals.keys(), host))


def _masked_max(x: Tensor, mask: Tensor) -> Tensor:
    """Max of x over valid positions; 0 when there are none (x is a positive ratio here)."""
    if x.numel() == 0:
        return x.new_zeros(())
    return torch.where(mask != 0, x, torch.zeros_like(x)).max()


def _validate(logprobs: Tensor, inputs: LossInputs, entropy: Tensor | None) -> None:
    """Shapes must match (B, T); every float input must be finite everywhere (padding included: a NaN
    at a masked position still poisons a sum or a gradient)."""
    if logprobs.dim() != 2:
        raise ValueError(f"policy_loss: logprobs must be (B, T), got shape {tuple(logprobs.shape)}")
    shape = tuple(logprobs.shape)
    named = {"old_logprobs": inputs.old_logprobs, "response_mask": inputs.response_mask,
             "ref_logprobs": inputs.ref_logprobs, "rollout_logprobs": inputs.rollout_logprobs,
             "is_weights": inputs.is_weights, "replayed": inputs.replayed, "entropy": entropy}
    for name, t in named.items():
        if t is not None and tuple(t.shape) != shape:
            raise ValueError(f"policy_loss: {name} has shape {tuple(t.shape)}, expected {shape} like logprobs")
    if tuple(inputs.advantages.shape) not in (shape, shape[:1]):
        raise ValueError(f"policy_loss: advantages has shape {tuple(inputs.advantages.shape)}, "
                         f"expected {shape[:1]} or {shape}")
    floats = {"logprobs": logprobs, "advantages": inputs.advantages,
              **{k: v for k, v in named.items() if v is not None and v.is_floating_point()}}
    finite = torch.stack([torch.isfinite(t.detach()).all() for t in floats.values()]).tolist()
    for (name, t), ok in zip(floats.items(), finite):
        if not ok:
            bad = (~torch.isfinite(t.detach())).nonzero()
            raise ValueError(
                f"policy_loss: {name} has {len(bad)} non-finite value(s) (NaN/inf), first at index "
                f"{tuple(bad[0].tolist())}; padding positions must hold finite values (e.g. 0), and a NaN in a "
                "valid position means the upstream forward pass or rollout engine produced it"
            )
