"""Dashboard of a run: `python -m launch.plot RUN_DIR [--out FILE.png]`.

Draws RUN_DIR/metrics.jsonl into one PNG (default RUN_DIR/dashboard.png), so a run — finished, still going, or
copied off a cluster — can be judged at a glance without wandb: reward with held-out accuracy, accuracy, policy
entropy, response length, clip fractions, the rollout/trainer logprob gap, grad norm and lr, the step-time split
and throughput, with red dashed lines at the steps where a faults/* counter went up. A panel whose keys the run
did not log says "not logged"; null/NaN values are skipped. A missing directory, a missing or empty
metrics.jsonl or a malformed line exits with status 2 and one `error:` line naming the file (and line).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

Rows = list[dict[str, Any]]
TIME_SPLIT = ("perf/generate_s", "perf/reward_s", "perf/train_s", "perf/sync_s")
SIZE_PX = (1500, 1450)


class PlotError(Exception):
    """Bad input: main prints it as one `error:` line and exits with status 2."""


def load(run_dir: Path) -> Rows:
    """metrics.jsonl's rows in step order. A later row for a step wins: after a crash before the driver rewound
    the file, the replayed step's row is the one the run went on from."""
    if not run_dir.is_dir():
        raise PlotError(f"{run_dir}: {'not a directory' if run_dir.exists() else 'no such run directory'}")
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise PlotError(f"{path}: not found (no step logged yet, or {run_dir} is not a trainer.output_dir)")
    rows: dict[int, dict[str, Any]] = {}
    with path.open() as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise PlotError(f"{path}:{n}: malformed line ({e.msg})") from None
            if not isinstance(row, dict) or not isinstance(row.get("step"), int):
                raise PlotError(f"{path}:{n}: malformed line (not a JSON object with an integer `step`)")
            rows[row["step"]] = row
    if not rows:
        raise PlotError(f"{path}: empty (no step logged yet)")
    return [rows[s] for s in sorted(rows)]


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def series(rows: Rows, key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of `key` over the rows that logged a finite number for it (null means "not measured")."""
    pts = [(r["step"], v) for r in rows if (v := _num(r.get(key))) is not None]
    return [s for s, _ in pts], [v for _, v in pts]


def matching(rows: Rows, prefix: str, suffix: str = "") -> list[str]:
    """Every logged key with this prefix and suffix: the clip fractions and per-function accuracies vary by run."""
    return sorted({k for r in rows for k in r if k.startswith(prefix) and k.endswith(suffix)})


def fault_steps(rows: Rows) -> list[int]:
    """Steps where some faults/* counter went up. The counters start at 0 in each driver process, so a drop is a
    resume in a new process, and the value then is what that process counted so far."""
    steps: set[int] = set()
    for key in matching(rows, "faults/"):
        prev = 0.0
        for s, v in zip(*series(rows, key)):
            if v > (prev if v >= prev else 0.0):
                steps.add(s)
            prev = v
    return sorted(steps)


def lines(ax: Axes, rows: Rows, keys: list[str]) -> bool:
    """One line per key that has values; False when none has (the panel then says "not logged")."""
    drawn = False
    for k in keys:
        x, y = series(rows, k)
        if x:
            ax.plot(x, y, marker=".", ms=4, label=k)
            drawn = True
    return drawn


def with_twin(ax: Axes, rows: Rows, left: str, right: str) -> bool:
    """`left` on the axis, `right` (another scale) on a green right-hand axis named after it."""
    drawn = lines(ax, rows, [left])
    x, y = series(rows, right)
    if x:
        twin = ax.twinx()
        twin.plot(x, y, "o-", ms=4, color="tab:green")
        twin.set_ylabel(right, color="tab:green")
    return drawn or bool(x)


def logprob_gap(ax: Axes, rows: Rows) -> bool:
    keys = ["rollout/logprob_diff_mean", "rollout/behaviour_kl_k3"]
    if not lines(ax, rows, keys):
        return False
    if all(v > 0 for k in keys for v in series(rows, k)[1]):
        ax.set_yscale("log")  # k3 sits orders of magnitude below the mean |diff|; both matter when they jump
    return True


def time_split(ax: Axes, rows: Rows) -> bool:
    """The step time stacked by phase; a phase a row lacks counts 0 there so the stack stays aligned."""
    keys = [k for k in TIME_SPLIT if series(rows, k)[0]]
    timed = [r for r in rows if any(_num(r.get(k)) is not None for k in keys)]
    if not timed:
        return False
    ax.stackplot([r["step"] for r in timed], *[[_num(r.get(k)) or 0.0 for r in timed] for k in keys], labels=keys)
    return True


PANELS: list[tuple[str, Callable[[Axes, Rows], bool]]] = [
    ("reward (right: held-out eval accuracy)", lambda ax, r: with_twin(ax, r, "reward/mean", "eval/accuracy")),
    ("accuracy (train samples, held-out eval)", lambda ax, r: lines(ax, r, [*matching(r, "reward/", "/acc"),
                                                                               "eval/accuracy"])),
    ("policy entropy", lambda ax, r: lines(ax, r, ["actor/entropy"])),
    ("response length (tokens)",
     lambda ax, r: lines(ax, r, ["rollout/response_length_mean", "rollout/response_length_max"])),
    ("clip fraction", lambda ax, r: lines(ax, r, matching(r, "actor/pg_clipfrac"))),
    ("rollout/trainer logprob gap", logprob_gap),
    ("policy KL to its start (per token)", lambda ax, r: lines(ax, r, ["actor/kl_to_start"])),
    ("grad norm (right: lr)", lambda ax, r: with_twin(ax, r, "actor/grad_norm", "actor/lr")),
    ("step time split (s)", time_split),
    ("throughput (tokens/s)", lambda ax, r: lines(ax, r, ["perf/tokens_per_s"])),
]


def draw(rows: Rows, title: str) -> Figure:
    """The dashboard figure; pyplot is never imported, so no display or global figure state is involved."""
    fig = Figure(figsize=(SIZE_PX[0] / 100, SIZE_PX[1] / 100), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    faults = fault_steps(rows)
    axes = list(fig.subplots(-(-len(PANELS) // 3), 3).flat)
    for ax in axes[len(PANELS):]:
        ax.set_axis_off()
    for ax, (name, panel) in zip(axes, PANELS):
        ax.set_title(name, fontsize=10)
        if not panel(ax, rows):
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes, color="gray")
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        for s in faults:
            ax.axvline(s, color="tab:red", ls="--", lw=1, alpha=0.7)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    note = f"; faults at step{'s' * (len(faults) > 1)} {', '.join(map(str, faults))} (red dashed)" if faults else ""
    fig.suptitle(f"{title}: steps {rows[0]['step']}–{rows[-1]['step']}{note}")
    return fig


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m launch.plot", description="Draw RUN_DIR/metrics.jsonl as a PNG.")
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a run's trainer.output_dir")
    p.add_argument("--out", type=Path, metavar="FILE.png", help="where to write (default RUN_DIR/dashboard.png)")
    args = p.parse_args(argv)
    out = args.out or args.run_dir / "dashboard.png"
    try:
        rows = load(args.run_dir)
        if not out.parent.is_dir():
            raise PlotError(f"--out {out}: no such directory {out.parent}")
    except PlotError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    draw(rows, args.run_dir.resolve().name).savefig(out, format="png")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
