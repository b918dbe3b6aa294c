"""rl/steps.py: the driver's algorithm steps on hand-made samples, no Ray: worked numbers, the order of
the replay RNG draws, adversarial inputs (failed rewards, empty steps, a rank with nothing to train)."""

from __future__ import annotations

import math

import pytest
import torch

from launch.config import load_config
from reward.types import RewardResult
from rl import steps
from rl.replay import per_weights
from rl.types import PromptRequest, Sample, TrainResult


def _s(reward=None, *, group=0, status="ok", n_tokens=2, finish="stop", adv=None, metrics=None, stratum=None):
    return Sample(0, group, [1], [5] * n_tokens, [-1.0] * n_tokens, finish, 0, reward=reward, reward_status=status,
                  advantage=adv, reward_metrics=dict(metrics or {}), stratum=stratum)


# ----------------------------------------------------------------------------- rewards onto samples


def test_apply_reward_copies_the_result_and_adds_accuracy():
    result = RewardResult(1.5, {"math": 1.0, "math/acc": 1.0, "format": 1.0}, "ok", None, "easy")
    s = _s()
    steps.apply_reward(s, result, mask_errors=True, reward_names=("math", "format"), accuracy_fn=None)
    assert (s.reward, s.reward_status, s.stratum) == (1.5, "ok", "easy")
    assert s.reward_metrics == {"math": 1.0, "math/acc": 1.0, "format": 1.0, "acc": 1.0}  # names as the reward gives
    assert "acc" not in result.metrics  # the sample's metrics are its own copy


@pytest.mark.parametrize("mask, reward, status", [(True, None, "error"), (False, 0.0, "ok")])
def test_a_failed_reward_is_masked_or_scored_zero(mask, reward, status):
    failed = RewardResult(None, {"format": 1.0}, "error", "math: boom")  # format scored, math raised
    s = _s()
    steps.apply_reward(s, failed, mask_errors=mask, reward_names=("math", "format"), accuracy_fn=None)
    assert (s.reward, s.reward_status) == (reward, status)
    assert s.reward_metrics == {"format": 1.0}  # no `acc`: the function that reports it did not return


def test_shape_overlong_worked_example():
    # L_max = 10, L_cache = 4: |y| = 6 -> 0, 7 -> -0.25, 10 -> -1 (DAPO eq. 13); a failed reward stays None
    samples = [_s(1.0, n_tokens=6), _s(1.0, n_tokens=7), _s(0.0, n_tokens=10, finish="length"),
               _s(None, status="error", n_tokens=10)]
    cfg = load_config(None, ["algorithm.overlong.shaping=true", "algorithm.overlong.buffer=4"]).algorithm.overlong
    steps.shape_overlong(samples, cfg, max_new_tokens=10)
    assert [s.reward for s in samples] == [1.0, 0.75, -1.0, None]
    assert [s.reward_metrics.get("overlong_penalty") for s in samples] == [0.0, -0.25, -1.0, None]
    off = [_s(1.0, n_tokens=10)]
    steps.shape_overlong(off, load_config(None).algorithm.overlong, max_new_tokens=10)
    assert off[0].reward == 1.0 and off[0].reward_metrics == {}


def test_kl_penalty_worked_example():
    samples = [_s(1.0), _s(None, status="timeout"), _s(0.5)]
    m = steps.apply_kl_penalty(samples, {0: 0.2, 1: 0.4, 2: 0.6}, coef=0.5)
    assert [s.reward for s in samples] == pytest.approx([0.9, None, 0.2])  # 1 - 0.5·0.2, 0.5 - 0.5·0.6
    assert [s.reward_metrics.get("kl") for s in samples] == [0.2, None, 0.6]
    assert m == {"reward/kl_penalty_mean": pytest.approx(0.5 * (0.2 + 0.4 + 0.6) / 3)}  # over every sample


def test_rollout_metrics_worked_example_and_one_prefix():
    samples = [_s(1.0, n_tokens=2, metrics={"math": 1.0, "math/acc": 1.0, "acc": 1.0}, stratum="a"),
               _s(0.0, n_tokens=4, finish="length", metrics={"math": 0.0, "math/acc": 0.0, "acc": 0.0}, stratum="a"),
               _s(None, status="error", n_tokens=3, metrics={"format": 1.0}),  # a partial result: not averaged
               _s(None, status="timeout", n_tokens=3)]
    assert steps.rollout_metrics(samples) == {
        "reward/mean": 0.5, "reward/error_rate": 0.25, "reward/timeout_rate": 0.25,
        "rollout/response_length_mean": 3.0, "rollout/response_length_max": 4, "rollout/truncated_frac": 0.25,
        "rollout/num_samples": 4, "reward/math": 0.5, "reward/math/acc": 0.5, "reward/acc": 0.5,
        "reward/stratum/a/mean": 0.5, "reward/stratum/a/count": 2,
    }
    empty = steps.rollout_metrics([])  # a dynamic-sampling step with no informative group
    assert math.isnan(empty["reward/mean"]) and empty["rollout/num_samples"] == 0


