"""The algorithm's steps between generation and training (docs/architecture.md, "One step"): pure
functions over lists of samples, no Ray, no I/O. Each takes the config section it needs, sets fields of
the samples it is given and returns its step metrics; launch/loop.py calls them in order. Reward metric
names carry no prefix on a sample (`math`, `math/acc`, `acc`); `rollout_metrics` adds `reward/` once.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch

from reward.registry import COMPLETION_IDS, SOURCE_PROMPT
from rl import passk
from rl.advantages import compute_advantages, strata_from_samples
from rl.replay import ReplayBuffer, per_weights, ratio_count, replay_metrics, topup_count
from rl.sampling import overlong_penalty
from rl.types import Sample, TrainResult

if TYPE_CHECKING:  # the config sections; launch/ imports rl/, never the other way at run time
    from launch.schema_algorithm import AlgorithmConfig, OverlongConfig
    from reward.types import RewardResult


def apply_reward(s: Sample, result: RewardResult, *, mask_errors: bool, reward_names: tuple[str, ...],
                 accuracy_fn: str | None) -> None:
    """Copy a reward result into its sample and add the sample's accuracy (`acc`, see `accuracy`).
    A failed reward keeps reward None and is masked out; with mask_errors=False it trains as reward 0."""
    s.reward, s.reward_status, s.stratum = result.reward, result.status, result.stratum
    s.reward_metrics = dict(result.metrics)
    if result.status != "ok" and not mask_errors:
        s.reward, s.reward_status = 0.0, "ok"  # opt-in: train on failures as reward 0
    if s.reward is not None:
        acc = accuracy(s, reward_names, accuracy_fn)
        if acc is not None:
            s.reward_metrics["acc"] = acc


def accuracy(sample: Sample, reward_names: tuple[str, ...], accuracy_fn: str | None) -> float | None:
    """A sample's correctness: the `acc` of reward function `accuracy_fn`, or of the one function that
    reports it; None when none does. Never the weighted reward: with fns=[math, format] a well-formatted
    wrong answer is wrong. Taken before overlong shaping, so a length penalty alone never makes a group
    look informative to dynamic sampling (DAPO arXiv 2503.14476 §3.2)."""
    if accuracy_fn is not None:
        if f"{accuracy_fn}/acc" not in sample.reward_metrics:
            raise RuntimeError(f"reward.accuracy_fn={accuracy_fn}: that function returned no `acc` for a sample "
                               f"(it returned {sorted(k for k in sample.reward_metrics if k.startswith(accuracy_fn))}); "
                               "return {'reward': ..., 'acc': ...} from it, or name another function")
        return float(sample.reward_metrics[f"{accuracy_fn}/acc"])
    reporting = [n for n in reward_names if f"{n}/acc" in sample.reward_metrics]
    if len(reporting) > 1:
        raise RuntimeError(f"reward functions {reporting} all report `acc`: set reward.accuracy_fn to the one that "
                           "defines a correct answer")
    return float(sample.reward_metrics[f"{reporting[0]}/acc"]) if reporting else None


def shape_overlong(samples: list[Sample], overlong: OverlongConfig, max_new_tokens: int) -> None:
    """DAPO soft overlong punishment (arXiv 2503.14476 eq. 13), added to each scored reward and kept as
    the sample's `overlong_penalty` metric; accuracy is untouched. A no-op unless overlong.shaping."""
    if not overlong.shaping:
        return
    pen = overlong_penalty(torch.tensor([s.response_length for s in samples]), max_new_tokens,
                           overlong.resolved_buffer(max_new_tokens), overlong.penalty_factor).tolist()
    for s, p in zip(samples, pen):
        if s.reward is not None:
            s.reward_metrics["overlong_penalty"] = p
            s.reward += p


