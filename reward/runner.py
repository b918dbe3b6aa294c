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
import os
from typing import Any

from reward import sandbox as sandbox_module
from reward.metrics import combine
from reward.pool import MANAGED_ENV, WorkerPool
from reward.quarantine import append_records, quarantine_record
from reward.registry import RewardFn, RewardSpecError, resolve_specs, spec_dict
from reward.types import CallOutcome, RewardResult


class RewardRunner:
    """Scores rows {"prompt", "completion", **dataset columns} with the given reward specs.

    Args:
        specs: reward specs, each "name", "pkg.mod:fn", "path/file.py:fn" or
            {"fn": spec, "weight": 1.0, "name": "metric_name"}.
        timeout_s: per-call deadline (one function on one row), enforced by killing the worker.
        num_workers: worker processes (calls run concurrently across them, one per worker).
        quarantine_path: JSONL file that gets one line per failed call (None: not written).
        memory_limit_mb: address-space rlimit of each worker process and, where it has a cgroup, the memory
            of all its processes together (None: unlimited).
        sandbox: the isolation level of the workers, exactly (reward/sandbox.py): "full" (no
            network, private /tmp, own uid, writes only in their directory; needs root), "userns"
            (the same namespaces, the runner's uid), "rlimits" (limits only) or "off" (an explicit
            no, for functions that need the network, e.g. an LLM judge); True/False mean full/off.
            Workers that cannot reach it refuse to start (RewardWorkerError, one line on how to get
            it); a function's own `sandbox` overrides it, and one below a function's
            `required_sandbox` (the `code` verifier: userns) is a RewardSpecError.
        error_reward: reward given to error/timeout samples (their status stays error/timeout);
            None (default) so that a failure is never scored as a wrong answer.
        file_size_limit_mb: largest file a worker may write; printed output counts.
        max_processes: processes (and threads) a worker may have at once.
        max_open_files: file descriptors a worker may hold (RLIMIT_NOFILE).
        startup_timeout_s: how long a worker may take to import its functions.
        cgroup: "auto" (default): each worker's sandbox gets a control group holding memory_limit_mb and
            max_processes for all its processes together, where the host lets this process make one
            (reward/cgroup.py), else the per-process rlimits alone; "required": refuse to start without
            one (CgroupUnavailable); "off": rlimits only. `limits_note` says which applies.
    """

    def __init__(
        self,
        specs: list[str | dict[str, Any]],
        timeout_s: float = 10.0,
        num_workers: int = 2,
        quarantine_path: str | None = None,
        *,
        memory_limit_mb: int | None = 4096,
        sandbox: str | bool = "full",
        error_reward: float | None = None,
        file_size_limit_mb: int = 64,
        max_processes: int = 64,
        max_open_files: int = 256,
        startup_timeout_s: float = 60.0,
        cgroup: str = "auto",
    ) -> None:
        if not (isinstance(timeout_s, (int, float)) and math.isfinite(timeout_s) and timeout_s > 0):
            raise ValueError(f"RewardRunner: timeout_s must be a positive number of seconds, got {timeout_s!r}")
        if not isinstance(num_workers, int) or num_workers < 1:
            raise ValueError(f"RewardRunner: num_workers must be an integer >= 1, got {num_workers!r}")
        if memory_limit_mb is not None and memory_limit_mb < 256:
            raise ValueError(
                f"RewardRunner: memory_limit_mb={memory_limit_mb} is too small for a Python worker; use >= 256 or None"
            )
        if not isinstance(max_open_files, int) or isinstance(max_open_files, bool) or max_open_files < 32:
            raise ValueError(f"RewardRunner: max_open_files must be an integer >= 32, got {max_open_files!r}")
        level = sandbox_module.normalize_level(sandbox, "RewardRunner: sandbox")
        self.fns: list[RewardFn] = resolve_specs(specs)
        check_levels(self.fns, level)
        self.timeout_s = float(timeout_s)
        self.quarantine_path = quarantine_path
        self.error_reward = error_reward
        self.counts = {"calls": 0, "ok": 0, "error": 0, "timeout": 0}
        """Calls scored since construction, by status."""
        limits = sandbox_limits(memory_limit_mb, file_size_limit_mb, max_processes, max_open_files)
        # one pool per (level, env): a function with {"sandbox": "off"} (an LLM judge) gets unconfined workers,
        # and a variable named in one function's `env` reaches only the workers of the functions that name it
        groups: dict[tuple[str, tuple[str, ...]], list[int]] = {}
        for j, f in enumerate(self.fns):
            groups.setdefault((f.sandbox or level, tuple(sorted(f.env))), []).append(j)
        self._route: list[tuple[int, int]] = [(0, 0)] * len(self.fns)
        """fn index -> (pool index, the fn's index in that pool)."""
        self._pools: list[WorkerPool] = []
        self._timeouts: list[list[float]] = []
        strongest_first = sorted(groups.items(), key=lambda g: (-sandbox_module.level_rank(g[0][0]), g[0][1]))
        for (pool_level, env), members in strongest_first:
            for local, j in enumerate(members):
                self._route[j] = (len(self._pools), local)
            self._timeouts.append([self.fns[j].timeout_s or self.timeout_s for j in members])
            self._pools.append(WorkerPool([spec_dict(self.fns[j]) for j in members], num_workers=num_workers,
                                          limits=limits, level=pool_level, env=env,
                                          startup_timeout_s=startup_timeout_s, cgroup_mode=cgroup))
        self._spawned_pids = [p.spawned_pids for p in self._pools]  # the pools' own lists: readable after close()
        self._closed = False
        try:
            for pool in self._pools:
                pool.start()
        except BaseException:
            self.close()
            raise

    @property
    def sandbox_level(self) -> str | None:
        """"full", "userns", "rlimits" or "off": the level the workers run at (see reward/sandbox.py); with
        functions at several levels, each once, strongest first joined by "+" (e.g. "full+off")."""
        if self._closed:
            return None
        return "+".join(dict.fromkeys(p.level or "?" for p in self._pools))

    @property
    def limits_note(self) -> str:
        """How memory_limit_mb and max_processes are enforced: per worker by a cgroup, or per process."""
        return self._pools[0].limits_note

    @property
    def worker_restarts(self) -> int:
        """Workers started so far to replace others (after timeouts, crashes, malformed replies or failed starts)."""
        return sum(p.restarts for p in self._pools)

    @property
    def worker_start_failures(self) -> int:
        """Worker starts that failed so far; the pool retries them with backoff (see reward/pool.py)."""
        return sum(p.start_failures for p in self._pools)

    @property
    def worker_pids(self) -> list[int]:
        """Pids of the live worker processes."""
        return [] if self._closed else [pid for p in self._pools for pid in p.live_pids]

    @property
    def spawned_pids(self) -> list[int]:
        """Pids of every worker process started so far (to audit that none left anything behind)."""
        return [pid for pids in self._spawned_pids for pid in pids]

    def score(self, rows: list[dict[str, Any]]) -> list[RewardResult]:
        """One RewardResult per row, in order. Not thread-safe: one batch at a time. A function routed to
        other data sources (`data_sources`) is not called on a row; pools with different sandbox settings
        run one after the other."""
        if self._closed:
            raise RuntimeError("RewardRunner.score() after close()")
        for i, row in enumerate(rows):
            texts_ok = isinstance(row, dict) and all(isinstance(row.get(k), str) for k in ("prompt", "completion"))
            if not texts_ok:
                shown = sorted(map(str, row)) if isinstance(row, dict) else type(row).__name__
                raise ValueError(
                    f"RewardRunner.score: row {i} must be a dict with str 'prompt' and 'completion' (got {shown})"
                )
        outcomes: dict[tuple[int, int], CallOutcome] = {}
        for p, pool in enumerate(self._pools):
            keys = [(i, j) for i, row in enumerate(rows) for j, f in enumerate(self.fns)
                    if self._route[j][0] == p and f.applies(row)]
            done = pool.run([(self._route[j][1], rows[i]) for i, j in keys], self._timeouts[p])
            outcomes.update(zip(keys, done))
        results, records = [], []
        for i, row in enumerate(rows):
            row_outcomes = [outcomes.get((i, j)) for j in range(len(self.fns))]
            results.append(combine(self.fns, row_outcomes, self.error_reward, row.get("data_source")))
            for fn, out in zip(self.fns, row_outcomes):
                if out is None:
                    continue
                self.counts["calls"] += 1
                self.counts[out.status] += 1
                if out.status != "ok":
                    records.append(quarantine_record(row, fn.name, fn.spec, out.status, out.error, out.traceback))
        if self.quarantine_path and records:
            append_records(self.quarantine_path, records)
        return results

    def close(self) -> None:
        """Kill the workers (idempotent)."""
        if not getattr(self, "_closed", True):
            self._closed = True
            for pool in self._pools:
                pool.close()

    def __enter__(self) -> RewardRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown: nothing left to report to
            pass


