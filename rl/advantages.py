"""Outcome advantages from per-sample rewards: GRPO, Dr. GRPO, RLOO, REINFORCE++-baseline, Stratified GRPO.

    adv = compute_advantages("grpo", rewards, group_ids)                       # (N,)
    adv = compute_advantages("stratified", rewards, group_ids, strata=strata_from_keys(keys), alpha=0.6)

Every estimator is registered with `@register_advantage(name)` and has ONE signature:

    fn(rewards (N,) float64, group_ids (N,) long, *, strata (N,) long | None, **keyword params) -> (N,) float64

`compute_advantages` takes a registered name, a plug-in `"pkg.module:fn"` / `"path/to/file.py:fn"`
(`ADVANTAGES.resolve`) or the function itself; it checks the signature above and the params, computes in
float64 and returns the rewards' float dtype (float32 for integer rewards). The driver never special-cases
a name; the config maps its fields and `algorithm.advantage.params` to an entry's params with
`resolve_advantage(spec)` (docs/algorithms.md, "Plug in an estimator").

Groups are keyed by `group_ids` (any integers; one id per prompt per generation round, like verl's per-batch
`uid`, so a prompt drawn twice forms two groups) and reduced with scatter ops, so there is no Python loop
over groups. The slow loop reference that checks these kernels lives in tests/unit/test_advantages.py.

Groups of size 1 (G=1): the group mean is the sample itself, so there is no baseline. `singleton="zero"`
(default, this project's choice: a raw score is not an advantage) returns advantage 0; `singleton="raw"`
reproduces verl (mean := 0, std := 1, i.e. the raw score). See docs/algorithms.md, `algorithm.advantage`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from rl.registry import Registry, check_kwargs

ADVANTAGES: Registry[Callable[..., Tensor]] = Registry("advantage")
register_advantage = ADVANTAGES.register

SINGLETON_POLICIES = ("zero", "raw")
STRATA_SOURCES = ("reward", "length_bucket", "truncated", "tool_calls", "metric:<key>")
METRIC_PREFIX = "metric:"


def compute_advantages(
    spec: str | Callable[..., Tensor], rewards: Tensor, group_ids: Tensor, *, strata: Tensor | None = None,
    **params: Any,
) -> Tensor:
    """Per-sample advantages (N,) for rewards (N,) grouped by group_ids (N,); see the module docstring."""
    estimator = resolve_advantage(spec)
    estimator.check(params)
    out_dtype = rewards.dtype if rewards.is_floating_point() else torch.float32
    r, g, s = _validate(rewards, group_ids, strata)
    return estimator.fn(r, g, strata=s, **params).to(out_dtype)


SIGNATURE = "fn(rewards (N,) float64, group_ids (N,) long, *, strata=None, **params) -> advantages (N,)"


@dataclass(frozen=True)
class Estimator:
    """A resolved advantage estimator and the keyword params its signature takes."""

    fn: Callable[..., Tensor]
    shown: str
    """The spec as written (or the function's name), for error messages."""
    sig: inspect.Signature
    params: tuple[str, ...]
    """Keyword-only params besides `strata`, sorted."""

    def check(self, params: dict[str, Any]) -> None:
        """TypeError unless `params` fits: no unknown key (unless **params), every required one given."""
        check_kwargs("advantage", self.shown, self.sig, params, skip=2, exclude=("strata",),
                     config_key="algorithm.advantage.params")


def resolve_advantage(spec: str | Callable[..., Tensor]) -> Estimator:
    """The estimator `spec` names (registered name or plug-in; a function is taken as is), its signature
    checked against the registry's one signature. UnknownNameError / PluginError / TypeError otherwise."""
    fn = spec if callable(spec) else ADVANTAGES.resolve(spec)
    shown = spec if isinstance(spec, str) else getattr(fn, "__qualname__", repr(fn))
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"advantage {shown!r}: cannot read its signature ({exc}); expected {SIGNATURE}") from None
    ps = list(sig.parameters.values())
    positional = [p.name for p in ps if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)]
    strata = sig.parameters.get("strata")
    if len(positional) != 2 or any(p.kind is p.VAR_POSITIONAL for p in ps):
        problem = (f"it takes positional params {positional}; it must take exactly two, (rewards, group_ids), and "
                   "its own params keyword-only, after `*`")
    elif strata is None or strata.kind is not strata.KEYWORD_ONLY or strata.default is not None:
        problem = "it must take the keyword-only param `strata=None` (stratum ids (N,) long, or None)"
    else:
        return Estimator(fn, shown, sig, tuple(sorted(p.name for p in ps if p.kind is p.KEYWORD_ONLY
                                                     and p.name != "strata")))
    raise TypeError(f"advantage {shown!r}: signature {getattr(fn, '__name__', 'fn')}{sig} does not fit "
                    f"{SIGNATURE}: {problem}")


