"""Runs tool calls in sandboxed worker processes: the reward sandbox's pool (reward/pool.py, kind "tool"), one
deadline per call enforced from outside, and an observation for every outcome (a failing, crashing or hung tool
gives the model "error: ...", never a stalled step). rollout/multiturn.py calls it once per turn."""

from __future__ import annotations

from dataclasses import dataclass

from rollout.tools import Tool, ToolCall


@dataclass(frozen=True)
class ToolResult:
    text: str
    """The observation the model reads (an error observation starts with "error: ")."""
    status: str
    """"ok", "error" (the call could not run, or the tool raised / crashed / returned a non-str) or "timeout"."""


class ToolRunner:
    """Runs tool calls in sandboxed worker processes (reward/pool.py, kind "tool"), under a deadline per call.

    One pool for all tools; `run` takes a batch of calls (they run concurrently across `num_workers`
    processes) and returns one ToolResult per call, in order. Observations longer than `max_chars` are cut
    (the end is dropped, and the observation says so)."""

    def __init__(self, tools: list[Tool], *, timeout_s: float = 10.0, num_workers: int = 1, sandbox: str = "full",
                 memory_limit_mb: int | None = 4096, cgroup: str = "auto", max_chars: int = 4000,
                 startup_timeout_s: float = 60.0) -> None:
        from reward.pool import WorkerPool
        from reward.runner import sandbox_limits

        if not tools:
            raise ValueError("ToolRunner: no tools")
        self.tools = {t.name: i for i, t in enumerate(tools)}
        self.timeout_s, self.max_chars = float(timeout_s), max_chars
        self.counts = {"calls": 0, "ok": 0, "error": 0, "timeout": 0}
        self._pool = WorkerPool([t.pool_spec() for t in tools], num_workers=num_workers,
                                limits=sandbox_limits(memory_limit_mb, 64, 64, 256), level=sandbox,
                                startup_timeout_s=startup_timeout_s, cgroup_mode=cgroup, kind="tool")
        self._pool.start()

    @property
    def sandbox_level(self) -> str | None:
        return self._pool.level

    def run(self, calls: list[ToolCall]) -> list[ToolResult]:
        outcomes = self._pool.run([(self.tools[c.name], dict(c.arguments)) for c in calls], self.timeout_s)
        results = []
        for call, out in zip(calls, outcomes):
            self.counts["calls"] += 1
            self.counts[out.status] += 1
            if out.status == "ok":
                text = out.text or ""
                if len(text) > self.max_chars:
                    text = text[:self.max_chars] + f"\n[... {len(text) - self.max_chars} more characters cut]"
                results.append(ToolResult(text, "ok"))
            elif out.status == "timeout":
                results.append(ToolResult(f"error: {call.name} ran past its {self.timeout_s:g} s deadline and was "
                                          "stopped", "timeout"))
            else:
                results.append(ToolResult(f"error: {call.name} failed: {out.error}", "error"))
        return results

    def close(self) -> None:
        self._pool.close()

    def __enter__(self) -> "ToolRunner":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
