"""`RewardRunner`: score a batch of rows with weighted reward functions in isolated workers.

    with RewardRunner(["math", {"fn": "format", "weight": 0.2}], timeout_s=10, num_workers=4,
                      quarantine_path="out/reward_quarantine.jsonl") as runner:
        results = runner.score([{"prompt": p, "completion": c, "answer": a}, ...])  # one RewardResult per row

Specs are resolved and their signatures checked in the constructor (before any model is
loaded), then `num_workers` sandboxed worker processes start and import the functions. Each
(row, function) call runs in a worker under a deadline enforced from outside; every failure
becomes status "error"/"timeout" with reward None (by default) and a line in the quarantine
file. In the training loop each Ray reward actor (reward/worker.py) owns one runner.
"""

from __future__ import annotations

import math
from typing import Any

from reward import sandbox
from reward.metrics import combine
from reward.pool import WorkerPool
from reward.quarantine import append_records, quarantine_record
from reward.registry import RewardFn, absolute_spec, resolve_specs
from reward.types import RewardResult


class RewardRunner:
    """Scores rows {"prompt", "completion", **dataset columns} with the given reward specs.

    Args:
        specs: reward specs, each "name", "pkg.mod:fn", "path/file.py:fn" or
            {"fn": spec, "weight": 1.0, "name": "metric_name"}.
        timeout_s: per-call deadline (one function on one row), enforced by killing the worker.
        num_workers: worker processes (calls run concurrently across them, one per worker).
        quarantine_path: JSONL file that gets one line per failed call (None: not written).
        memory_limit_mb: address-space rlimit of each worker (None: unlimited).
        sandbox: confine workers (no network, private /tmp, own uid, writes only in their
            directory). False keeps only rlimits, deadlines and process isolation, for functions
            that need the network (an LLM judge, say).
        error_reward: reward given to error/timeout samples (their status stays error/timeout);
            None (default) so that a failure is never scored as a wrong answer.
        file_size_limit_mb: largest file a worker may write; printed output counts.
        max_processes: processes (and threads) a worker may have at once.
        startup_timeout_s: how long a worker may take to import its functions.
    """

    def __init__(
        self,
        specs: list[str | dict[str, Any]],
        timeout_s: float = 10.0,
        num_workers: int = 2,
        quarantine_path: str | None = None,
        *,
        memory_limit_mb: int | None = 4096,
        sandbox: bool = True,
        error_reward: float | None = None,
        file_size_limit_mb: int = 64,
        max_processes: int = 64,
        startup_timeout_s: float = 60.0,
    ) -> None:
        if not (isinstance(timeout_s, (int, float)) and math.isfinite(timeout_s) and timeout_s > 0):
            raise ValueError(f"RewardRunner: timeout_s must be a positive number of seconds, got {timeout_s!r}")
        if not isinstance(num_workers, int) or num_workers < 1:
            raise ValueError(f"RewardRunner: num_workers must be an integer >= 1, got {num_workers!r}")
        if memory_limit_mb is not None and memory_limit_mb < 256:
            raise ValueError(
                f"RewardRunner: memory_limit_mb={memory_limit_mb} is too small for a Python worker; use >= 256 or None"
            )
        self.fns: list[RewardFn] = resolve_specs(specs)
        self.timeout_s = float(timeout_s)
        self.quarantine_path = quarantine_path
        self.error_reward = error_reward
        self.counts = {"calls": 0, "ok": 0, "error": 0, "timeout": 0}
        """Calls scored since construction, by status."""
        limits = sandbox_limits(memory_limit_mb, file_size_limit_mb, max_processes)
        worker_specs = [{"fn": absolute_spec(f.spec), "weight": f.weight, "name": f.name} for f in self.fns]
        self._pool: WorkerPool | None = WorkerPool(
            worker_specs, num_workers=num_workers, limits=limits, isolate=sandbox, startup_timeout_s=startup_timeout_s
        )
        self._spawned_pids = self._pool.spawned_pids  # the pool's own list: still readable after close()
        self._pool.start()

    @property
    def sandbox_level(self) -> str | None:
        """"full", "userns", "rlimits" or "off": what the workers could apply (see reward/sandbox.py)."""
        return self._pool.level if self._pool else None

    @property
    def worker_restarts(self) -> int:
        """Workers started so far to replace others (after timeouts, crashes, malformed replies or failed starts)."""
        return self._pool.restarts if self._pool else 0

    @property
    def worker_start_failures(self) -> int:
        """Worker starts that failed so far; the pool retries them with backoff (see reward/pool.py)."""
        return self._pool.start_failures if self._pool else 0

    @property
    def worker_pids(self) -> list[int]:
        """Pids of the live worker processes."""
        return self._pool.live_pids if self._pool else []

    @property
    def spawned_pids(self) -> list[int]:
        """Pids of every worker process started so far (to audit that none left anything behind)."""
        return list(self._spawned_pids)

    def score(self, rows: list[dict[str, Any]]) -> list[RewardResult]:
        """One RewardResult per row, in order. Not thread-safe: one batch at a time."""
        if self._pool is None:
            raise RuntimeError("RewardRunner.score() after close()")
        for i, row in enumerate(rows):
            texts_ok = isinstance(row, dict) and all(isinstance(row.get(k), str) for k in ("prompt", "completion"))
            if not texts_ok:
                shown = sorted(map(str, row)) if isinstance(row, dict) else type(row).__name__
                raise ValueError(
                    f"RewardRunner.score: row {i} must be a dict with str 'prompt' and 'completion' (got {shown})"
                )
        n_fns = len(self.fns)
        tasks = [(j, row) for row in rows for j in range(n_fns)]
        outcomes = self._pool.run(tasks, self.timeout_s)
        results, records = [], []
        for i, row in enumerate(rows):
            row_outcomes = outcomes[i * n_fns : (i + 1) * n_fns]
            results.append(combine(self.fns, row_outcomes, self.error_reward))
            for fn, out in zip(self.fns, row_outcomes):
                self.counts["calls"] += 1
                self.counts[out.status] += 1
                if out.status != "ok":
                    records.append(quarantine_record(row, fn.name, fn.spec, out.status, out.error, out.traceback))
        if self.quarantine_path and records:
            append_records(self.quarantine_path, records)
        return results

    def close(self) -> None:
        """Kill the workers (idempotent)."""
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def __enter__(self) -> RewardRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown: nothing left to report to
            pass


def sandbox_limits(memory_limit_mb: int | None, file_size_limit_mb: int, max_processes: int) -> sandbox.Limits:
    return sandbox.Limits(
        memory_mb=memory_limit_mb, file_size_mb=file_size_limit_mb, max_processes=max_processes,
        tmpfs_mb=max(64, 2 * file_size_limit_mb),
    )