# --------------------------------------------------------------------------- estimators


@register_advantage("grpo")
def grpo(
    rewards: Tensor, group_ids: Tensor, *, strata: Tensor | None = None,
    std_ddof: int = 1, eps: float = 1e-6, singleton: str = "zero",
) -> Tensor:
    """GRPO, DeepSeekMath (arXiv 2402.03300) §4.1.2: Â_i = (r_i − mean_g) / (std_g + eps).

    The paper does not fix the std; std_ddof=1 (Bessel, `torch.std`), eps=1e-6 is verl parity
    (`compute_grpo_outcome_advantage`). A constant group gives exactly 0.
    """
    _check_ddof(std_ddof, eps, singleton)
    idx, n_groups = _group_index(group_ids)
    mean, std, count = _group_stats(rewards, idx, n_groups, std_ddof)
    adv = _safe_div(rewards - mean, std + eps)
    # verl's G=1 case: mean := 0, std := 1, so Â = r / (1 + eps).
    return _apply_singleton(adv, count, singleton, raw=rewards / (1.0 + eps))


@register_advantage("dr_grpo")
def dr_grpo(
    rewards: Tensor, group_ids: Tensor, *, strata: Tensor | None = None, singleton: str = "zero"
) -> Tensor:
    """Dr. GRPO (arXiv 2503.20783) §3.1: Â_i = r_i − mean_g, no std division (it biases towards
    easy/hard prompts). verl: `norm_adv_by_std_in_grpo=False`."""
    _check_ddof(0, 0.0, singleton)
    idx, n_groups = _group_index(group_ids)
    mean, _, count = _group_stats(rewards, idx, n_groups, 0)
    return _apply_singleton(rewards - mean, count, singleton, raw=rewards)


@register_advantage("rloo")
def rloo(rewards: Tensor, group_ids: Tensor, *, strata: Tensor | None = None, singleton: str = "zero") -> Tensor:
    """RLOO (Ahmadian et al. arXiv 2402.14740, eq. 6): Â_i = r_i − mean_{j≠i} r_j = n/(n−1)·(r_i − mean_g)."""
    _check_ddof(0, 0.0, singleton)
    idx, n_groups = _group_index(group_ids)
    mean, _, count = _group_stats(rewards, idx, n_groups, 0)
    adv = (rewards - mean) * count / (count - 1).clamp(min=1)
    return _apply_singleton(adv, count, singleton, raw=rewards)


@register_advantage("reinforce_pp")
def reinforce_pp(
    rewards: Tensor, group_ids: Tensor, *, strata: Tensor | None = None,
    std_ddof: int = 1, eps: float = 1e-6, singleton: str = "zero",
) -> Tensor:
    """REINFORCE++-baseline (Hu, arXiv 2501.03262, §3): subtract the group mean, then whiten across
    the whole batch: Â = (x − mean_batch(x)) / (std_batch(x) + eps), x_i = r_i − mean_g.

    Semantics chosen here: batch statistics over SAMPLES (ddof=std_ddof). verl and OpenRLHF whiten the
    token-broadcast advantages over valid TOKENS (each sample weighted by its length, Bessel over
    tokens, `x·rsqrt(var + 1e-8)`); the two agree when all responses have equal length, up to eps.
    A sample-level statistic keeps this function mask-free like every other entry. Singletons under
    `singleton="zero"` are left out of the batch statistics and get 0.
    """
    _check_ddof(std_ddof, eps, singleton)
    idx, n_groups = _group_index(group_ids)
    mean, _, count = _group_stats(rewards, idx, n_groups, 0)
    x = _apply_singleton(rewards - mean, count, singleton, raw=rewards)
    used = (count > 1) | (singleton == "raw")  # (N,) samples entering the batch statistics
    n = int(used.sum())
    if n == 0:
        return torch.zeros_like(rewards)
    mu = x[used].mean()
    sigma = x[used].std(correction=std_ddof) if n > std_ddof else x.new_zeros(())
    return torch.where(used, _safe_div(x - mu, sigma + eps), torch.zeros_like(x))


