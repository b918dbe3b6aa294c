"""Per-sample combination of weighted functions.

`combine` turns one row's per-function outcomes into a `RewardResult`: reward = Σ wᵢ·rᵢ when
every function succeeded; otherwise status "timeout" (any timed out) or "error", and reward
None (or the runner's `error_reward`) -- a failure is never silently scored as 0. Its metrics are
named `<fn>` and `<fn>/<key>`; the training loop's step metrics (rl.steps.rollout_metrics) log
their means under `reward/`.
"""

from __future__ import annotations

from reward.registry import RewardFn
from reward.types import CallOutcome, RewardResult


def combine(fns: list[RewardFn], outcomes: list[CallOutcome | None], error_reward: float | None = None,
            data_source: object = None) -> RewardResult:
    """One row's result from its outcomes (outcome i belongs to fns[i]; None: fns[i] is routed to other
    data sources and adds nothing; a row that no function scores is an error).

    >>> from reward.registry import resolve_specs
    >>> fns = resolve_specs([{"fn": "arith", "weight": 1.0}, {"fn": "format", "weight": 0.5}])
    >>> combine(fns, [CallOutcome("ok", 1.0), CallOutcome("ok", 1.0)])
    RewardResult(reward=1.5, metrics={'arith': 1.0, 'format': 1.0}, status='ok', error=None, stratum=None)
    >>> combine(fns, [CallOutcome("ok", 1.0), CallOutcome("timeout", error="too slow")]).status
    'timeout'
    """
    metrics: dict[str, float] = {}
    stratum: str | None = None
    failures: list[str] = []
    status = "ok"
    if all(out is None for out in outcomes):
        error = (f"no reward function scores data_source={data_source!r}; add it to some function's data_sources "
                 "(or leave one unrouted)")
        return RewardResult(error_reward, {}, "error", error, None)
    for fn, out in zip(fns, outcomes, strict=True):
        if out is None:
            continue
        if out.status != "ok":
            failures.append(f"{fn.name}: {out.error}")
            status = "timeout" if out.status == "timeout" or status == "timeout" else "error"
            continue
        metrics[fn.name] = out.reward  # type: ignore[assignment]
        for key, value in out.metrics.items():
            metrics[f"{fn.name}/{key}"] = value
        if stratum is None:
            stratum = out.stratum
    if failures:
        return RewardResult(error_reward, metrics, status, "; ".join(failures), stratum)  # type: ignore[arg-type]
    reward = sum(fn.weight * out.reward for fn, out in zip(fns, outcomes) if out is not None)  # type: ignore[operator]
    return RewardResult(float(reward), metrics, "ok", None, stratum)
