"""The two records the loss is called with: `LossConfig` (what loss) and `LossInputs` (on which tokens).

    cfg = LossConfig(eps_high=0.28, tis_level="token")           # validated here, and only here
    inputs = LossInputs(old_logprobs, advantages, response_mask, rollout_logprobs=mu, global_num_tokens=n)
    loss, metrics = policy_loss(logprobs, inputs, cfg)            # rl/losses.py; the fused twin in rl/ops

`LossConfig` is the `algorithm.loss` section of the config schema itself (launch/schema_algorithm.py
embeds it), and the driver sends the same frozen object to every trainer rank: defaults, validation
and the error messages live in this one class. `term` names the per-token policy-gradient term, a
registered name (`ppo_clip`) or a plug-in `pkg.module:fn` / `path/to/file.py:fn` (docs/algorithms.md,
"Plugging in a policy-loss term"); it is resolved and probed when the config is built, before any
model loads.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from typing import Any, NoReturn

import torch
from torch import Tensor

from rl.losses import AGG_MODES, KL_ESTIMATORS, POLICY_TERMS, RATIO_LEVELS
from rl.registry import PluginError, check_kwargs, is_file_spec

TIS_SCOPES = ("all", "replayed")


def _fail(key: str, value: Any, fix: str) -> NoReturn:
    raise ValueError(f"algorithm.loss.{key}={value!r}: {fix}")


@dataclass(frozen=True)
class LossConfig:
    term: str = "ppo_clip"
    """Per-token policy-gradient term: `ppo_clip` (PPO/GRPO/DAPO clipped surrogate with optional dual clip),
    or your own `pkg.module:fn` / `path/to/file.py:fn` with signature fn(logprobs, old_logprobs, advantages,
    cfg, **term_params) -> per-token loss (docs/algorithms.md, "Plugging in a policy-loss term")."""
    term_params: dict[str, Any] = field(default_factory=dict)
    """Keyword parameters of a plug-in `term` (each must be a parameter of the function)."""
    eps_low: float = 0.2
    """Lower clip: ratio floor 1 − eps_low for negative advantages (PPO/GRPO 0.2)."""
    eps_high: float = 0.28
    """Upper clip: ratio ceiling 1 + eps_high for positive advantages (DAPO clip-higher 0.28; GRPO 0.2)."""
    clip_ratio_c: float | None = None
    """Dual-clip bound c > 1 for negative advantages (verl 3.0, DAPO script 10.0); null disables."""
    loss_agg_mode: str = "token-mean"
    """token-mean (DAPO), seq-mean-token-mean (DeepSeekMath GRPO), seq-mean-token-sum,
    seq-mean-token-sum-norm (Dr. GRPO)."""
    ratio_level: str = "token"
    """Importance ratio per `token` (PPO/GRPO) or per `sequence` (GSPO: geometric mean over the response)."""
    kl_coef: float = 0.0
    """β of the KL-to-reference term added to the loss (DeepSeekMath 0.04, R1-Zero 0.001, DAPO 0);
    > 0 loads a reference model."""
    kl_estimator: str = "k3"
    """KL estimator in the loss: k1, k2, k3 (DeepSeekMath), abs, or straight-through k1+/k2+/k3+
    (value of kN, gradient of k2)."""
    entropy_coef: float = 0.0
    """Entropy bonus coefficient (loss −= coef·entropy)."""
    tis_level: str | None = None
    """Truncated importance sampling against the rollout engine's log-probs: `token`, `sequence`, or null (off)."""
    tis_cap: float = 2.0
    """TIS truncation C: weights min(π_old/π_rollout, C) (verl DAPO-TIS recipe: 2.0)."""
    tis_scope: str = "all"
    """Rows TIS weights: `all`, or `replayed` (only rows drawn from the replay buffer; the decoupled-PPO
    correction of stale rows, arXiv 2110.00641, which replay.staleness_cap sets up when TIS is off)."""
    loss_scale_factor: float | None = None
    """Constant divisor S of seq-mean-token-sum-norm (Dr. GRPO: the generation budget); required for that mode."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.eps_low < 1.0:
            _fail("eps_low", self.eps_low, "must be in [0, 1); 0.2 is standard")
        if self.eps_high < 0.0:
            _fail("eps_high", self.eps_high, "must be >= 0; 0.28 (DAPO) or 0.2 (GRPO)")
        if self.clip_ratio_c is not None and self.clip_ratio_c <= 1.0:
            _fail("clip_ratio_c", self.clip_ratio_c, "must be > 1 (verl 3.0, DAPO 10.0) or null")
        if self.loss_agg_mode not in AGG_MODES:
            _fail("loss_agg_mode", self.loss_agg_mode, f"use one of {', '.join(AGG_MODES)}")
        if self.ratio_level not in RATIO_LEVELS:
            _fail("ratio_level", self.ratio_level, "use `token` or `sequence` (GSPO)")
        if self.kl_coef < 0:
            _fail("kl_coef", self.kl_coef, "must be >= 0 (0 disables the KL term)")
        if self.kl_estimator not in KL_ESTIMATORS:
            _fail("kl_estimator", self.kl_estimator, f"use one of {', '.join(KL_ESTIMATORS)}")
        if self.tis_level is not None and self.tis_level not in RATIO_LEVELS:
            _fail("tis_level", self.tis_level, "use `token`, `sequence` or null (off)")
        if self.tis_cap <= 0:
            _fail("tis_cap", self.tis_cap, "must be > 0 (2.0 is verl's value)")
        if self.tis_scope not in TIS_SCOPES:
            _fail("tis_scope", self.tis_scope, "use `all` or `replayed` (only rows drawn from the replay buffer)")
        if self.loss_scale_factor is not None and self.loss_scale_factor <= 0:
            _fail("loss_scale_factor", self.loss_scale_factor, "must be > 0, e.g. rollout.max_new_tokens")
        if self.loss_agg_mode == "seq-mean-token-sum-norm" and self.loss_scale_factor is None:
            _fail("loss_scale_factor", None, "seq-mean-token-sum-norm needs a constant divisor (otherwise it "
                  "depends on micro-batch padding): set it to the generation budget, e.g. rollout.max_new_tokens")
        where, sep, attr = self.term.rpartition(":")
        if sep and is_file_spec(where):  # absolute, so trainer processes with another cwd load the same file
            object.__setattr__(self, "term", f"{os.path.abspath(where)}:{attr}")
        check_term(self)

    @property
    def fusable(self) -> bool:
        """Whether the fused linear→loss op computes this loss (token-mean, token ratios, token TIS)."""
        return self.loss_agg_mode == "token-mean" and self.ratio_level == "token" and self.tis_level != "sequence"

    @property
    def zero_advantage_is_zero(self) -> bool:
        """A row with advantage 0 adds exactly 0 to this loss and its gradient (every term is ∝ A, checked
        for plug-ins by `check_term`), so the trainer may skip it: true without KL and entropy terms."""
        return self.kl_coef == 0 and self.entropy_coef == 0


@dataclass(frozen=True)
class LossInputs:
    """Per-token tensors of one loss call besides the policy's own logprobs, all the shape of `logprobs`:
    (B, T) for `policy_loss`, packed (N,) valid tokens for `fused_policy_loss`. Detached inputs."""

    old_logprobs: Tensor
    """ℓ^old, the proximal policy's logprobs (the PPO ratio's denominator)."""
    advantages: Tensor
    """Â per token, or (B,) per row for `policy_loss`."""
    response_mask: Tensor | None = None
    """1 at valid tokens; required for (B, T) inputs, optional for packed ones."""
    rollout_logprobs: Tensor | None = None
    """ℓ^μ, the rollout engine's logprobs at sampling time (TIS)."""
    ref_logprobs: Tensor | None = None
    """ℓ^ref of the frozen reference policy (KL term)."""
    is_weights: Tensor | None = None
    """Extra detached per-token weights (PER weights of replayed rows); None = 1."""
    replayed: Tensor | None = None
    """Bool, True at tokens of rows drawn from the replay buffer (tis_scope=replayed); None = none is."""
    global_num_tokens: Tensor | float | None = None
    """Valid tokens of the whole mini-batch on every rank (the token-mean denominator); None = local."""
    global_num_seqs: Tensor | float | None = None
    """Non-empty rows of the whole mini-batch on every rank (the seq-mean denominator); None = local."""

    def per_token(self) -> dict[str, Tensor | None]:
        """The per-token fields (all but the global counts)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if not f.name.startswith("global_")}

    def map(self, fn: Callable[[Tensor], Tensor]) -> LossInputs:
        """The same inputs with `fn` applied to every per-token tensor (a layout change: packed -> (B, T))."""
        return replace(self, **{k: fn(v) for k, v in self.per_token().items() if v is not None})


_PROBE_HINT = "def my_term(logprobs, old_logprobs, advantages, cfg, **params) -> per-token loss (same shape)"


def check_term(cfg: LossConfig) -> None:
    """Resolve `cfg.term`, check its signature and `term_params`, and probe it once on a (2, 3) batch: it must
    return a finite per-token loss of the input shape, with a gradient, that is exactly 0 where the advantage
    is 0 (the trainer skips zero-advantage rows: arXiv 2503.14476's token-mean is unchanged by them)."""
    from rl.losses import run_term

    try:
        fn = POLICY_TERMS.resolve(cfg.term)
    except (PluginError, KeyError) as exc:
        _fail("term", cfg.term, str(exc))
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError) as exc:
        _fail("term", cfg.term, f"cannot read its signature ({exc})")
    params = sig.parameters.values()
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(positional) < 4 and not any(p.kind == p.VAR_POSITIONAL for p in params):
        _fail("term", cfg.term, f"signature {sig} must take (logprobs, old_logprobs, advantages, cfg): {_PROBE_HINT}")
    try:
        check_kwargs("policy-loss term", cfg.term, sig, cfg.term_params, skip=4, config_key="algorithm.loss.term_params")
    except TypeError as exc:
        _fail("term_params", dict(cfg.term_params), str(exc))
    try:
        with torch.inference_mode(False), torch.enable_grad():  # a config may be built under no_grad
            gen = torch.Generator().manual_seed(0)
            logprobs = (-torch.rand(2, 3, generator=gen)).requires_grad_(True)
            old = logprobs.detach() + 0.1 * torch.randn(2, 3, generator=gen)
            adv = torch.tensor([[1.0, -1.0, 0.0], [0.0, 0.5, -2.0]])
            pg, _ = run_term(cfg, logprobs, old, adv)
        if tuple(pg.shape) != (2, 3) or not bool(torch.isfinite(pg).all()):
            raise ValueError(f"returned shape {tuple(pg.shape)} / non-finite values for (2, 3) finite inputs")
        if bool((pg.detach()[adv == 0] != 0).any()):
            raise ValueError("is not 0 at tokens whose advantage is 0 (a policy-gradient term is ∝ advantage)")
        if not pg.requires_grad:
            raise ValueError("carries no gradient to logprobs")
    except Exception as exc:  # noqa: BLE001 - any failure of user code is a config error here
        _fail("term", cfg.term, f"probe call failed: {type(exc).__name__}: {exc}. Expected: {_PROBE_HINT}")