def apply_kl_penalty(samples: list[Sample], kl: dict[int, float], coef: float) -> dict[str, float]:
    """KL in the reward (PPO-RLHF): reward_i −= coef · kl[i], kl[i] = Σ_t KL_t(π_θ‖π_ref) of samples[i] from the
    trainer ranks, kept as the sample's `kl`; reward/kl_penalty_mean = coef · mean(kl) over every sample."""
    for i, s in enumerate(samples):
        if s.reward is not None:
            s.reward_metrics["kl"] = kl[i]
            s.reward -= coef * kl[i]
    return {"reward/kl_penalty_mean": coef * sum(kl.values()) / len(kl)}


def rollout_metrics(samples: list[Sample]) -> dict[str, float]:
    """reward/* and rollout/* of the step's samples: reward/mean and every numeric per-sample reward metric
    averaged over the scored (ok) samples, error/timeout rates, lengths, and per-stratum reward means."""
    if not samples:  # a dynamic-sampling step that ended with no informative group (replay fills it)
        return {"reward/mean": float("nan"), "rollout/num_samples": 0}
    ok = [s for s in samples if s.reward_status == "ok" and s.reward is not None]
    lengths = [s.response_length for s in samples]
    m = {
        "reward/mean": sum(s.reward for s in ok) / len(ok) if ok else float("nan"),
        "reward/error_rate": sum(s.reward_status == "error" for s in samples) / len(samples),
        "reward/timeout_rate": sum(s.reward_status == "timeout" for s in samples) / len(samples),
        "rollout/response_length_mean": sum(lengths) / len(lengths),
        "rollout/response_length_max": max(lengths),
        "rollout/truncated_frac": sum(s.truncated for s in samples) / len(samples),
        "rollout/num_samples": len(samples),
    }
    keys = {k for s in ok for k, v in s.reward_metrics.items() if isinstance(v, (int, float))}
    for k in sorted(keys):
        vals = [s.reward_metrics[k] for s in ok if k in s.reward_metrics]
        m[f"reward/{k}"] = sum(vals) / len(vals)
    strata: dict[str, list[float]] = {}
    for s in ok:
        if s.stratum is not None:
            strata.setdefault(str(s.stratum), []).append(s.reward)
    for name, vals in strata.items():
        m[f"reward/stratum/{name}/mean"], m[f"reward/stratum/{name}/count"] = sum(vals) / len(vals), len(vals)
    m.update(tool_metrics(samples))
    return m


def tool_metrics(samples: list[Sample]) -> dict[str, float]:
    """rollout/tool_* of multi-turn samples (none when the step has no tool rollouts): calls per sample, the share
    of samples that called a tool, turns, the calls' error and timeout rates, the share of response tokens that are
    tool output, and the reward mean and count of each tool-call count (the strata of `strata_source: tool_calls`)."""
    multi = [s for s in samples if s.tool_calls is not None]
    if not multi:
        return {}
    calls = [c for s in multi for c in s.tool_calls]
    tool_tokens = sum(s.response_length - s.num_trained_tokens for s in multi)
    m = {"rollout/tool_calls_mean": len(calls) / len(multi),
         "rollout/tool_call_rate": sum(bool(s.tool_calls) for s in multi) / len(multi),
         "rollout/turns_mean": sum(s.turns for s in multi) / len(multi),
         "rollout/tool_token_frac": tool_tokens / max(sum(s.response_length for s in multi), 1)}
    if calls:
        m["rollout/tool_error_rate"] = sum(c["status"] == "error" for c in calls) / len(calls)
        m["rollout/tool_timeout_rate"] = sum(c["status"] == "timeout" for c in calls) / len(calls)
    by_count: dict[int, list[float]] = {}
    for s in multi:
        if s.reward_status == "ok" and s.reward is not None:
            by_count.setdefault(len(s.tool_calls), []).append(s.reward)
    for k, vals in sorted(by_count.items()):
        m[f"rollout/tool_calls/{k}/reward_mean"], m[f"rollout/tool_calls/{k}/count"] = sum(vals) / len(vals), len(vals)
    return m


