"""benchmarks/tools_calculator.py's task and summary on hand-made results (the runs themselves are the benchmark)."""

from __future__ import annotations

import json
from argparse import Namespace

import pytest

from tests.benchmark_module import benchmark_module


@pytest.fixture(scope="module")
def bench():
    with benchmark_module("tools_calculator") as module:
        yield module


def test_the_task_is_seeded_disjoint_and_a_chat_with_the_worked_example(bench, tmp_path):
    train, held = bench.write_task(tmp_path / "a", n_train=50, n_eval=20)
    again, _ = bench.write_task(tmp_path / "b", n_train=50, n_eval=20)
    assert train.read_text() == again.read_text()
    rows = [json.loads(line) for line in train.read_text().splitlines()]
    evals = [json.loads(line) for line in held.read_text().splitlines()]
    assert (len(rows), len(evals)) == (50, 20)
    assert not {r["prompt"][-1]["content"] for r in rows} & {r["prompt"][-1]["content"] for r in evals}
    for r in rows + evals:
        assert r["prompt"][:2] == bench.EXAMPLE
        a, b = (int(x) for x in r["prompt"][-1]["content"][len("What is "):-1].split(" + "))
        assert 100 <= a <= 999 and 100 <= b <= 999 and r["answer"] == str(a + b)


def test_markdown_reports_every_eval_and_the_first_steps(bench):
    train = [{"step": s, "accuracy": s / 10, "tool_call_rate": 1.0, "tool_calls_mean": 1.0, "tool_error_rate": 0.0,
              "step_s": 1.0, "tokens": 100 * s} for s in range(1, 10)]
    runs = [{"arm": "grpo", "seed": 0, "wall_s": 60.0, "train": train,
             "evals": [{"step": 0, "accuracy": 0.2, "tool_call_rate": 0.25, "tokens": 0},
                       {"step": 5, "accuracy": 0.9, "tool_call_rate": 1.0, "tokens": 500}]},
            {"arm": "no_tools", "seed": 0, "wall_s": 30.0,
             "train": [{**t, "tool_call_rate": None, "tool_error_rate": None} for t in train],
             "evals": [{"step": 0, "accuracy": 0.02, "tool_call_rate": None, "tokens": 0}]}]
    text = bench.markdown(runs, Namespace())
    assert "| grpo | 0 | 0.200 (0.25) | 0.900 (1.00) |" in text
    assert "| no_tools | 0 | 0.020 | - |" in text
    assert "| grpo | 0 | 0.20 / 0.50 / 0.80 | 1.00 / 1.00 / 1.00 | 0.00 | 900 | 60 s |" in text
    assert "| no_tools | 0 | 0.20 / 0.50 / 0.80 | - / - / - | - | 900 | 30 s |" in text
