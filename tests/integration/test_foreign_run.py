"""A training run on a verl-format parquet with reward functions written for verl, TRL and OpenRLHF,
given with `data.train=FILE` and `reward.fns` only: real Ray, 2 DeepSpeed ranks, sandboxed reward workers."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from .conftest import debug_config

pytestmark = pytest.mark.slow

REWARDS = '''
def compute_score(data_source, solution_str, ground_truth, extra_info=None):
    assert data_source == "toy/sums" and isinstance(extra_info, dict)
    return {"score": float(ground_truth in solution_str), "acc": ground_truth in solution_str}

def trl_ability(prompts, completions, ability, **kwargs):
    assert prompts[0][0]["role"] == "system" and completions[0][0]["role"] == "assistant"
    return [float(a == "math") for a in ability]

def reward_func(queries, prompts, labels):
    return [float(q.startswith(p) and l is not None) for q, p, l in zip(queries, prompts, labels)]
'''


def test_verl_parquet_with_verl_trl_and_openrlhf_rewards(ray_cluster, tmp_path):
    from launch.loop import run

    rows = [{"data_source": "toy/sums",
             "prompt": [{"role": "system", "content": "You add numbers."},
                        {"role": "user", "content": f"What is {i} + {i}?"}],
             "ability": "math", "reward_model": {"style": "rule", "ground_truth": str(2 * i)},
             "extra_info": {"index": i}} for i in range(8)]
    data = tmp_path / "train.parquet"
    pq.write_table(pa.Table.from_pylist(rows), data)
    (tmp_path / "their_rewards.py").write_text(REWARDS)
    fns = ",".join(f"{tmp_path}/their_rewards.py:{n}" for n in ("compute_score", "trl_ability", "reward_func"))
    out = tmp_path / "run"
    run(debug_config(out, f"data.train={data}", f"reward.fns=[{fns}]", "trainer.total_steps=1",
                     "trainer.save_every=0", "trainer.num_workers=1"))
    (step,) = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert step["step"] == 1 and step["reward/error_rate"] == 0.0
    assert step["reward/trl_ability"] == 1.0 and step["reward/reward_func"] == 1.0
    assert 0.0 <= step["reward/compute_score"] <= 1.0 and "eval/accuracy" not in step  # no eval on own data
    sample = json.loads((out / "samples.jsonl").read_text().splitlines()[0])
    assert "You add numbers." in sample["prompt"] and "[{" not in sample["prompt"]
    # `acc` is the correctness the driver takes from the one function reporting it (verl's dict)
    assert set(sample["reward_metrics"]) == {"compute_score", "compute_score/acc", "trl_ability", "reward_func", "acc"}