def staleness_metrics(samples: list[Sample], version: int) -> dict[str, float]:
    """rollout/staleness_{mean,max}: how many policy versions the step's fresh samples lag the policy that trains
    on them (`version`, the trainer's before this step's update); 0 in sync mode, 1 in one_step_off from step 2,
    up to trainer.max_staleness in async. Replayed samples are counted by the replay metrics instead."""
    if not samples:
        return {}
    lag = [version - s.policy_version for s in samples]
    return {"rollout/staleness_mean": sum(lag) / len(lag), "rollout/staleness_max": float(max(lag))}


def assign_advantages(samples: list[Sample], alg: AlgorithmConfig) -> dict[str, float]:
    """Every sample's advantage: estimator `alg.advantage.name` over the scored samples, None for the rest (and
    for truncated ones under overlong filtering). Returns actor/zero_adv_group_frac, actor/advantage_abs_mean."""
    ok = [s for s in samples if s.reward_status == "ok" and s.reward is not None]
    for s in samples:
        s.advantage = None
    if not ok:
        return {"actor/zero_adv_group_frac": 1.0}
    a = alg.advantage
    rewards = torch.tensor([s.reward for s in ok], dtype=torch.float32)  # (N,)
    group_ids = torch.tensor([s.group_id for s in ok], dtype=torch.long)  # (N,)
    strata = strata_from_samples(ok, a.strata_source, length_bucket_size=a.length_bucket_size) \
        if a.strata_source else None
    adv = compute_advantages(a.name, rewards, group_ids, strata=strata, **alg.advantage_params())
    for s, v in zip(ok, adv.tolist()):
        # overlong filtering: truncated answers keep their place in the group statistics but train no token
        s.advantage = None if (alg.overlong.filtering and s.truncated) else v
    groups: dict[int, list[float]] = {}
    for s, v in zip(ok, adv.tolist()):
        groups.setdefault(s.group_id, []).append(v)
    zero = sum(all(abs(v) < 1e-12 for v in g) for g in groups.values()) / len(groups)
    return {"actor/zero_adv_group_frac": zero, "actor/advantage_abs_mean": float(adv.abs().mean())}


def mix_replay(samples: list[Sample], buffer: ReplayBuffer | None, rng: torch.Generator, alg: AlgorithmConfig, *,
               n_batch: int, step: int, version: int) -> tuple[list[Sample], dict[str, float]]:
    """SSR (arXiv 2504.08837 Alg. 1; docs/algorithms.md, "Replay buffer"): the fresh informative samples D_eff
    enter the buffer and the batch is topped up to `n_batch` with prioritised draws from it. Trains on D_eff ∪
    draws: zero-advantage rows would only dilute the token mean. (samples, {}) when replay is off (no buffer)."""
    if buffer is None:
        return samples, {}
    rc = alg.replay
    buffer.add(samples, step=step)
    eff = [s for s in samples if s.advantage]  # |Â| > 0 (None = masked out, 0 = no signal)
    n = topup_count(n_batch, len(eff)) if rc.mode == "shortfall" else ratio_count(len(eff), rc.ratio)
    replayed, probs = buffer.sample(n, rng, current_version=version)
    u = per_weights(probs, len(buffer), rc.per_beta).tolist() if rc.per_beta is not None and replayed else []
    for k, s in enumerate(replayed):  # copies: setting fields never touches the stored entries
        s.replayed, s.is_weight = True, (u[k] if u else 1.0)
    batch = eff + replayed
    if not batch:  # nothing informative and an empty buffer
        if not samples:  # a dynamic-sampling step that ended with no group at all
            raise RuntimeError(
                f"dynamic sampling: no informative group in {alg.dynamic_sampling.max_rounds} "
                "rounds and nothing in the replay buffer to train on. The data is too hard or too easy for the "
                "current model: raise algorithm.dynamic_sampling.max_rounds, raise rollout.group_size, or use a "
                "dataset of matching difficulty")
        batch = list(samples)  # the fresh batch trains (all rows skipped), as without replay
    # mini-batches are contiguous slices: interleave so that no update sees only replayed rows
    batch = [batch[i] for i in torch.randperm(len(batch), generator=rng).tolist()]
    return batch, replay_metrics(buffer, replayed, n_batch=len(batch), current_version=version, n_requested=n)


