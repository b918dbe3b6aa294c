"""Reward functions for RL post-training: registry, built-in verifiers, sandboxed scoring.

    import reward
    fn = reward.load("math")                                  # or "pkg.mod:fn", "path/file.py:fn"
    with reward.RewardRunner(["math", {"fn": "format", "weight": 0.1}], timeout_s=10) as runner:
        results = runner.score([{"prompt": "...", "completion": "...", "answer": "42"}])
    results[0].reward, results[0].metrics     # Σ w·r, {"math": ..., "math/acc": ..., "format": ...}

See docs/reward.md for the plug-in contract, statuses, quarantine and isolation guarantees.
The Ray actor that wraps a runner is in reward/worker.py (the only module that imports ray).
"""

from reward.metrics import combine
from reward.pool import RewardWorkerError
from reward.registry import BUILTINS, RewardFn, RewardSpecError, load, resolve_specs
from reward.runner import RewardRunner
from reward.types import RewardResult, RewardValueError, coerce_output, time_left

__all__ = [
    "BUILTINS",
    "RewardFn",
    "RewardResult",
    "RewardRunner",
    "RewardSpecError",
    "RewardValueError",
    "RewardWorkerError",
    "coerce_output",
    "combine",
    "load",
    "resolve_specs",
    "time_left",
]
