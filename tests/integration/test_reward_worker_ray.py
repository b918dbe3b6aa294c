"""The Ray reward actor: K actors each own a RewardRunner; the driver scores shards on them.

Uses the session's local Ray cluster (`ray_cluster` in tests/integration/conftest.py).
"""

from __future__ import annotations

import pytest

ray = pytest.importorskip("ray")

from reward.worker import RewardWorker  # noqa: E402


@pytest.mark.slow
def test_reward_actors_score_shards(ray_cluster, tmp_path):
    quarantine = str(tmp_path / "q.jsonl")
    actors = [RewardWorker.options(num_cpus=1).remote(["arith"], 5.0, 1, quarantine) for _ in range(2)]
    pings = ray.get([a.ping.remote() for a in actors])
    assert all(p["ok"] and p["functions"] == ["arith"] for p in pings)
    rows = [{"prompt": f"{i}+1", "completion": f"= {i + 1}", "answer": str(i + 1 if i % 3 else 0)} for i in range(8)]
    shards = ray.get([a.score.remote(rows[k::2]) for k, a in enumerate(actors)])
    rewards = {}
    for k, shard in enumerate(shards):
        for j, res in enumerate(shard):
            rewards[k + 2 * j] = res.reward
    assert [rewards[i] for i in range(8)] == [1.0 if i % 3 else 0.0 for i in range(8)]
    # A row missing its answer column is an error on the actor too, and lands in the shared quarantine.
    (bad,) = ray.get(actors[0].score.remote([{"prompt": "p", "completion": "1"}]))
    assert bad.status == "error" and bad.reward is None
    assert ray.get(actors[0].ping.remote())["counts"]["error"] == 1
    ray.get([a.close.remote() for a in actors])