@register_advantage("stratified")
def stratified(
    rewards: Tensor, group_ids: Tensor, *, strata: Tensor | None = None,
    alpha: float = 0.6, std_ddof: int = 1, eps: float = 1e-6, singleton: str = "zero", san_std_ddof: int = 0,
) -> Tensor:
    """Stratified GRPO (Zhu et al. arXiv 2510.06214; docs/algorithms.md, `stratified`):
    Â = α·Â_SAN + (1−α)·Â_GN, with Â_SAN = (r_i − mean_k)/(std_k + eps) over the stratum k of sample i
    inside its prompt group, and Â_GN identical to "grpo" (std_ddof, eps, singleton).

    SAN uses population std (san_std_ddof=0), which makes its per-stratum unit variance exact; singleton
    and constant strata give Â_SAN = 0 (a project choice; ddof=1 would give NaN for a singleton), so the
    blend keeps the (1−α) global signal.
    """
    if strata is None:
        raise ValueError(
            "advantage 'stratified' needs strata ids (N,): pass strata=..., e.g. from strata_from_samples(); "
            "in the config set algorithm.advantage.strata_source"
        )
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"stratified: alpha={alpha} must be in [0, 1] (0 = plain GRPO, 1 = pure SAN)")
    _check_ddof(san_std_ddof, eps, singleton)
    gn = grpo(rewards, group_ids, std_ddof=std_ddof, eps=eps, singleton=singleton)
    # Strata live inside a prompt group: key = (group, stratum) pair.
    pairs = torch.stack([group_ids, strata], dim=1)  # (N, 2)
    idx, n_cells = _group_index(pairs)
    mean_k, std_k, count_k = _group_stats(rewards, idx, n_cells, san_std_ddof)
    san = _safe_div(rewards - mean_k, std_k + eps)
    san = torch.where(count_k > 1, san, torch.zeros_like(san))
    return alpha * san + (1.0 - alpha) * gn


# --------------------------------------------------------------------------- strata ids


def strata_from_keys(keys: Sequence[str | int | None]) -> Tensor:
    """Integer stratum ids (N,) long from hashable keys, numbered by first appearance; None -> -1.

    `None` (e.g. a reward function that reported no "stratum") forms one stratum of its own.
    Ids only need to be equal/unequal: strata are always intersected with prompt groups.
    """
    table: dict[str | int, int] = {}
    out = [-1 if k is None else table.setdefault(k, len(table)) for k in keys]
    return torch.tensor(out, dtype=torch.long)


def length_bucket(lengths: Tensor, bucket_size: int) -> Tensor:
    """Stratum id = response length // bucket_size, e.g. bucket 512: 0..511 -> 0, 512..1023 -> 1."""
    if bucket_size < 1:
        raise ValueError(f"length_bucket: bucket_size={bucket_size} must be >= 1")
    return torch.as_tensor(lengths, dtype=torch.long) // bucket_size


def strata_from_samples(samples: Sequence[Any], source: str, *, length_bucket_size: int = 512) -> Tensor:
    """Stratum ids (N,) from sample properties (duck-typed `rl.types.Sample`), by `source`:

    - "reward":        `sample.stratum`, the "stratum" key a reward function returned (None -> -1).
    - "length_bucket": `len(sample.response_ids) // length_bucket_size`.
    - "truncated":     1 if `sample.finish_reason == "length"` else 0.
    - "tool_calls":    the number of tool calls of the trajectory (the paper's ψ(τ), arXiv 2510.06214):
                       `len(sample.tool_calls)` for a multi-turn rollout (rollout.tools), else
                       `sample.reward_metrics["tool_calls"]` as an agent reward reports it.
    - "metric:<key>":  `sample.reward_metrics[key]`, any per-sample value a reward function returns (a stratum
                       per distinct value).
    """
    if source == "reward":
        return strata_from_keys([s.stratum for s in samples])
    if source == "length_bucket":
        return length_bucket(torch.tensor([len(s.response_ids) for s in samples], dtype=torch.long), length_bucket_size)
    if source == "truncated":
        return torch.tensor([int(s.finish_reason == "length") for s in samples], dtype=torch.long)
    if source == "tool_calls":
        out = []
        for i, s in enumerate(samples):
            calls = getattr(s, "tool_calls", None)
            if calls is not None:
                out.append(len(calls))
                continue
            if "tool_calls" not in s.reward_metrics:
                raise ValueError(
                    f"strata_source='tool_calls' but sample {i} (prompt_id={getattr(s, 'prompt_id', '?')}) is no "
                    "multi-turn rollout (set rollout.tools) and has no reward_metrics['tool_calls'] (a reward "
                    "function can return {'reward': ..., 'tool_calls': n}); or pick another "
                    "algorithm.advantage.strata_source")
            out.append(int(s.reward_metrics["tool_calls"]))
        return torch.tensor(out, dtype=torch.long)
    if source.startswith(METRIC_PREFIX):
        key = source[len(METRIC_PREFIX):]
        keys = []
        for i, s in enumerate(samples):
            if key not in s.reward_metrics:
                raise ValueError(
                    f"strata_source={source!r} but sample {i} (prompt_id={getattr(s, 'prompt_id', '?')}) has no "
                    f"reward_metrics[{key!r}]: the reward function must return {{'reward': ..., {key!r}: value}} for "
                    "every sample (metric names of a function are prefixed `fn/` when several functions are set)")
            v = s.reward_metrics[key]
            keys.append(int(v) if isinstance(v, float) and v.is_integer() else v)
        return strata_from_keys(keys)
    raise ValueError(f"unknown strata source {source!r}; use one of {', '.join(STRATA_SOURCES)}")


