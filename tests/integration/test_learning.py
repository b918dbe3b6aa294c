"""A CI-sized learning check: under GRPO, mean reward rises on a task the tiny model can learn.

The task: answer with as many "1" characters as possible (reward = their share of the response),
scored by a user reward function loaded from a file, as a user would plug one in. The random tiny
model starts near 1/90 (one character of its vocabulary); seeded, so the rise is reproducible.
"""

from __future__ import annotations

import json

import pytest

from .conftest import debug_config, ones_reward

pytestmark = pytest.mark.slow

def test_mean_reward_rises_under_grpo(ray_cluster, tmp_path):
    from launch.loop import run

    out = tmp_path / "run"
    cfg = debug_config(out, f"reward.fns=[{ones_reward(tmp_path)}]", "data.eval=null", "trainer.total_steps=16",
                       "trainer.num_workers=1", "trainer.zero_stage=0", "trainer.lr=3e-3", "trainer.save_every=0",
                       "trainer.train_prompts=8", "rollout.group_size=8", "rollout.max_new_tokens=6",
                       "algorithm.loss.eps_high=0.28")
    run(cfg)
    rewards = [json.loads(line)["reward/mean"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    first, last = sum(rewards[:4]) / 4, sum(rewards[-4:]) / 4
    assert last > 3 * first + 0.05, rewards