def train_metrics(results: list[TrainResult], batch: list[Sample]) -> dict[str, float]:
    """The step's loss/* and actor/* from every rank's micro-batch records: `loss/*` (each a micro-batch's share
    of its mini-batch loss) and `actor/num_tokens` summed per update, `*_max` the max, the rest token-weighted
    by `actor/num_tokens`; the trainer-vs-engine logprob gap of the trained tokens from the ranks' sums; and
    `perf/<phase>_s` (the slowest rank's seconds per phase) and `perf/trainer_{rss,peak_rss}_mb` (the
    largest rank's memory)."""
    records = [rec for res in results for rec in res.records]
    updates = max(results[0].updates, 1)
    out: dict[str, float] = {}
    weight = sum(r.get("actor/num_tokens", 0.0) for r in records) or 1.0
    for k in sorted({k for r in records for k in r}):
        vals = [(r[k], r.get("actor/num_tokens", 0.0)) for r in records if k in r]
        if k.startswith("loss/") or k == "actor/num_tokens":
            out[k] = sum(v for v, _ in vals) / updates
        elif k.endswith("_max"):
            out[k] = max(v for v, _ in vals)
        else:
            out[k] = sum(v * w for v, w in vals) / weight
    parity = [res.parity for res in results]  # rl.policy.parity_sums; KL(engine‖trainer) by k3
    if count := sum(p["parity/count"] for p in parity):  # 0: no token trained, nothing measured
        out["rollout/logprob_diff_mean"] = sum(p["parity/abs_sum"] for p in parity) / count
        out["rollout/logprob_diff_max"] = max(p["parity/abs_max"] for p in parity)
        out["rollout/behaviour_kl_k3"] = sum(p["parity/k3_sum"] for p in parity) / count
    out["actor/lr"] = results[0].lr
    if results[0].grad_norms:
        out["actor/grad_norm"] = sum(results[0].grad_norms) / len(results[0].grad_norms)
    out["actor/skipped_zero_adv_frac"] = sum(r.skipped for r in results) / max(len(batch), 1)
    for phase in sorted({k for r in results for k in r.timing}):  # the slowest rank sets the pace
        out[f"perf/{phase}_s"] = max(r.timing.get(phase, 0.0) for r in results)
    for key in sorted({k for r in results for k in r.memory}):  # rss_mb, peak_rss_mb: the largest rank
        out[f"perf/trainer_{key}"] = max(r.memory.get(key, 0.0) for r in results)
    out["actor/trained_samples"] = len(batch)
    out["actor/informative_samples"] = sum(1 for s in batch if s.advantage)  # fresh and replayed
    out.setdefault("loss/policy", 0.0)  # every sample skipped: all advantages 0, the loss is exactly 0
    return out


def kl_to_start(start: list[list[float]], now: list[list[float]]) -> dict[str, float]:
    """actor/kl_to_start: the k3 estimate (Schulman 2020, "Approximating KL divergence") of KL(π_start‖π) per
    token, from answers sampled by the starting policy: with d = log π(y_t) − log π_start(y_t), the mean over
    tokens of e^d − 1 − d, which is ≥ 0 term by term and unbiased for samples drawn from π_start.

    >>> kl_to_start([[-1.0, -2.0]], [[-1.0, -2.0]])
    {'actor/kl_to_start': 0.0}
    >>> round(kl_to_start([[0.0]], [[math.log(0.5)]])["actor/kl_to_start"], 4)  # 0.5 - 1 + log 2
    0.1931
    """
    terms = [math.expm1(b - a) - (b - a) for xs, ys in zip(start, now, strict=True)
             for a, b in zip(xs, ys, strict=True)]
    return {"actor/kl_to_start": sum(terms) / len(terms)} if terms else {}


