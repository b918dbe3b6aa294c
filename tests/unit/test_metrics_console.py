"""The console: a progress bar on a terminal, one plain line per step everywhere else."""

from __future__ import annotations

import json

from launch.metrics import MetricsLogger, parity_metrics

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


def test_parity_metrics_combine_ranks():
    ranks = [{"parity/count": 2.0, "parity/abs_sum": 2e-5, "parity/k3_sum": 2e-10, "parity/abs_max": 1.5e-5},
             {"parity/count": 6.0, "parity/abs_sum": 6e-5, "parity/k3_sum": 2e-10, "parity/abs_max": 4e-5}]
    m = parity_metrics(ranks)
    assert m["rollout/logprob_diff_mean"] == 1e-5 and m["rollout/logprob_diff_max"] == 4e-5
    assert abs(m["rollout/behaviour_kl_k3"] - 5e-11) < 1e-20
    assert parity_metrics([{"parity/count": 0.0, "parity/abs_sum": 0.0, "parity/k3_sum": 0.0,
                            "parity/abs_max": 0.0}]) == {}  # nothing trained: nothing to report