def test_eval_metrics_count_a_failed_reward_as_wrong():
    samples = [_s(1.0, metrics={"acc": 1.0}), _s(0.0, metrics={"acc": 0.0}), _s(None, status="error")]
    assert steps.eval_metrics(samples) == {"eval/reward_mean": 0.5, "eval/num_prompts": 3, "eval/accuracy": 1 / 3}
    assert "eval/accuracy" not in steps.eval_metrics([_s(1.0, metrics={"mine": 1.0})])  # nothing reports acc


def test_eval_sampled_metrics_worked_example():
    def answers(prompt_id, accs):
        out = [_s(a, metrics={"acc": a}) for a in accs]
        for s in out:
            s.prompt_id = prompt_id
        return out

    failed = _s(None, status="error")  # prompt 1's fourth answer: its reward failed, so it is not correct
    failed.prompt_id = 1
    samples = answers(0, [1.0, 0.0, 1.0, 0.0]) + answers(1, [1.0, 0.0, 0.0]) + [failed]
    m = steps.eval_sampled_metrics(samples, 4)
    # prompt 0: c=2 of 4, prompt 1: c=1 of 4; pass@2 = 1 - C(2,2)/C(4,2) = 5/6 and 1 - C(3,2)/C(4,2) = 1/2
    assert m == pytest.approx({"eval/avg@4": 3 / 8, "eval/pass@1": 3 / 8, "eval/pass@2": (5 / 6 + 1 / 2) / 2,
                               "eval/pass@4": 1.0})
    assert steps.eval_sampled_metrics([_s(0.5, metrics={"mine": 1.0}), _s(None, status="error")], 2) == {
        "eval/reward_mean@2": 0.25}  # nothing reports acc: the mean reward, a failure as 0


# ----------------------------------------------------------------------------- advantages


def test_assign_advantages_worked_example():
    # group 7: GRPO on [1, 0, 0, 0]: mean 0.25, Bessel std 0.5 -> [1.5, -0.5, -0.5, -0.5] (eps 1e-6 aside);
    # group 8: constant -> 0; a failed reward gets no advantage and leaves the statistics alone
    samples = [_s(r, group=7) for r in (1.0, 0.0, 0.0, 0.0)] + [_s(1.0, group=8), _s(1.0, group=8),
                                                                  _s(None, group=7, status="error", adv=0.3)]
    m = steps.assign_advantages(samples, load_config(None).algorithm)
    assert [s.advantage for s in samples[:6]] == pytest.approx([1.5, -0.5, -0.5, -0.5, 0.0, 0.0], abs=1e-5)
    assert samples[6].advantage is None  # reset, not left from an earlier step
    assert m == {"actor/zero_adv_group_frac": 0.5, "actor/advantage_abs_mean": pytest.approx(3.0 / 6, abs=1e-5)}
    nothing = [_s(None, status="error", adv=1.0)]
    assert steps.assign_advantages(nothing, load_config(None).algorithm) == {"actor/zero_adv_group_frac": 1.0}
    assert nothing[0].advantage is None


def test_overlong_filtering_masks_truncated_samples_but_keeps_their_rewards():
    cfg = load_config("configs/debug_cpu.yaml", ["algorithm.overlong.filtering=true"])
    samples = [_s(r, group=7, finish=reason) for reason, r in (("stop", 1.0), ("length", 0.0), ("stop", 0.0),
                                                               ("length", 1.0))]
    steps.assign_advantages(samples, cfg.algorithm)
    assert [s.advantage is None for s in samples] == [False, True, False, True]
    # the truncated rewards still shaped the group statistics: mean 0.5, so the kept ones are ±
    assert samples[0].advantage > 0 > samples[2].advantage


# ----------------------------------------------------------------------------- replay mixing


def _replay(*overrides):
    alg = load_config(None, ["algorithm.replay.enable=true", *overrides]).algorithm
    return alg, alg.replay.build(drop_truncated=False)


