"""rl/sampling.py: overlong punishment and dynamic-sampling vectors (docs/algorithms.md), the sampler's
rounds/surplus/error/checkpoint behaviour, and the config -> sampler mapping."""

from __future__ import annotations

import io

import pytest
import torch

from launch import checkpoint
from launch.schema_algorithm import AlgorithmConfig, DynamicSamplingConfig, OverlongConfig
from rl.sampling import DynamicSampler, informative_groups, overlong_penalty
from rl.types import Sample


def lengths(*xs: int) -> torch.Tensor:
    return torch.tensor(xs, dtype=torch.long)


# ----------------------------------------------------------------------------- overlong (DAPO eq. 13)

def test_overlong_paper_scale():
    # (L_max, L_cache) = (20480, 4096): free up to 16384; then linear to −1 at 20480; −1 beyond (paper).
    # 16385 -> −1/4096 = −0.000244; 18432 -> −2048/4096 = −0.5; 20481 -> −1 (verl's formula: −1.000244).
    pen = overlong_penalty(lengths(16384, 16385, 18432, 20480, 20481), 20480, 4096)
    torch.testing.assert_close(pen, torch.tensor([0.0, -0.000244, -0.5, -1.0, -1.0]), atol=1e-6, rtol=0)
    # a correct 18432-token answer: 1 − 0.5 = 0.5
    assert 1.0 + pen[2].item() == pytest.approx(0.5)


def test_overlong_tiny_and_factor():
    # (10, 4): free up to 6; 7 -> −1/4, 8 -> −2/4, 10 -> −1; 11 -> −1 (paper floor; verl −1.25); 0 -> 0.
    pen = overlong_penalty(lengths(0, 5, 6, 7, 8, 10, 11), 10, 4)
    torch.testing.assert_close(pen, torch.tensor([0.0, 0.0, 0.0, -0.25, -0.5, -1.0, -1.0]))
    torch.testing.assert_close(overlong_penalty(lengths(8, 11), 10, 4, penalty_factor=0.5), torch.tensor([-0.25, -0.5]))
    with pytest.raises(ValueError, match="overlong_buffer=0 must be in"):
        overlong_penalty(lengths(1), 10, 0)
    with pytest.raises(ValueError, match="overlong_buffer=11"):
        overlong_penalty(lengths(1), 10, 11)


# ----------------------------------------------------------------------------- informative groups

def test_informative_groups_vector_and_edge_cases():
    # group accuracies [[1,1,1,1],[0,1,0,0],[0,0,0,0],[1,0,1,1]] keep groups 2 and 4
    acc = torch.tensor([1, 1, 1, 1, 0, 1, 0, 0, 0, 0, 0, 0, 1, 0, 1, 1], dtype=torch.float32)
    gid = torch.arange(4).repeat_interleave(4)
    assert informative_groups(acc, gid).tolist() == [False] * 4 + [True] * 4 + [False] * 4 + [True] * 4
    # non-contiguous ids, a group of one (kept, as verl), float values equal up to the last bit
    metric = torch.tensor([0.1 + 0.2, 0.3, 5.0, 1.0, 2.0], dtype=torch.float64)
    gid = torch.tensor([9, 9, -3, 4, 4])
    assert informative_groups(metric, gid).tolist() == [True, True, True, True, True]  # 0.1+0.2 != 0.3 exactly
    same = torch.tensor([0.1, 0.1, 0.1], dtype=torch.float64)  # np.std would be ~1e-17 > 0 here
    assert informative_groups(same, torch.zeros(3, dtype=torch.long)).tolist() == [False] * 3
    assert informative_groups(torch.tensor([]), torch.tensor([], dtype=torch.long)).shape == (0,)


# ----------------------------------------------------------------------------- DynamicSampler

ACC_TABLE = [[1, 1, 1, 1], [0, 1, 0, 0], [0, 0, 0, 0], [1, 0, 1, 1]]


def groups_from(table, tag="r0"):
    return [[(f"{tag}g{i}", a) for a in row] for i, row in enumerate(table)]


def acc(item) -> float:
    return float(item[1])


