"""The whole loop on local Ray with the tiny model and 2 DeepSpeed ranks (gloo).

Shows, at ZeRO-2 and ZeRO-3: the weights change; the rollout workers hold exactly the synced
weights (a probe sequence's logprobs agree between a rollout worker and the trainer), which rank 0
publishes whole and once each; the outputs
are where docs/architecture.md says; a run killed after a checkpoint resumes at the right step and reproduces
the uninterrupted run's metrics; `trainer.lr_scheduler=linear` takes the logged lr to 0 over the run.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import ray
import torch

from launch.cluster import create_workers
from launch.loop import Driver
from launch.prepare import prepare
from rl import steps

from .conftest import debug_config, ones_reward

pytestmark = pytest.mark.slow


def _records(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _state(path):
    from safetensors.torch import load_file

    files = sorted(path.glob("*.safetensors"))
    return {k: v for f in files for k, v in load_file(f).items()}


@pytest.mark.parametrize("zero_stage", [2, 3])
def test_train_sync_and_outputs(ray_cluster, tmp_path, zero_stage):
    # the "1"-share reward: continuous, so a group of a random model's answers is informative (arith on a random
    # model scores 0 everywhere for most sampling streams, leaving nothing to move the weights)
    cfg = debug_config(tmp_path, f"reward.fns=[{ones_reward(tmp_path)}]",
                       f"trainer.zero_stage={zero_stage}", "trainer.total_steps=2", "trainer.save_every=1")
    prep = prepare(cfg)
    workers = create_workers(cfg, prep.model_path, str(tmp_path))
    driver = Driver(cfg, prep, workers)
    driver.train()
    driver.close()

    records = _records(tmp_path)
    assert [r["step"] for r in records] == [0, 1, 2]
    for r in records[1:]:
        for key in ("reward/mean", "loss/policy", "perf/step_time_s", "perf/tokens_per_s"):
            assert key in r
    assert "eval/accuracy" in records[0] and "eval/accuracy" in records[2]
    written = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert [s["step"] for s in written] == [1] * 8 + [2] * 8  # the first 8 of each step (two groups of 4)
    assert all(s["prompt"].endswith("<|assistant|>") and "ones" in s["reward_metrics"] for s in written)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_1", "step_2"][-cfg.trainer.keep_last:]

    # weights changed, and final/ is a plain HF directory
    from transformers import AutoModelForCausalLM

    before, after = _state(Path(prep.model_path)), _state(tmp_path / "final")
    assert any(not torch.equal(before[k], after[k]) for k in before if k in after)
    AutoModelForCausalLM.from_pretrained(tmp_path / "final")

    # the rollout worker holds the synced weights: the same probe logprobs on both sides
    prompts = [prep.eval_rows[i]["prompt_ids"] for i in range(3)]
    responses = [[10, 11, 12, 13], [20, 21], [30, 31, 32]]
    roll = ray.get(workers.rollout[0].score.remote(prompts, responses, cfg.rollout.temperature))
    train = ray.get([t.probe_logprobs.remote(prompts, responses) for t in workers.trainer])[0]
    for a, b in zip(roll, train):
        assert torch.allclose(torch.tensor(a), torch.tensor(b), atol=1e-4), (a, b)
    assert ray.get(workers.rollout[0].ping.remote()) == 2  # policy version after 2 syncs

    # actor/kl_to_start: step 1's answers scored under the starting policy, then under each step's weights
    probe = driver.kl_probe
    assert len(probe["responses"]) == min(cfg.trainer.kl_probe, cfg.trainer.train_prompts * cfg.rollout.group_size) and all(probe["responses"])
    assert all(r["actor/kl_to_start"] >= 0 for r in records[1:]) and records[2]["actor/kl_to_start"] > 0
    now = ray.get(workers.trainer[0].probe_logprobs.remote(probe["prompts"], probe["responses"]))
    assert steps.kl_to_start(probe["logprobs"], now)["actor/kl_to_start"] == pytest.approx(
        records[2]["actor/kl_to_start"], rel=1e-6)

    # what a sync publishes: from every rank a PublishedWeights; rank 0's buckets hold every parameter once,
    # gathered whole (ZeRO-3 partitions included), exactly as final/ has it
    published = ray.get([t.publish_weights.remote() for t in workers.trainer])
    assert [p.transport for p in published] == ["object_store"] * 2 and published[1].buckets == ()
    synced = [named for ref in published[0].buckets for named in ray.get(ref)]
    assert sorted(n for n, _ in synced) == sorted(after) and all(torch.equal(t, after[n]) for n, t in synced)


def test_resume_continues_at_the_right_step_and_reproduces(ray_cluster, tmp_path):
    from launch.loop import run

    full = tmp_path / "full"
    run(debug_config(full, "trainer.total_steps=4", "trainer.save_every=2", "trainer.eval_every=0"))
    part = tmp_path / "part"
    run(debug_config(part, "trainer.total_steps=2", "trainer.save_every=2", "trainer.eval_every=0"))
    # "killed" after step 2: continue with the full budget; resume=auto picks checkpoints/step_2
    run(debug_config(part, "trainer.total_steps=4", "trainer.save_every=2", "trainer.eval_every=0"))

    assert (part / "config.yaml").is_file() and (part / "final" / "config.json").is_file()
    a = {r["step"]: r for r in _records(full)}
    b = _records(part)
    assert [r["step"] for r in b] == [0, 1, 2, 3, 4]  # nothing re-run, nothing skipped
    for r in b[3:]:
        # actor/kl_to_start: the probe of step 1 came back with the checkpoint
        for key in ("reward/mean", "loss/policy", "rollout/response_length_mean", "actor/grad_norm",
                    "actor/kl_to_start"):
            assert r[key] == pytest.approx(a[r["step"]][key], rel=1e-6, abs=1e-7), key


def test_linear_lr_schedule_decays_over_the_run(ray_cluster, tmp_path):
    from launch.loop import run

    cfg = debug_config(tmp_path, "trainer.total_steps=2", "trainer.lr_scheduler=linear", "trainer.eval_every=0",
                       "trainer.save_every=0")
    run(cfg)
    # 2 planned updates (1 mini-batch, 1 epoch per step); actor/lr is the lr after the step's update
    lrs = [r["actor/lr"] for r in _records(tmp_path)[1:]]
    assert lrs == pytest.approx([cfg.trainer.lr / 2, 0.0], abs=1e-12)


def test_token_budget_stops_early_evaluates_saves_and_stays_stopped_on_resume(ray_cluster, tmp_path):
    from launch.loop import run

    budget = ["trainer.total_steps=50", "trainer.max_generated_tokens=150", "trainer.eval_every=0",
              "trainer.save_every=0"]
    run(debug_config(tmp_path, *budget))
    records = _records(tmp_path)
    last = records[-1]
    assert 1 <= last["step"] < 50  # 4 prompts x 4 answers x <= 8 tokens per step: the budget ends the run first
    totals = [r["perf/generated_tokens_total"] for r in records[1:]]
    assert totals[-1] >= 150 and all(t < 150 for t in totals[:-1])  # stops after the step that spends it
    assert totals[-1] == sum(r["perf/generated_tokens"] for r in records[1:])
    assert "eval/accuracy" in last  # the last step is evaluated
    assert (tmp_path / "checkpoints" / f"step_{last['step']}").is_dir() and (tmp_path / "final" / "config.json").is_file()
    run(debug_config(tmp_path, *budget))  # resume=auto from the spent budget: nothing more runs
    assert _records(tmp_path) == records