def test_mix_replay_off_returns_the_fresh_batch_and_draws_nothing():
    alg, rng = load_config(None).algorithm, torch.Generator().manual_seed(0)
    samples = [_s(1.0, adv=0.0)]
    before = rng.get_state()
    batch, m = steps.mix_replay(samples, None, rng, alg, n_batch=4, step=1, version=0)
    assert batch is samples and m == {} and torch.equal(rng.get_state(), before)


def test_mix_replay_tops_up_in_the_same_rng_order():
    """SSR shortfall: 2 informative of N = 4, so 2 draws from the buffer (which now holds those 2), then one
    permutation of the 4 rows; the generator is used in exactly that order (the resume test relies on it)."""
    alg, buffer = _replay()
    fresh = [_s(1.0, adv=1.0), _s(0.0, adv=0.0), _s(None, status="error"), _s(0.0, adv=-0.5)]
    rng = torch.Generator().manual_seed(3)
    batch, m = steps.mix_replay(fresh, buffer, rng, alg, n_batch=4, step=1, version=0)

    _, twin_buffer = _replay()
    twin_rng = torch.Generator().manual_seed(3)
    twin_buffer.add(fresh, step=1)
    drawn, _ = twin_buffer.sample(2, twin_rng, current_version=0)
    order = torch.randperm(4, generator=twin_rng).tolist()
    rows = [(1.0, False), (-0.5, False), (drawn[0].advantage, True), (drawn[1].advantage, True)]  # D_eff, draws
    assert [(s.advantage, s.replayed) for s in batch] == [rows[i] for i in order]
    assert torch.equal(rng.get_state(), twin_rng.get_state())
    assert not any(s.replayed for s in fresh)  # the fresh rows (and the stored entries) are never mutated
    assert m["replay/size"] == 2.0 and m["replay/fraction"] == 0.5 and m["replay/shortfall"] == 0.0


def test_mix_replay_per_weights_and_ratio_mode():
    # P = |A| / Σ|A| = 2/3, 1/3 over N = 2 entries; u = (N·P)^-1 = 0.75, 1.5, over the max: 0.5, 1.0
    alg, buffer = _replay("algorithm.replay.per_beta=1.0", "algorithm.replay.mode=ratio", "algorithm.replay.ratio=0.5")
    fresh = [_s(1.0, adv=1.0), _s(0.0, adv=-0.5)]
    batch, m = steps.mix_replay(fresh, buffer, torch.Generator().manual_seed(0), alg, n_batch=99, step=1, version=0)
    replayed = [s for s in batch if s.replayed]
    assert len(batch) == 4 and len(replayed) == 2  # ratio 0.5 of the trained batch: round(2·0.5/0.5) = 2 draws
    assert all(s.is_weight == pytest.approx({1.0: 0.5, -0.5: 1.0}[s.advantage]) for s in replayed)
    assert per_weights(torch.tensor([2 / 3, 1 / 3], dtype=torch.float64), 2, 1.0).tolist() == pytest.approx([0.5, 1.0])
    assert m["replay/fraction"] == 0.5


@pytest.mark.parametrize("per", [[], ["algorithm.replay.per_beta=0.4"]])
def test_mix_replay_with_nothing_informative_trains_the_fresh_rows(per):
    # step 1 with every group all-correct: nothing enters the buffer and nothing can be drawn (with PER on
    # too: there are no draws to weight)
    alg, buffer = _replay(*per)
    fresh = [_s(1.0, adv=0.0), _s(1.0, adv=0.0)]
    batch, m = steps.mix_replay(fresh, buffer, torch.Generator().manual_seed(0), alg, n_batch=2, step=1, version=0)
    assert sorted(map(id, batch)) == sorted(map(id, fresh)) and m["replay/shortfall"] == 2.0


def test_empty_short_step_with_an_empty_buffer_fails_with_what_to_change():
    """Nothing fresh and nothing to replay: the step cannot train, and the error says what to change."""
    alg, buffer = _replay("algorithm.dynamic_sampling.enable=true")
    with pytest.raises(RuntimeError, match="no informative group in 10 rounds and nothing in the replay buffer"):
        steps.mix_replay([], buffer, torch.Generator().manual_seed(0), alg, n_batch=16, step=1, version=0)


# ----------------------------------------------------------------------------- the ranks' results


def _parity(count, abs_sum, k3_sum, abs_max):
    return {"parity/count": count, "parity/abs_sum": abs_sum, "parity/k3_sum": k3_sum, "parity/abs_max": abs_max}