def test_one_round_suffices():
    # train_prompts=2, G=4: groups 2 and 4 survive, one round, 8 trajectories
    ds = DynamicSampler(acc, max_rounds=3)
    assert not ds.ready(2)
    assert ds.add(groups_from(ACC_TABLE)) == 2
    batch = ds.take(2)
    assert [g[0][0] for g in batch] == ["r0g1", "r0g3"] and sum(len(g) for g in batch) == 8
    assert ds.metrics["rollout/ds_rounds"] == 1.0
    assert ds.metrics["rollout/ds_kept_frac"] == 0.5 and ds.metrics["rollout/ds_zero_var_frac"] == 0.5


def test_accumulates_rounds_and_carries_surplus_oldest_first():
    ds = DynamicSampler(acc, max_rounds=5, carry_surplus=True)
    ds.add(groups_from([[1, 1], [0, 1]], "a"))  # 1 kept
    assert not ds.ready(3)
    ds.add(groups_from([[0, 1], [1, 0], [1, 0]], "b"))  # 3 kept -> 4 held
    assert ds.ready(3)
    batch = ds.take(3)
    assert [g[0][0] for g in batch] == ["ag1", "bg0", "bg1"]
    assert ds.metrics["rollout/ds_rounds"] == 2.0 and ds.metrics["rollout/ds_surplus"] == 1.0
    assert ds.metrics["rollout/ds_kept_frac"] == pytest.approx(4 / 5)
    # next step: the carried group counts; no generation needed for train_prompts=1
    assert ds.num_groups == 1 and ds.ready(1)
    assert [g[0][0] for g in ds.take(1)] == ["bg2"]
    assert ds.metrics["rollout/ds_carried_in"] == 1.0 and ds.metrics["rollout/ds_rounds"] == 0.0


def test_discards_surplus_when_not_carrying():
    ds = DynamicSampler(acc, carry_surplus=False)
    ds.add(groups_from([[0, 1], [1, 0], [1, 0]]))
    assert len(ds.take(1)) == 1
    assert ds.num_groups == 0 and ds.metrics["rollout/ds_discarded_total"] == 2.0


def test_max_rounds_error_says_what_to_do():
    ds = DynamicSampler(acc, max_rounds=2)
    for _ in range(2):
        assert not ds.ready(4)
        ds.add(groups_from([[1, 1], [0, 0], [0, 1]]))
    with pytest.raises(RuntimeError, match="after 2 generation rounds only 2 of 4 .*too hard or too easy.*max_rounds"):
        ds.ready(4)
    with pytest.raises(RuntimeError, match="too hard or too easy"):
        ds.take(4)
    unlimited = DynamicSampler(acc, max_rounds=None)
    for _ in range(50):
        unlimited.add(groups_from([[1, 1]]))
    assert not unlimited.ready(1)


def test_allow_short_ends_the_step_after_max_rounds_with_what_is_held():
    ds = DynamicSampler(acc, max_rounds=2)
    ds.add(groups_from([[1, 1], [0, 1]]))
    assert not ds.ready(4, allow_short=True)  # rounds left: keep generating
    ds.add(groups_from([[0, 0], [1, 0]]))
    assert ds.ready(4, allow_short=True)
    batch = ds.take(4, allow_short=True)
    assert len(batch) == 2 and ds.metrics["rollout/ds_short_groups"] == 2.0
    # the next step starts afresh: round count reset, nothing held
    ds.add(groups_from([[1, 1]]))
    ds.add(groups_from([[0, 0]]))
    assert ds.take(1, allow_short=True) == [] and ds.metrics["rollout/ds_short_groups"] == 1.0
    full = DynamicSampler(acc, max_rounds=1)
    full.add(groups_from([[0, 1], [1, 0]]))
    assert len(full.take(2, allow_short=True)) == 2 and full.metrics["rollout/ds_short_groups"] == 0.0


def test_bad_usage_errors():
    ds = DynamicSampler(acc)
    with pytest.raises(ValueError, match="group 1 is empty"):
        ds.add([[("x", 1)], []])
    with pytest.raises(ValueError, match="got no groups"):
        ds.add([])
    with pytest.raises(ValueError, match="train_prompts=0"):
        ds.ready(0)
    with pytest.raises(ValueError, match="max_rounds=0"):
        DynamicSampler(acc, max_rounds=0)


