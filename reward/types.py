"""Reward result records and the rules that turn a reward function's return value into one.

`RewardResult` is what `RewardRunner.score` returns per row; the driver copies it into
`rl.types.Sample` (reward, reward_metrics, reward_status, stratum). `coerce_output` is the one
place that decides what a user function may return: a finite number, or a dict with a finite
"reward", optional numeric metrics and an optional "stratum".
"""

from __future__ import annotations

import math
import numbers
import time
from dataclasses import dataclass, field
from typing import Any, Literal

RewardStatus = Literal["ok", "error", "timeout"]


@dataclass
class RewardResult:
    reward: float | None
    """Σ weight·reward over the functions; None when a function failed (unless `error_reward` is set)."""
    metrics: dict[str, float] = field(default_factory=dict)
    """Per-sample metrics: `<fn>` (that function's reward) and `<fn>/<key>` (its dict's other numeric keys)."""
    status: RewardStatus = "ok"
    """"ok"; "error" (raised, crashed, bad return value); "timeout" (passed the per-call deadline)."""
    error: str | None = None
    """One line per failed function, `<fn>: <what happened>`; the traceback is in the quarantine file."""
    stratum: str | None = None
    """The "stratum" a function returned (the first one, in spec order), for stratified advantages."""


class RewardValueError(ValueError):
    """A reward function returned something that is not a reward."""


_HINT = 'return a finite float, or a dict like {"reward": 1.0, "my_metric": 0.5}'


def coerce_output(out: Any) -> tuple[float, dict[str, float], str | None]:
    """(reward, metrics, stratum) from a function's return value, or RewardValueError.

    >>> coerce_output(1)
    (1.0, {}, None)
    >>> coerce_output({"reward": 0.5, "length": 12, "stratum": "easy", "note": "ignored"})
    (0.5, {'length': 12.0}, 'easy')
    >>> coerce_output(float("nan"))
    Traceback (most recent call last):
    ...
    reward.types.RewardValueError: returned a non-finite reward (nan); return a finite float, or a dict like {"reward": 1.0, "my_metric": 0.5}
    """
    if isinstance(out, dict):
        if "reward" not in out:
            raise RewardValueError(f"returned a dict without a 'reward' key (keys: {sorted(map(str, out))}); {_HINT}")
        reward = _number(out["reward"], "reward")
        metrics: dict[str, float] = {}
        for key, value in out.items():
            # Non-numeric extras (strings for debugging, say) are not metrics: skip them.
            if key in ("reward", "stratum") or not _is_number(value):
                continue
            metrics[str(key)] = _number(value, f"metric {key!r}")
        stratum = out.get("stratum")
        return reward, metrics, None if stratum is None else str(stratum)
    return _number(out, "reward"), {}, None


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real)


def _number(value: Any, what: str) -> float:
    if not _is_number(value):
        raise RewardValueError(f"returned {repr(value)[:80]} ({type(value).__name__}) as the {what}; {_HINT}")
    value = float(value)
    if not math.isfinite(value):
        raise RewardValueError(f"returned a non-finite {what} ({value}); {_HINT}")
    return value


_deadline: float | None = None


def set_deadline(timeout_s: float | None) -> None:
    """Called by the worker before each call; `time_left` reads it."""
    global _deadline
    _deadline = None if timeout_s is None else time.monotonic() + timeout_s


def time_left(default: float = 10.0) -> float:
    """Seconds until the current call's deadline (`default` outside a RewardRunner call).

    A reward function that runs its own sub-steps (the `code` verifier, math-verify) uses this
    to finish, with a score, before the worker is killed for a timeout.
    """
    if _deadline is None:
        return default
    return max(0.0, _deadline - time.monotonic())


@dataclass
class CallOutcome:
    """What one call of one function on one row came to (pool -> runner; internal)."""

    status: RewardStatus
    reward: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    stratum: str | None = None
    error: str | None = None
    traceback: str | None = None
    text: str | None = None
    """A tool call's observation (pools of kind "tool", rollout/tools.py)."""