# --------------------------------------------------------------------------- helpers


def _validate(rewards: Tensor, group_ids: Tensor, strata: Tensor | None) -> tuple[Tensor, Tensor, Tensor | None]:
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D (N,), got shape {tuple(rewards.shape)}")
    if group_ids.shape != rewards.shape or group_ids.is_floating_point():
        raise ValueError(f"group_ids must be an integer tensor of shape {tuple(rewards.shape)}, got "
                         f"{group_ids.dtype} {tuple(group_ids.shape)}")
    if strata is not None and (strata.shape != rewards.shape or strata.is_floating_point()):
        raise ValueError(f"strata must be an integer tensor of shape {tuple(rewards.shape)}, got "
                         f"{strata.dtype} {tuple(strata.shape)}")
    r = rewards.to(torch.float64)
    bad = ~torch.isfinite(r)
    if bad.any():
        i = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"rewards has {int(bad.sum())} non-finite value(s) (first at index {i}: {r[i].item()}); drop samples "
            "whose reward failed (algorithm.mask_reward_errors) or give them a finite reward before advantages"
        )
    return r, group_ids.long(), None if strata is None else strata.long()


def _group_index(keys: Tensor) -> tuple[Tensor, int]:
    """Dense group index (N,) in [0, n_groups) for arbitrary integer keys (N,) or key tuples (N, k)."""
    if keys.numel() == 0:
        return keys.new_zeros(0, dtype=torch.long), 0
    _, inverse = torch.unique(keys, dim=0 if keys.dim() > 1 else None, return_inverse=True)
    return inverse, int(inverse.max()) + 1


def _group_stats(x: Tensor, idx: Tensor, n_groups: int, ddof: int) -> tuple[Tensor, Tensor, Tensor]:
    """Per-sample group mean, std (given ddof) and group size, each (N,), via scatter sums.

    Two-pass (mean, then centred squares) for accuracy. A group of size <= ddof gets std 0 (the
    callers' singleton rule decides its advantage)."""
    count = x.new_zeros(n_groups).index_add_(0, idx, torch.ones_like(x))  # (n_groups,)
    mean = x.new_zeros(n_groups).index_add_(0, idx, x) / count
    dev = x - mean[idx]  # (N,)
    sq = x.new_zeros(n_groups).index_add_(0, idx, dev * dev)
    std = (sq / (count - ddof).clamp(min=1)).sqrt()
    return mean[idx], std[idx], count[idx]


def _safe_div(num: Tensor, den: Tensor) -> Tensor:
    """num / den, with 0 where den == 0 (a constant group with eps=0 gives 0, not NaN)."""
    return torch.where(den > 0, num / torch.where(den > 0, den, torch.ones_like(den)), torch.zeros_like(num))


def _apply_singleton(adv: Tensor, count: Tensor, policy: str, *, raw: Tensor) -> Tensor:
    """Groups of one sample: 0 ("zero") or the estimator's verl value `raw` ("raw")."""
    alone = count == 1
    return torch.where(alone, raw if policy == "raw" else torch.zeros_like(adv), adv)


def _check_ddof(ddof: int, eps: float, singleton: str) -> None:
    if ddof not in (0, 1):
        raise ValueError(f"std ddof={ddof}: use 1 (Bessel, torch.std / verl) or 0 (population)")
    if eps < 0:
        raise ValueError(f"eps={eps} must be >= 0")
    if singleton not in SINGLETON_POLICIES:
        raise ValueError(f"singleton={singleton!r}: use 'zero' (G=1 gives advantage 0) or 'raw' (verl: raw score)")