def eval_metrics(samples: list[Sample]) -> dict[str, float]:
    """eval/* of one greedy answer per held-out prompt; a failed reward counts as not correct."""
    ok = [s for s in samples if s.reward_status == "ok" and s.reward is not None]
    out = {"eval/reward_mean": sum(s.reward for s in ok) / max(len(ok), 1), "eval/num_prompts": len(samples)}
    if any("acc" in s.reward_metrics for s in ok):
        out["eval/accuracy"] = sum(s.reward_metrics.get("acc", 0.0) for s in ok) / len(samples)
    multi = [s for s in samples if s.tool_calls is not None]
    if multi:
        out["eval/tool_call_rate"] = sum(bool(s.tool_calls) for s in multi) / len(multi)
        out["eval/tool_calls_mean"] = sum(len(s.tool_calls) for s in multi) / len(multi)
    return out


def reward_row(s: Sample) -> dict[str, Any]:
    """What the reward functions get of a sample (training and launch.eval): its dataset columns, the rendered
    prompt, the completion, and, under reserved keys for the TRL convention, the dataset's own prompt (text or
    chat messages) and the completion's token ids."""
    row = {**s.fields, "prompt": s.prompt_text, "completion": s.response_text,
           SOURCE_PROMPT: s.fields.get("prompt", s.prompt_text), COMPLETION_IDS: list(s.response_ids)}
    if s.tool_calls is not None and "tool_calls" not in row:  # a dataset column of that name keeps its place
        row["tool_calls"] = [dict(c) for c in s.tool_calls]
    return row


def is_correct(s: Sample) -> bool:
    """A scored sample whose `acc` (see `accuracy`) is at least 0.5 (the built-ins' accs are 0 or 1); a failed
    reward is not correct."""
    return s.reward_status == "ok" and s.reward is not None and s.reward_metrics.get("acc", 0.0) >= 0.5


def by_prompt(samples: list[Sample]) -> dict[int, list[Sample]]:
    """The samples of each prompt id, in order of first appearance."""
    out: dict[int, list[Sample]] = {}
    for s in samples:
        out.setdefault(s.prompt_id, []).append(s)
    return out


def eval_sampled_metrics(samples: list[Sample], k: int) -> dict[str, float]:
    """eval/avg@k (mean correctness of the k answers per prompt) and the unbiased eval/pass@k' for k' = 1, 2, 4,
    ..., k (rl/passk.py) of k sampled answers per held-out prompt; with no function reporting `acc`,
    eval/reward_mean@k (a failed reward counts as 0 there)."""
    groups = list(by_prompt(samples).values())
    if not any("acc" in s.reward_metrics for s in samples):
        return {f"eval/reward_mean@{k}": sum(s.reward or 0.0 for s in samples) / max(len(samples), 1)}
    correct = [[is_correct(s) for s in g] for g in groups]
    out = {f"eval/avg@{k}": sum(map(sum, correct)) / max(sum(map(len, correct)), 1)}
    for kk in passk.ks_upto(k):
        out[f"eval/pass@{kk}"] = float(passk.per_prompt(correct, kk).mean())
    return out


def sample_record(s: Sample) -> dict[str, Any]:
    """What samples.jsonl keeps of a sample: the rendered prompt, the completion and how it was scored; for a
    multi-turn sample also its turns and tool calls (name, arguments, observation, status, token span)."""
    return {"prompt_id": s.prompt_id, "group_id": s.group_id, "policy_version": s.policy_version,
            "prompt": s.prompt_text, "completion": s.response_text, "response_tokens": s.response_length,
            "finish_reason": s.finish_reason, "reward": s.reward, "reward_status": s.reward_status,
            "reward_metrics": dict(s.reward_metrics), "advantage": s.advantage,
            **({"turns": s.turns, "tool_calls": [dict(c) for c in s.tool_calls]} if s.tool_calls is not None else {})}
