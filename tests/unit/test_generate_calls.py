"""How one round's prompts become generate calls (launch.loop.generate_calls), with and without streamed scoring."""

from __future__ import annotations

import pytest

from launch.config import ConfigError, RolloutConfig
from launch.loop import generate_calls
from rl.types import PromptRequest
from rollout.engine import SamplingParams


def requests(n: int) -> list[PromptRequest]:
    return [PromptRequest(prompt_id=100 + k, group_id=k, prompt_ids=[k], prompt_text=str(k), fields={})
            for k in range(n)]


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_unstreamed_is_one_call_per_worker_with_its_shard_and_seed(workers):
    reqs, params = requests(8), SamplingParams(n=4, seed=1000)
    calls = generate_calls(reqs, params, workers)
    assert [i for i, _, _ in calls] == list(range(workers))
    for i, shard, p in calls:
        assert shard == reqs[i::workers]
        assert p.seed == 1000 + i
        assert p.n == 4


def test_fewer_prompts_than_workers_leaves_idle_workers_without_a_call():
    calls = generate_calls(requests(2), SamplingParams(n=4, seed=0), 3)
    assert [(i, [r.group_id for r in shard]) for i, shard, _ in calls] == [(0, [0]), (1, [1])]


@pytest.mark.parametrize("workers,stream_samples,n,per_call", [(1, 8, 4, 2), (2, 8, 4, 2), (1, 3, 4, 1),
                                                               (2, 12, 4, 3), (1, 1000, 4, 9)])
def test_streamed_calls_hold_whole_groups_cover_every_prompt_once_and_never_share_a_seed(
        workers, stream_samples, n, per_call):
    reqs, params = requests(9), SamplingParams(n=n, seed=7)
    calls = generate_calls(reqs, params, workers, stream_samples)
    assert all(1 <= len(shard) <= per_call for _, shard, _ in calls)
    # every prompt exactly once, each on the worker that holds it unstreamed, in that worker's order
    for i in range(workers):
        mine = [r for w, shard, _ in calls if w == i for r in shard]
        assert mine == reqs[i::workers]
    seeds = [p.seed for _, _, p in calls]
    assert len(set(seeds)) == len(seeds)
    # each worker's first call keeps the unstreamed seed
    first = {}
    for i, _, p in calls:
        first.setdefault(i, p.seed)
    assert first == {i: 7 + i for i in range(workers)}


def test_unseeded_params_stay_unseeded():
    calls = generate_calls(requests(4), SamplingParams(n=2, seed=None), 1, 2)
    assert len(calls) == 4 and all(p.seed is None for _, _, p in calls)


def test_negative_stream_samples_is_a_config_error():
    with pytest.raises(ConfigError, match="rollout.stream_samples=-1"):
        RolloutConfig(stream_samples=-1)