def _sample(pid: int, acc_value: float, reward: float | None = None) -> Sample:
    return Sample(prompt_id=pid, group_id=pid, prompt_ids=[1, 2], response_ids=[3], rollout_logprobs=[-0.5],
                  finish_reason="stop", policy_version=4, reward=reward, reward_metrics={"acc": acc_value})


def test_state_dict_round_trip_resumes_identically():
    ds = DynamicSampler(acc, max_rounds=4)
    cfg_sampler = DynamicSamplingConfig(enable=True, carry_surplus=True).build()  # real Samples, metric "acc"
    cfg_sampler.add([[_sample(0, 1.0), _sample(0, 0.0)], [_sample(1, 1.0), _sample(1, 1.0)],
                     [_sample(2, 0.0), _sample(2, 1.0)]])
    cfg_sampler.take(1)  # one informative group carried
    ds.add(groups_from([[0, 1], [1, 1]]))  # mid-step: 1 round, 1 group held
    for sampler in (ds, cfg_sampler):
        blob = io.BytesIO()  # what the checkpoint stores and a resume reads back (launch/checkpoint.py)
        torch.save(checkpoint.encode_state(sampler.state_dict()), blob)
        blob.seek(0)
        state = checkpoint.decode_state(torch.load(blob, weights_only=True))
        fresh = DynamicSampler(sampler.metric, max_rounds=sampler.max_rounds, carry_surplus=sampler.carry_surplus)
        fresh.load_state_dict(state)
        assert fresh.state_dict() == sampler.state_dict()
        more = groups_from([[0, 1], [1, 0]], "n") if sampler is ds else [[_sample(5, 0.0), _sample(5, 1.0)]]
        for s in (sampler, fresh):
            s.add(more)
        assert fresh.take(2) == sampler.take(2) and fresh.metrics == sampler.metrics


# ----------------------------------------------------------------------------- config

def test_config_builds_sampler_with_metric_key():
    assert DynamicSamplingConfig().build() is None  # off by default
    by_reward = DynamicSamplingConfig(enable=True, metric="reward", max_rounds=None, carry_surplus=False).build()
    assert by_reward.max_rounds is None and not by_reward.carry_surplus
    # shaped rewards differ (overlong penalty) but accuracy does not: "acc" drops the group, "reward" keeps it
    group = [[_sample(0, 1.0, reward=1.0), _sample(0, 1.0, reward=0.75)]]
    assert by_reward.add(group) == 1
    assert DynamicSamplingConfig(enable=True).build().add(group) == 0
    with pytest.raises(KeyError, match="metric 'score' missing .*set algorithm.dynamic_sampling.metric=reward"):
        DynamicSamplingConfig(enable=True, metric="score").build().add(group)
    with pytest.raises(ValueError, match="max_rounds=0: must be >= 1"):
        DynamicSamplingConfig(max_rounds=0)


def test_overlong_config_buffer_resolution():
    assert OverlongConfig().resolved_buffer(20480) == 4096  # default: a fifth, DAPO's ratio
    assert OverlongConfig(buffer=64).resolved_buffer(128) == 64
    with pytest.raises(ValueError, match="must be <= rollout.max_new_tokens=128"):
        OverlongConfig(buffer=256).resolved_buffer(128)
    with pytest.raises(ValueError, match="algorithm.overlong.buffer=0"):
        OverlongConfig(buffer=0)
    assert not AlgorithmConfig().needs_reference


def test_carrying_the_surplus_needs_tis():
    from launch.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="carry_surplus=True: carried groups are one policy version old"):
        load_config(None, ["algorithm.dynamic_sampling.enable=true", "algorithm.dynamic_sampling.carry_surplus=true"])
    cfg = load_config(None, ["algorithm.dynamic_sampling.enable=true", "algorithm.dynamic_sampling.carry_surplus=true",
                             "algorithm.loss.tis_level=token"])
    assert cfg.algorithm.dynamic_sampling.build().carry_surplus
    assert not load_config(None, ["algorithm.dynamic_sampling.enable=true"]).algorithm.dynamic_sampling.build().carry_surplus
