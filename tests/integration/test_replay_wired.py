"""Replay wired end to end: replayed rows weighted identically on the fused and naive loss paths (and
differently from unweighted rows); a run with replay resumes from a checkpoint and reproduces the
uninterrupted run (buffer + replay generator in the driver state)."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest
import ray

from launch.config import load_config
from rl.trainer import TrainerWorker

from .conftest import debug_config, ones_reward
from .test_trainer_paths import _samples

pytestmark = pytest.mark.slow


def _trainer(model_dir, *overrides):
    cfg = load_config("configs/debug_cpu.yaml", ["trainer.num_workers=1", "trainer.zero_stage=0", *overrides])
    actor = ray.remote(TrainerWorker).options(num_cpus=0).remote(
        0, 1, model_path=model_dir, trainer=cfg.trainer, model=cfg.model,
        loss=cfg.algorithm.trainer_loss(), temperature=0.8, need_ref=cfg.algorithm.needs_reference,
        threads=1, seed=0)
    addr, port = ray.get(actor.rendezvous_address.remote())
    ray.get(actor.setup.remote(addr, port))
    return actor


@pytest.mark.parametrize("mb", [1, 2])
def test_replayed_rows_weighted_fused_equals_naive(ray_cluster, tiny_model_dir, mb):
    on = ["algorithm.replay.enable=true", "algorithm.replay.staleness_cap=1.5"]
    fused = _trainer(tiny_model_dir, "trainer.fused_loss=true", *on)
    naive = _trainer(tiny_model_dir, "trainer.fused_loss=false", *on)
    plain = _trainer(tiny_model_dir, "trainer.fused_loss=true")
    samples = [replace(s, replayed=(i % 2 == 0), is_weight=(0.5 if i % 4 == 0 else 1.0)) for i, s in enumerate(_samples())]
    a, b, c = ray.get([fused.train_step.remote(samples, mb, 1), naive.train_step.remote(samples, mb, 1),
                       plain.train_step.remote(samples, mb, 1)])
    for ra, rb, rc in zip(a.records, b.records, c.records):
        assert ra["loss/policy"] == pytest.approx(rb["loss/policy"], rel=1e-4, abs=1e-6)
        assert "actor/tis_ess" in ra and "actor/tis_ess" in rb  # TIS on the replayed rows
        assert ra["actor/tis_ess"] == pytest.approx(rb["actor/tis_ess"], rel=1e-4)
        assert "actor/tis_ess" not in rc
    assert any(abs(ra["loss/policy"] - rc["loss/policy"]) > 1e-5 for ra, rc in zip(a.records, c.records))


def _records(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_resume_with_replay_reproduces(ray_cluster, tmp_path):
    from launch.loop import run
    on = ["algorithm.replay.enable=true", "algorithm.replay.max_staleness=null", "trainer.eval_every=0",
          "trainer.save_every=2"]
    full = tmp_path / "full"
    run(debug_config(full, "trainer.total_steps=4", *on))
    part = tmp_path / "part"
    run(debug_config(part, "trainer.total_steps=2", *on))
    run(debug_config(part, "trainer.total_steps=4", *on))
    a = {r["step"]: r for r in _records(full)}
    b = _records(part)
    assert [r["step"] for r in b] == [0, 1, 2, 3, 4]
    assert "replay/size" in b[-1]
    for r in b[3:]:
        for key in ("loss/policy", "replay/size", "replay/fraction", "replay/mean_staleness", "actor/grad_norm"):
            assert r[key] == pytest.approx(a[r["step"]][key], rel=1e-6, abs=1e-7), key


def test_dynamic_sampling_short_step_is_topped_up_from_the_buffer(ray_cluster, tmp_path):
    """With replay on, dynamic sampling capped at one round ends a step short instead of failing, and the
    buffer fills the batch back to train_prompts x group_size informative rows (docs/algorithms.md, "Replay buffer")."""
    from launch.loop import run

    out = tmp_path / "run"
    run(debug_config(out, f"reward.fns=[{ones_reward(tmp_path)}]", "data.eval=null", "trainer.total_steps=4",
                     "trainer.save_every=0",
                     "algorithm.dynamic_sampling.enable=true", "algorithm.dynamic_sampling.metric=reward",
                     "algorithm.dynamic_sampling.max_rounds=1", "algorithm.replay.enable=true"))
    records = _records(out)  # no eval split: no step-0 record
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    short = [r for r in records if r["rollout/ds_short_groups"] > 0]
    assert short, [r["rollout/ds_short_groups"] for r in records]  # one round never gave all 4 groups here
    for r in records:
        assert r["rollout/ds_rounds"] == 1.0
        fresh = r["rollout/num_samples"]  # informative groups only (metric=reward varies within them)
        assert fresh == 4 * (4 - r["rollout/ds_short_groups"])
        if r["replay/shortfall"] == 0:  # the buffer had something to draw: the batch is full and informative
            assert r["actor/trained_samples"] == r["actor/informative_samples"] == 16
            assert r["replay/fraction"] == pytest.approx((16 - fresh) / 16)
    assert any(r["replay/fraction"] > 0 for r in short)
