"""Algorithm options reach the real loop through the config, end to end on the tiny model.

DAPO-style run: dynamic sampling (filtering on the reward, generating more rounds), overlong shaping,
dual clip, token-level TIS. Stratified run: SAN with length-bucket strata and KL in the
reward (a reference model on the trainer). Each must run, and log the metrics that show the option
was active.
"""

from __future__ import annotations

import json

import pytest

from .conftest import debug_config, ones_reward

pytestmark = pytest.mark.slow

def _run(tmp_path, *overrides):
    from launch.loop import run

    out = tmp_path / "run"
    run(debug_config(out, f"reward.fns=[{ones_reward(tmp_path)}]", "data.eval=null", "trainer.total_steps=2",
                     "trainer.save_every=0", *overrides))
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_dapo_options(ray_cluster, tmp_path):
    records = _run(tmp_path, "algorithm.dynamic_sampling.enable=true", "algorithm.dynamic_sampling.metric=reward",
                   "algorithm.overlong.shaping=true", "algorithm.overlong.buffer=4",
                   "algorithm.loss.clip_ratio_c=10.0", "algorithm.loss.tis_level=token", "rollout.max_new_tokens=6")
    assert [r["step"] for r in records] == [1, 2]
    for r in records:
        assert r["rollout/ds_rounds"] >= 1 and r["rollout/num_samples"] == 4 * 4  # exactly train_prompts groups
        assert r["reward/overlong_penalty"] < 0  # max_new_tokens=6, buffer 4: long answers are punished
        assert "actor/tis_ess" in r
    # generated tokens count every round, dropped groups too (carried-over groups train a later step)
    kept = sum(r["rollout/num_samples"] * r["rollout/response_length_mean"] for r in records)
    assert sum(r["perf/generated_tokens"] for r in records) >= kept - 1e-6


def test_stratified_with_kl_in_reward(ray_cluster, tmp_path):
    records = _run(tmp_path, "algorithm.advantage.name=stratified", "algorithm.advantage.strata_source=length_bucket",
                   "algorithm.advantage.length_bucket_size=4", "algorithm.kl_in_reward.enable=true",
                   "algorithm.kl_in_reward.coef=0.1")
    assert [r["step"] for r in records] == [1, 2]
    assert records[0]["reward/kl_penalty_mean"] == pytest.approx(0.0, abs=1e-6)  # policy == reference at step 1
    assert records[1]["reward/kl_penalty_mean"] != 0.0  # after one update they differ