def sandbox_limits(memory_limit_mb: int | None, file_size_limit_mb: int, max_processes: int,
                   max_open_files: int = 256) -> sandbox_module.Limits:
    return sandbox_module.Limits(
        memory_mb=memory_limit_mb, file_size_mb=file_size_limit_mb, max_processes=max_processes,
        tmpfs_mb=max(64, 2 * file_size_limit_mb), max_open_files=max_open_files,
    )


def check_levels(fns: list[RewardFn], level: str) -> None:
    """RewardSpecError for a function set below the level it requires, or naming an `env` variable that is not
    set (or one the pool sets itself), before any worker starts."""
    for f in fns:
        where = f"reward fn {f.name!r} ({f.spec})"
        required = f.required_sandbox
        if required is not None:
            try:
                required = sandbox_module.normalize_level(required, "required_sandbox")
            except ValueError as exc:
                raise RewardSpecError(f"{where}: its {exc}") from None
            have = f.sandbox or level
            if sandbox_module.level_rank(have) < sandbox_module.level_rank(required):
                source = "its own `sandbox`" if f.sandbox else "reward.sandbox"
                raise RewardSpecError(
                    f"{where} requires sandbox level {required} or stronger, but runs at {have} ({source}); set "
                    f"{{sandbox: {required}}} in its entry or reward.sandbox={required} (level full needs root, "
                    "userns unprivileged user namespaces; see docs/reward.md, Isolation)")
        managed = sorted(set(f.env) & MANAGED_ENV)
        if managed:
            raise RewardSpecError(f"{where}: env {managed}: set by the reward pool itself; name other variables")
        missing = [name for name in f.env if name not in os.environ]
        if missing:
            raise RewardSpecError(f"{where}: env names {missing}, not set in this process's environment; set "
                                  "them where the run starts (the reward actors inherit it) or drop them from `env`")
