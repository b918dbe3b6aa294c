"""The console: a progress bar on a terminal, one plain line per step everywhere else."""

from __future__ import annotations

import json

from launch.metrics import MetricsLogger

STEP = {"reward/mean": 0.25, "perf/tokens_per_s": 100.0, "perf/generate_s": 1.0, "perf/train_s": 2.0}


def test_rich_console_prints_plain_lines_when_stdout_is_not_a_terminal(tmp_path, capsys):
    logger = MetricsLogger(tmp_path, total_steps=2, config={}, wandb_mode="disabled", wandb_project="p",
                           console="rich")
    logger.log(0, {"eval/accuracy": 0.5})
    logger.log(1, STEP)
    logger.log_samples(1, [{"completion": "7", "reward_metrics": {"arith": 1.0, "slow": float("nan")}}])
    logger.close()
    (sample,) = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert sample == {"step": 1, "completion": "7", "reward_metrics": {"arith": 1.0, "slow": None}}  # valid JSON
    lines = capsys.readouterr().out.splitlines()  # pytest's captured stdout is not a terminal
    assert lines[0] == "step 0: eval/accuracy 0.500"
    assert lines[1].startswith("step 1: reward 0.250 | eval acc 0.500 | 100 tok/s")
    assert [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [0, 1]


def test_rewind_keeps_one_row_per_step_and_wandb_continues_the_same_run(tmp_path, monkeypatch):
    """A resume from step 2 drops the rows of steps 3+ (metrics and samples) before they are logged again; the
    resumed wandb run is the same run (offline mode: no network) and is not sent a step twice."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    first = MetricsLogger(tmp_path, total_steps=4, config={}, wandb_mode="offline", wandb_project="p", console="plain")
    for step in range(4):
        first.log(step, STEP)
        first.log_samples(step, [{"completion": str(step)}])
    run_id = first._wandb.id
    first.close()

    second = MetricsLogger(tmp_path, total_steps=4, config={}, wandb_mode="offline", wandb_project="p",
                           console="plain", start_step=2)
    second.rewind(2)
    assert [json.loads(x)["step"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [0, 1, 2]
    assert [json.loads(x)["step"] for x in (tmp_path / "samples.jsonl").read_text().splitlines()] == [0, 1, 2]
    sent = []
    monkeypatch.setattr(second._wandb, "log", lambda record, step: sent.append(step))
    for step in (3, 4):
        second.log(step, STEP)
    assert second._wandb.id == run_id and sent == [4]  # step 3 already reached wandb before the resume
    second.close()
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2, 3, 4] and all(isinstance(r["time"], float) for r in rows)


def _tensorboard_scalars(directory, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(directory), size_guidance={"scalars": 0})
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def test_tensorboard_gets_every_numeric_metric_and_a_resume_replaces_redone_steps(tmp_path):
    kw = dict(total_steps=4, config={}, wandb_mode="disabled", wandb_project="t", console="plain", tensorboard=True)
    first = MetricsLogger(tmp_path, **kw)
    for step in (1, 2, 3):
        first.log(step, {"reward/mean": float(step), "note": "text is not a scalar"})
    first.close()
    # killed after step 3 with a checkpoint at step 2: the resumed run logs step 3 again, with another value
    resumed = MetricsLogger(tmp_path, start_step=2, **kw)
    resumed.log(3, {"reward/mean": 30.0})
    resumed.log(4, {"reward/mean": 40.0})
    resumed.close()
    assert _tensorboard_scalars(tmp_path / "tensorboard", "reward/mean") == [(1, 1.0), (2, 2.0), (3, 30.0), (4, 40.0)]
