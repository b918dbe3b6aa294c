"""Per-sample combination of weighted functions, and batch metrics from a list of results.

`combine` turns one row's per-function outcomes into a `RewardResult`: reward = Σ wᵢ·rᵢ when
every function succeeded; otherwise status "timeout" (any timed out) or "error", and reward
None (or the runner's `error_reward`) -- a failure is never silently scored as 0.
`summarize` gives the step metrics the driver logs under reward/.
"""

from __future__ import annotations

import math
from collections import defaultdict

from reward.registry import RewardFn
from reward.types import CallOutcome, RewardResult


def combine(fns: list[RewardFn], outcomes: list[CallOutcome], error_reward: float | None = None) -> RewardResult:
    """One row's result from its outcomes (outcome i belongs to fns[i]).

    >>> from reward.registry import resolve_specs
    >>> fns = resolve_specs([{"fn": "arith", "weight": 1.0}, {"fn": "format", "weight": 0.5}])
    >>> combine(fns, [CallOutcome("ok", 1.0), CallOutcome("ok", 1.0)])
    RewardResult(reward=1.5, metrics={'reward/arith': 1.0, 'reward/format': 1.0}, status='ok', error=None, stratum=None)
    >>> combine(fns, [CallOutcome("ok", 1.0), CallOutcome("timeout", error="too slow")]).status
    'timeout'
    """
    metrics: dict[str, float] = {}
    stratum: str | None = None
    failures: list[str] = []
    status = "ok"
    for fn, out in zip(fns, outcomes, strict=True):
        if out.status != "ok":
            failures.append(f"{fn.name}: {out.error}")
            status = "timeout" if out.status == "timeout" or status == "timeout" else "error"
            continue
        metrics[f"reward/{fn.name}"] = out.reward  # type: ignore[assignment]
        for key, value in out.metrics.items():
            metrics[f"reward/{fn.name}/{key}"] = value
        if stratum is None:
            stratum = out.stratum
    if failures:
        return RewardResult(error_reward, metrics, status, "; ".join(failures), stratum)  # type: ignore[arg-type]
    reward = sum(fn.weight * out.reward for fn, out in zip(fns, outcomes))  # type: ignore[operator]
    return RewardResult(float(reward), metrics, "ok", None, stratum)


def summarize(results: list[RewardResult]) -> dict[str, float]:
    """Step metrics: reward/mean and reward/std over ok samples, error and timeout rates, and
    the mean of every per-sample metric (reward/<fn>, reward/<fn>/<key>) over the samples that have it.

    >>> summarize([RewardResult(1.0, {"reward/math": 1.0}), RewardResult(0.0, {"reward/math": 0.0}),
    ...            RewardResult(None, {}, "error", "math: boom"), RewardResult(None, {}, "timeout", "math: slow")])
    {'reward/mean': 0.5, 'reward/std': 0.5, 'reward/error_rate': 0.25, 'reward/timeout_rate': 0.25, 'reward/num_samples': 4.0, 'reward/math': 0.5}
    """
    n = len(results)
    rewards = [r.reward for r in results if r.status == "ok" and r.reward is not None]
    mean = sum(rewards) / len(rewards) if rewards else math.nan
    std = math.sqrt(sum((x - mean) ** 2 for x in rewards) / len(rewards)) if rewards else math.nan
    out = {
        "reward/mean": mean,
        "reward/std": std,
        "reward/error_rate": sum(r.status == "error" for r in results) / n if n else 0.0,
        "reward/timeout_rate": sum(r.status == "timeout" for r in results) / n if n else 0.0,
        "reward/num_samples": float(n),
    }
    sums: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    for r in results:
        for key, value in r.metrics.items():
            sums[key] += value
            counts[key] += 1
    out.update({key: sums[key] / counts[key] for key in sorted(sums)})
    return out