def test_train_metrics_combine_the_ranks():
    ranks = [TrainResult([{"loss/policy": 0.3, "actor/num_tokens": 10.0, "actor/ratio_max": 1.2, "actor/entropy": 1.0}],
                         updates=2, lr=1e-6, grad_norms=[1.0, 3.0], skipped=1, parity=_parity(2.0, 2e-5, 2e-10, 1.5e-5)),
             TrainResult([{"loss/policy": 0.1, "actor/num_tokens": 30.0, "actor/ratio_max": 1.5, "actor/entropy": 2.0}],
                         updates=2, lr=1e-6, grad_norms=[1.0, 3.0], skipped=0, parity=_parity(6.0, 6e-5, 2e-10, 4e-5))]
    batch = [_s(1.0, adv=a) for a in (1.0, 0.0, -1.0, None)]
    m = steps.train_metrics(ranks, batch)
    assert m.pop("rollout/behaviour_kl_k3") == pytest.approx(5e-11, abs=1e-20)  # (2e-10 + 2e-10) / 8 tokens
    assert m == {
        "loss/policy": pytest.approx(0.2),  # the micro-batch shares summed, over 2 updates: (0.3 + 0.1) / 2
        "actor/num_tokens": 20.0,  # tokens per update
        "actor/ratio_max": 1.5,
        "actor/entropy": 1.75,  # token-weighted: (1·10 + 2·30) / 40
        "rollout/logprob_diff_mean": pytest.approx(1e-5), "rollout/logprob_diff_max": 4e-5,
        "actor/lr": 1e-6, "actor/grad_norm": 2.0,
        "actor/skipped_zero_adv_frac": 0.25, "actor/trained_samples": 4, "actor/informative_samples": 2,
    }


def test_train_metrics_when_nothing_was_trained():
    idle = TrainResult([], updates=1, lr=1e-6, grad_norms=[], skipped=2, parity=_parity(0.0, 0.0, 0.0, 0.0))
    m = steps.train_metrics([idle, idle], [_s(1.0, adv=0.0)] * 4)
    assert m == {"loss/policy": 0.0, "actor/lr": 1e-6, "actor/skipped_zero_adv_frac": 1.0,
                 "actor/trained_samples": 4, "actor/informative_samples": 0}  # no gap measured, no grad norm


# ----------------------------------------------------------------------------- records and requests


def test_sample_record_and_prompt_requests():
    from launch.loop import prompt_requests
    from rollout.engine import GenerationOutput
    from rl.faults import Guard
    from rollout.worker import RolloutWorker

    s = _s(0.5, metrics={"math": 1.0}, adv=0.25)
    record = steps.sample_record(s)
    assert record["reward_metrics"] == {"math": 1.0} and record["reward_metrics"] is not s.reward_metrics
    assert (record["reward"], record["advantage"], record["response_tokens"]) == (0.5, 0.25, 2)

    rows = [{"prompt_ids": [i, i], "prompt_text": f"p{i}", "fields": {"answer": str(i)}} for i in range(3)]
    requests = prompt_requests(rows, [2, 0], [5, 6])
    assert requests == [PromptRequest(2, 5, [2, 2], "p2", {"answer": "2"}), PromptRequest(0, 6, [0, 0], "p0",
                                                                                           {"answer": "0"})]
    with pytest.raises(AttributeError):
        requests[0].group_id = 9  # frozen: what the driver sent is what the worker reads
    with pytest.raises(ValueError):
        prompt_requests(rows, [0, 1], [5])  # one group id per prompt

    class Engine:  # two answers per prompt, prompt-major
        def generate(self, prompts, params):
            return [GenerationOutput(k // 2, [7, k], [-0.1, -0.2], "stop") for k in range(2 * len(prompts))]

    worker = RolloutWorker.__new__(RolloutWorker)
    worker.engine, worker.version, worker.guard, worker.tool_runner = Engine(), 3, Guard(None), None
    worker.tokenizer = type("Tok", (), {"batch_decode": lambda self, ids, **kw: [str(x) for x in ids]})()
    out = worker.generate(requests, None)
    assert [(o.prompt_id, o.group_id, o.prompt_text, o.fields["answer"], o.policy_version) for o in out] == [
        (2, 5, "p2", "2", 3), (2, 5, "p2", "2", 3), (0, 6, "p0", "0", 3), (0, 6, "p0", "0", 3)]
