"""Ray actor that owns a RewardRunner: the reward workers of the training loop.

    from reward.worker import RewardWorker            # = ray.remote(_RewardWorker)
    actors = [RewardWorker.options(num_cpus=2).remote(["math"], 10.0, 2, "out/quarantine.jsonl")
              for _ in range(K)]
    ray.get([a.ping.remote() for a in actors])        # waits until every runner's workers are up
    shards = ray.get([a.score.remote(rows[k::K]) for k, a in enumerate(actors)])

Each actor starts `num_workers` sandboxed processes of its own, so give it as many CPUs
(`.options(num_cpus=...)`). Results are plain `RewardResult` dataclasses. This is the only
module in reward/ that imports ray; the undecorated class `_RewardWorker` is exported too, for
callers that want their own `ray.remote(...)` options at the use site.
"""

from __future__ import annotations

from typing import Any

import ray

from reward.runner import RewardRunner
from rl.faults import Guard, GuardSpec, guarded
from reward.types import RewardResult


class _RewardWorker:
    def __init__(
        self,
        specs: list[str | dict[str, Any]],
        timeout_s: float = 10.0,
        num_workers: int = 2,
        quarantine_path: str | None = None,
        guard: GuardSpec | None = None,
        **runner_options: Any,
    ) -> None:
        """Resolve the specs and start the worker processes; `runner_options` go to RewardRunner."""
        self.guard = Guard(guard)
        self._runner = RewardRunner(specs, timeout_s, num_workers, quarantine_path, **runner_options)

    @guarded
    def score(self, rows: list[dict[str, Any]]) -> list[RewardResult]:
        return self._runner.score(rows)

    def ping(self) -> dict[str, Any]:
        """Liveness and what the sandbox could apply on this node."""
        return {
            "ok": True,
            "sandbox_level": self._runner.sandbox_level,
            "functions": [f.name for f in self._runner.fns],
            "counts": dict(self._runner.counts),
            "worker_restarts": self._runner.worker_restarts,
            "worker_start_failures": self._runner.worker_start_failures,
        }

    def close(self) -> None:
        self._runner.close()


RewardWorker = ray.remote(_RewardWorker)
