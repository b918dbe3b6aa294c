"""`python -m launch.plot RUN_DIR` draws a real PNG from a realistic metrics.jsonl (eval rows, a key never logged,
nulls, a fault) and stops with one `error:` line (status 2) on a missing directory or file, an empty file or a
malformed line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from matplotlib.image import imread

from launch import plot

ROOT = Path(__file__).resolve().parents[2]


def _rows() -> list[dict]:
    """Step 0 is the eval before training, eval every 2 steps; no clip fractions logged (a loss without them);
    actor/entropy null at step 3 and reward/mean null at step 5 (an empty dynamic-sampling step); a trainer
    rebuild during step 4."""
    rows: list[dict] = [{"step": 0, "time": 1.7e9, "eval/accuracy": 0.1}]
    for s in range(1, 7):
        row = {"step": s, "time": 1.7e9 + 30 * s, "reward/mean": 0.2 + 0.1 * s, "reward/arith/acc": 0.1 * s,
               "actor/entropy": None if s == 3 else 1.5 - 0.1 * s, "actor/kl_to_start": 0.01 * s,
               "rollout/response_length_mean": 40.0 + s,
               "rollout/response_length_max": 64, "rollout/logprob_diff_mean": 1e-3 * s,
               "rollout/behaviour_kl_k3": 1e-6 * s, "actor/grad_norm": 2.0 / s, "actor/lr": 1e-6,
               "perf/generate_s": 20.0, "perf/reward_s": 1.0, "perf/train_s": 8.0 + s, "perf/sync_s": 0.5,
               "perf/tokens_per_s": 300.0 + s, "faults/trainer_restarts": float(s >= 4),
               "faults/recovery_s": 12.5 if s >= 4 else 0.0}
        if s == 5:
            row["reward/mean"] = None
        if s % 2 == 0:
            row["eval/accuracy"] = 0.1 + 0.05 * s
        rows.append(row)
    return rows


@pytest.fixture
def run_dir(tmp_path) -> Path:
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _rows()))
    return tmp_path


def _assert_dashboard(path: Path) -> None:
    img = imread(path)
    assert img.shape[:2] == (plot.SIZE_PX[1], plot.SIZE_PX[0])
    assert img[..., :3].std() > 0.05  # lines and text, not a blank canvas


def test_subprocess_default_output(run_dir):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "launch.plot", str(run_dir)], capture_output=True, text=True,
                          timeout=120, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "wrote" in proc.stdout
    _assert_dashboard(run_dir / "dashboard.png")


def test_main_out_and_panels(run_dir, tmp_path):
    out = tmp_path / "sub" / "d.png"
    out.parent.mkdir()
    assert plot.main([str(run_dir), "--out", str(out)]) == 0
    _assert_dashboard(out)
    fig = plot.draw(plot.load(run_dir), "run")
    empty = {ax.get_title() for ax in fig.axes if any(t.get_text() == "not logged" for t in ax.texts)}
    assert empty == {"clip fraction"}
    assert "faults at step 4 " in fig.get_suptitle()


def test_series_skips_nulls_and_faults_count_per_process():
    rows = _rows()
    assert plot.series(rows, "actor/entropy")[0] == [1, 2, 4, 5, 6]
    assert plot.series(rows, "reward/mean")[0] == [1, 2, 3, 4, 6]
    assert plot.series(rows, "eval/accuracy")[0] == [0, 2, 4, 6]
    assert plot.fault_steps(rows) == [4]
    # a resume in a new process restarts the counters at 0: the drop is no fault, the next rise is
    counts = [0, 1, 1, 0, 0, 2]
    assert plot.fault_steps([{"step": i, "faults/rollout_restarts": c} for i, c in enumerate(counts)]) == [1, 5]


@pytest.mark.parametrize("case, words", [
    ("no dir", ["no such run directory"]),
    ("no file", ["metrics.jsonl", "not found"]),
    ("empty", ["metrics.jsonl", "empty"]),
    ("bad json", ["metrics.jsonl:3:", "malformed"]),
    ("no step", ["metrics.jsonl:2:", "integer `step`"]),
    ("bad out", ["--out", "no such directory"]),
])
def test_one_line_error(case, words, tmp_path, capsys):
    run, out = tmp_path / "run", []
    lines = [json.dumps(r) for r in _rows()[:3]]
    if case != "no dir":
        run.mkdir()
    if case == "empty":
        (run / "metrics.jsonl").write_text("\n \n")
    elif case == "bad json":
        (run / "metrics.jsonl").write_text("\n".join(lines[:2] + ['{"step": 2, "reward/mean": 0.'] + lines[2:]))
    elif case == "no step":
        (run / "metrics.jsonl").write_text("\n".join([lines[0], json.dumps({"reward/mean": 0.5})]))
    elif case == "bad out":
        (run / "metrics.jsonl").write_text("\n".join(lines))
        out = ["--out", str(tmp_path / "missing" / "d.png")]
    assert plot.main([str(run), *out]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert all(w in err[0] for w in words), err[0]
