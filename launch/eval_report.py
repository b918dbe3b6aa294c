"""The report of `python -m launch.eval`: statistics per group of prompts, the JSON report, the per-sample
records and the console table. Pure functions of scored samples (no model, no I/O but `write`).

Groups: every prompt (`all`), and the prompts of each `data_source` value (rows without one form the group
NO_SOURCE). Correctness is `rl.steps.is_correct` (the accuracy function's `acc`, as in training); when no
reward function reports `acc`, mean rewards take its place. Statistics and intervals: rl/passk.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rl import passk, steps
from rl.types import Sample

NO_SOURCE = "(no data_source)"
"""The group of the rows that have no `data_source` column (or a null one)."""


def data_source(s: Sample) -> str:
    value = s.fields.get("data_source")
    return NO_SOURCE if value is None else str(value)


def group_stats(greedy: list[Sample], sampled: list[Sample], *, k: int, uses_acc: bool, resamples: int,
                level: float, seed: int) -> dict[str, Any]:
    """The statistics of one group: its greedy answers (one per prompt) and sampled answers (k per prompt)."""
    out: dict[str, Any] = {"num_prompts": len(steps.by_prompt(greedy or sampled))}
    kw = dict(resamples=resamples, level=level, seed=seed)
    if greedy:
        if uses_acc:
            out["greedy"] = {"accuracy": passk.mean_summary([steps.is_correct(s) for s in greedy], **kw).as_dict()}
        else:
            out["greedy"] = {"reward_mean": passk.mean_summary([s.reward or 0.0 for s in greedy], **kw).as_dict()}
    if sampled:
        groups = list(steps.by_prompt(sampled).values())
        if uses_acc:
            correct = [[steps.is_correct(s) for s in g] for g in groups]
            summary = passk.sampled_summary(correct, passk.ks_upto(k), **kw)
            out["sampled"] = {name: e.as_dict() for name, e in summary.items()}
        else:
            means = [sum(s.reward or 0.0 for s in g) / len(g) for g in groups]
            out["sampled"] = {f"reward_mean@{k}": passk.mean_summary(means, **kw).as_dict()}
    out["reward_errors"] = sum(s.reward_status != "ok" for s in greedy + sampled)
    multi = {mode: [s for s in part if s.tool_calls is not None] for mode, part in (("greedy", greedy),
                                                                                  ("sampled", sampled))}
    if any(multi.values()):  # tool rollouts: how often the answers called a tool, and how the calls went
        out["tools"] = {}
        for mode, part in multi.items():
            if part:
                calls = [c for s in part for c in s.tool_calls]
                out["tools"][mode] = {"tool_call_rate": sum(bool(s.tool_calls) for s in part) / len(part),
                                      "tool_calls_mean": len(calls) / len(part),
                                      "tool_errors": sum(c["status"] != "ok" for c in calls)}
    return out


def build_report(greedy: list[Sample], sampled: list[Sample], *, k: int, resamples: int, level: float,
                 seed: int, header: dict[str, Any]) -> dict[str, Any]:
    """The JSON report: `header` (model, data, settings), the correctness measure, `overall` and
    `by_data_source` (each as `group_stats`)."""
    uses_acc = any("acc" in s.reward_metrics for s in greedy + sampled)
    kw = dict(k=k, uses_acc=uses_acc, resamples=resamples, level=level, seed=seed)
    sources = sorted({data_source(s) for s in greedy + sampled}, key=lambda src: (src == NO_SOURCE, src))
    return {**header, "correctness": "acc" if uses_acc else "reward",
            "overall": group_stats(greedy, sampled, **kw),
            "by_data_source": {src: group_stats([s for s in greedy if data_source(s) == src],
                                                [s for s in sampled if data_source(s) == src], **kw)
                               for src in sources}}


def sample_records(greedy: list[Sample], sampled: list[Sample]) -> list[dict[str, Any]]:
    """samples.jsonl: every answer with its prompt, completion, reward and correctness."""
    out = []
    for mode, samples in (("greedy", greedy), ("sampled", sampled)):
        for s in samples:
            out.append({"mode": mode, "data_source": data_source(s), "answer": s.fields.get("answer"),
                        "correct": steps.is_correct(s), **steps.sample_record(s)})
    return out


def write(out_dir: Path, report: dict[str, Any], records: list[dict[str, Any]]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    with (out_dir / "samples.jsonl").open("w") as f:
        for r in records:
            f.write(json.dumps(r, default=str) + "\n")


def _cell(e: dict[str, Any]) -> str:
    return f"{e['value']:.3f} [{e['ci'][0]:.3f}, {e['ci'][1]:.3f}]"


def format_table(report: dict[str, Any]) -> str:
    """One row per group (all, then each data_source), one column per statistic: value [interval]."""
    rows = [("all", report["overall"]), *report["by_data_source"].items()]
    columns = [f"greedy {name}" for name in report["overall"].get("greedy", {})]
    columns += list(report["overall"].get("sampled", {}))
    cells = [[name, str(g["num_prompts"]),
              *[_cell(g["greedy"][c.split(" ", 1)[1]]) if c.startswith("greedy ") else _cell(g["sampled"][c])
                for c in columns], str(g["reward_errors"])] for name, g in rows]
    header = ["group", "prompts", *columns, "reward errors"]
    widths = [max(len(r[i]) for r in [header, *cells]) for i in range(len(header))]
    lines = ["  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths)))
             for r in [header, *cells]]
    lines.insert(1, "-" * len(lines[0]))
    level = report.get("settings", {}).get("ci_level", 0.95)
    lines.append(f"[lo, hi]: {level:.0%} percentile-bootstrap interval over prompts; correctness: "
                 f"{report['correctness']}")
    return "\n".join(lines)
