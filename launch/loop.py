"""The driver: one synchronous RL step after another (docs/architecture.md, "One step").

    1. draw train_prompts prompts; each becomes a group of G samples (fresh group id per round)
    2. generate on the rollout workers (prompts sharded across them)
    3. score on the reward workers (sandboxed; errors are masked out, never scored as wrong)
    4. dynamic sampling (optional): keep informative groups, generate more until the batch is full
    5. advantages (registry) on the final batch; replay (optional) tops it up with past informative samples
    6. train on the trainer ranks (exact global token-mean over each mini-batch)
    7. sync weights trainer → rollout workers; bump the policy version
    8. metrics, periodic held-out eval, periodic checkpoint

Run it with `python -m launch.train CONFIG [key=value ...]`; tests call `run(cfg)` directly.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import asdict, replace
from pathlib import Path

import ray
import torch

from launch import checkpoint
from launch.cluster import Workers, check_reachable, connect, create_workers
from launch.config import Config, save_config
from launch.metrics import MetricsLogger, aggregate_trainer_records, parity_metrics
from launch.prepare import Prepared, prepare, startup_warnings
from rl.advantages import compute_advantages, strata_from_samples
from rl.replay import per_weights, ratio_count, replay_metrics, rng_state, set_rng_state, topup_count
from rl.sampling import overlong_penalty
from rl.types import Sample
from rollout.data import PromptIterator
from rollout.engine import SamplingParams

log = logging.getLogger("rlvr")


def run(cfg: Config) -> Path:
    """Train per `cfg`; returns the output directory (holding final/)."""
    check_reachable(cfg)
    prep = prepare(cfg)  # validates data, rewards and the model path before any model is loaded
    for warning in startup_warnings(cfg):
        log.warning("%s", warning)
    out = Path(cfg.trainer.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    connect(cfg)
    workers = create_workers(cfg, prep.model_path, str(out))
    driver = Driver(cfg, prep, workers)
    try:
        driver.train()
    finally:
        driver.close()
    return out


class Driver:
    def __init__(self, cfg: Config, prep: Prepared, workers: Workers):
        self.cfg, self.prep, self.w = cfg, prep, workers
        self.out = Path(cfg.trainer.output_dir)
        self.iterator = PromptIterator(len(prep.train_rows), seed=cfg.trainer.seed, shuffle=cfg.data.shuffle)
        self.sampler = cfg.algorithm.dynamic_sampling.build()
        self.replay = cfg.algorithm.replay.build(drop_truncated=cfg.algorithm.overlong.filtering)
        self.replay_rng = torch.Generator().manual_seed(cfg.trainer.seed)  # draws and batch order; checkpointed
        self.rng = random.Random(cfg.trainer.seed)
        self.step, self.version, self.next_group_id = 0, 0, 0
        self.generated_tokens = 0  # every sampled response token of the run (all rounds, eval excluded)
        self.start_step = self._maybe_resume()
        self.logger = MetricsLogger(self.out, total_steps=cfg.trainer.total_steps, config=asdict(cfg),
                                    wandb_mode=cfg.logging.wandb_mode, wandb_project=cfg.logging.wandb_project,
                                    console=cfg.logging.console, start_step=self.start_step)

    # -- the loop --------------------------------------------------------------------------
    def train(self) -> None:
        t = self.cfg.trainer
        if self.start_step == 0 and self.prep.eval_rows:
            self.logger.log(0, self.evaluate())
        for step in range(self.start_step + 1, t.total_steps + 1):
            if self.budget_spent():  # resumed from the checkpoint that spent it
                break
            self.step = step
            t0 = time.perf_counter()
            samples, timing, rollout_metrics = self.collect()  # steps 1-4
            metrics = {**rollout_metrics, **self.kl_in_reward(samples), **self.compute_advantages(samples)}  # step 5
            self.logger.log_samples(step, [sample_record(s) for s in samples[:self.cfg.logging.samples_per_step]])
            batch, replay_m = self.mix_replay(samples)
            metrics.update(replay_m)

            t_train = time.perf_counter()
            ray.get([w.sleep.remote() for w in self.w.rollout])  # colocated: hand the GPUs to the trainer
            ref = ray.put(batch)
            results = ray.get([r.train_step.remote(ref, t.mini_batches, t.epochs) for r in self.w.trainer])
            records = [rec for res in results for rec in res["records"]]
            metrics.update(aggregate_trainer_records(records, results[0]["updates"]))
            metrics.update(parity_metrics([res["parity"] for res in results]))
            metrics["actor/lr"] = results[0]["lr"]
            if results[0]["grad_norms"]:
                metrics["actor/grad_norm"] = sum(results[0]["grad_norms"]) / len(results[0]["grad_norms"])
            metrics["actor/skipped_zero_adv_frac"] = sum(r["skipped"] for r in results) / max(len(batch), 1)
            metrics["actor/trained_samples"] = len(batch)
            metrics["actor/informative_samples"] = sum(1 for s in batch if s.advantage)  # fresh and replayed
            metrics.setdefault("loss/policy", 0.0)  # every sample skipped: all advantages 0, the loss is exactly 0
            timing["perf/train_s"] = time.perf_counter() - t_train

            t_sync = time.perf_counter()
            self.sync_weights(step)  # step 7
            timing["perf/sync_s"] = time.perf_counter() - t_sync

            tokens = timing.pop("perf/generated_tokens")
            self.generated_tokens += tokens
            last = step == t.total_steps or self.budget_spent()
            if self.prep.eval_rows and (last or (t.eval_every and step % t.eval_every == 0)):
                metrics.update(self.evaluate())
            step_time = time.perf_counter() - t0
            metrics.update(timing, **{"perf/step_time_s": step_time, "perf/tokens_per_s": tokens / step_time,
                                      "perf/generated_tokens": tokens,
                                      "perf/generated_tokens_total": self.generated_tokens})
            self.logger.log(step, metrics)
            if last:
                break
            if t.save_every and step % t.save_every == 0:
                self.save_checkpoint(step)
        self.save_checkpoint(self.step)
        self.save_final()

    def budget_spent(self) -> bool:
        budget = self.cfg.trainer.max_generated_tokens
        return budget is not None and self.generated_tokens >= budget

    # -- steps 1-4: generate, score, filter ----------------------------------------------------
    def collect(self) -> tuple[list[Sample], dict[str, float], dict[str, float]]:
        cfg = self.cfg
        timing = {"perf/generate_s": 0.0, "perf/reward_s": 0.0, "perf/generated_tokens": 0}
        B, G = cfg.trainer.train_prompts, cfg.rollout.group_size
        if self.sampler is None:
            groups = self._generate_round(B, G, timing)
            samples = [s for g in groups for s in g]
            return samples, timing, self._rollout_metrics(samples)
        failed_rounds = 0
        short_ok = self.replay is not None  # after max_rounds the replay buffer fills the shortfall (SSR)
        while not self.sampler.ready(B, allow_short=short_ok):
            groups = self._generate_round(B, G, timing)
            # filter on accuracy of the samples that were scored; a group needs two to vary
            clean = [[s for s in g if s.reward_status == "ok"] for g in groups]
            clean = [g for g in clean if len(g) >= 2]
            if clean:
                self.sampler.add(clean)
            else:
                failed_rounds += 1
                if failed_rounds >= (cfg.algorithm.dynamic_sampling.max_rounds or 10):
                    raise RuntimeError("dynamic sampling: every sample of several rounds failed its reward "
                                       f"function; see {self.out / 'quarantine.jsonl'}")
        groups = self.sampler.take(B, allow_short=short_ok)
        samples = [s for g in groups for s in g]  # empty only when short_ok: mix_replay then fills the batch
        metrics = self._rollout_metrics(samples)
        metrics.update(self.sampler.metrics)
        return samples, timing, metrics

    def _generate_round(self, B: int, G: int, timing: dict) -> list[list[Sample]]:
        cfg = self.cfg
        t0 = time.perf_counter()
        requests = []
        for pid in self.iterator.next_ids(B):
            row = self.prep.train_rows[pid]
            requests.append({"prompt_id": pid, "group_id": self.next_group_id, "prompt_ids": row["prompt_ids"],
                             "prompt_text": row["prompt_text"], "fields": row["fields"]})
            self.next_group_id += 1
        params = SamplingParams(n=G, temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p,
                                max_new_tokens=cfg.rollout.max_new_tokens, stop=list(cfg.rollout.stop),
                                seed=self.rng.randrange(2**31))
        samples = self._generate_and_score(requests, params, timing, t0)
        timing["perf/generated_tokens"] += sum(len(s.response_ids) for s in samples)  # kept or not
        self._shape_rewards(samples)
        by_group: dict[int, list[Sample]] = {}
        for s in samples:
            by_group.setdefault(s.group_id, []).append(s)
        return list(by_group.values())

    def _generate_and_score(self, requests: list[dict], params: SamplingParams, timing: dict | None = None,
                            t0: float = 0.0) -> list[Sample]:
        """Generate on the rollout workers; each worker's samples go to the reward workers as soon as
        that worker finishes, so scoring overlaps the generation still running elsewhere."""
        R, K = len(self.w.rollout), len(self.w.reward)
        shards = [requests[i::R] for i in range(R)]
        pending = {w.generate.remote(shard, replace(params, seed=None if params.seed is None else params.seed + i)): i
                   for i, (w, shard) in enumerate(zip(self.w.rollout, shards)) if shard}
        parts: dict[int, list[Sample]] = {}
        scores: dict[int, list] = {}
        while pending:
            [done], _ = ray.wait(list(pending), num_returns=1)
            i = pending.pop(done)
            parts[i] = ray.get(done)
            rows = [{**s.fields, "prompt": s.prompt_text, "completion": s.response_text} for s in parts[i]]
            scores[i] = [w.score.remote(rows[k::K]) for k, w in enumerate(self.w.reward)]
        if timing is not None:
            timing["perf/generate_s"] += time.perf_counter() - t0
        t1 = time.perf_counter()
        samples = []
        for i in sorted(parts):  # shard order, not completion order: runs stay reproducible
            for k, results in enumerate(ray.get(scores[i])):
                for s, res in zip(parts[i][k::K], results):
                    self._apply_reward(s, res)
            samples += parts[i]
        if timing is not None:
            timing["perf/reward_s"] += time.perf_counter() - t1
        return samples

    def _apply_reward(self, s: Sample, res) -> None:
        s.reward, s.reward_status, s.stratum = res.reward, res.status, res.stratum
        s.reward_metrics = {k.removeprefix("reward/"): v for k, v in res.metrics.items()}
        if res.status != "ok" and not self.cfg.algorithm.mask_reward_errors:
            s.reward, s.reward_status = 0.0, "ok"  # opt-in: train on failures as reward 0
        if s.reward is not None:
            acc = accuracy(s, self.prep.reward_names, self.cfg.reward.accuracy_fn)
            if acc is not None:
                s.reward_metrics["acc"] = acc

    def _shape_rewards(self, samples: list[Sample]) -> None:
        """DAPO soft overlong punishment (added to the reward; accuracy metrics untouched)."""
        ol = self.cfg.algorithm.overlong
        if not ol.shaping:
            return
        max_new = self.cfg.rollout.max_new_tokens
        pen = overlong_penalty(torch.tensor([s.response_length for s in samples]), max_new,
                               ol.resolved_buffer(max_new), ol.penalty_factor).tolist()
        for s, p in zip(samples, pen):
            if s.reward is not None:
                s.reward_metrics["overlong_penalty"] = p
                s.reward += p

    # -- step 5: advantages ----------------------------------------------------------------------
    def kl_in_reward(self, samples: list[Sample]) -> dict[str, float]:
        """Optional PPO-RLHF-style penalty: reward −= coef · Σ_t KL_t(π_θ‖π_ref), before advantages."""
        kr = self.cfg.algorithm.kl_in_reward
        if not kr.enable or not samples:
            return {}
        ref = ray.put(samples)
        parts = ray.get([t.sequence_kl.remote(ref, kr.estimator) for t in self.w.trainer])
        kl = {i: v for part in parts for i, v in part.items()}
        for i, s in enumerate(samples):
            if s.reward is not None:
                s.reward_metrics["kl"] = kl[i]
                s.reward -= kr.coef * kl[i]
        return {"reward/kl_penalty_mean": kr.coef * sum(kl.values()) / len(kl)}

    def compute_advantages(self, samples: list[Sample]) -> dict[str, float]:
        alg = self.cfg.algorithm
        ok = [s for s in samples if s.reward_status == "ok" and s.reward is not None]
        for s in samples:
            s.advantage = None
        if not ok:
            return {"actor/zero_adv_group_frac": 1.0}
        rewards = torch.tensor([s.reward for s in ok], dtype=torch.float32)
        group_ids = torch.tensor([s.group_id for s in ok], dtype=torch.long)
        strata = strata_from_samples(ok, alg.advantage.strata_source, length_bucket_size=alg.advantage.length_bucket_size) \
            if alg.advantage.strata_source else None
        adv = compute_advantages(alg.advantage.name, rewards, group_ids, strata=strata, **alg.advantage_params())
        for s, a in zip(ok, adv.tolist()):
            # overlong filtering: truncated answers keep their place in the group statistics but train no token
            s.advantage = None if (alg.overlong.filtering and s.truncated) else a
        groups: dict[int, list[float]] = {}
        for s, a in zip(ok, adv.tolist()):
            groups.setdefault(s.group_id, []).append(a)
        zero = sum(all(abs(a) < 1e-12 for a in g) for g in groups.values()) / len(groups)
        return {"actor/zero_adv_group_frac": zero, "actor/advantage_abs_mean": float(adv.abs().mean())}

    def mix_replay(self, samples: list[Sample]) -> tuple[list[Sample], dict[str, float]]:
        """SSR (arXiv 2504.08837 Alg. 1; docs/algorithms.md, "Replay buffer"): the fresh informative samples D_eff
        enter the buffer and the batch is topped up with prioritised draws from it. Trains on D_eff ∪ draws:
        zero-advantage rows would only dilute the token mean. Returns (the trained batch, replay/* metrics)."""
        rc = self.cfg.algorithm.replay
        if self.replay is None:
            return samples, {}
        self.replay.add(samples, step=self.step)
        eff = [s for s in samples if s.advantage]  # |Â| > 0 (None = masked out, 0 = no signal)
        n_batch = self.cfg.trainer.train_prompts * self.cfg.rollout.group_size
        n = topup_count(n_batch, len(eff)) if rc.mode == "shortfall" else ratio_count(len(eff), rc.ratio)
        replayed, probs = self.replay.sample(n, self.replay_rng, current_version=self.version)
        u = per_weights(probs, len(self.replay), rc.per_beta).tolist() if rc.per_beta is not None else []
        for k, s in enumerate(replayed):  # copies: setting fields never touches the stored entries
            s.replayed, s.is_weight = True, (u[k] if u else 1.0)
        batch = eff + replayed
        if not batch:  # nothing informative and an empty buffer
            if not samples:  # a dynamic-sampling step that ended with no group at all
                raise RuntimeError(
                    f"dynamic sampling: no informative group in {self.cfg.algorithm.dynamic_sampling.max_rounds} "
                    "rounds and nothing in the replay buffer to train on. The data is too hard or too easy for the "
                    "current model: raise algorithm.dynamic_sampling.max_rounds, raise rollout.group_size, or use a "
                    "dataset of matching difficulty")
            batch = list(samples)  # the fresh batch trains (all rows skipped), as without replay
        # mini-batches are contiguous slices: interleave so that no update sees only replayed rows
        batch = [batch[i] for i in torch.randperm(len(batch), generator=self.replay_rng).tolist()]
        return batch, replay_metrics(self.replay, replayed, n_batch=len(batch), current_version=self.version,
                                     n_requested=n)

    def _rollout_metrics(self, samples: list[Sample]) -> dict[str, float]:
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
        return m

    # -- step 7: weights -------------------------------------------------------------------------
    def sync_weights(self, version: int) -> None:
        published = ray.get([r.publish_weights.remote() for r in self.w.trainer])[0]  # rank 0's holds any buckets
        ray.get([w.update_weights.remote(published, version) for w in self.w.rollout])
        self.version = version

    # -- step 8: eval, checkpoints -----------------------------------------------------------
    def evaluate(self) -> dict[str, float]:
        rows = self.prep.eval_rows
        requests = [{"prompt_id": i, "group_id": -1, "prompt_ids": r["prompt_ids"], "prompt_text": r["prompt_text"],
                     "fields": r["fields"]} for i, r in enumerate(rows)]
        params = SamplingParams(n=1, greedy=True, max_new_tokens=self.cfg.rollout.max_new_tokens,
                                stop=list(self.cfg.rollout.stop))
        samples = self._generate_and_score(requests, params)
        ok = [s for s in samples if s.reward_status == "ok" and s.reward is not None]
        out = {"eval/reward_mean": sum(s.reward for s in ok) / max(len(ok), 1), "eval/num_prompts": len(samples)}
        if any("acc" in s.reward_metrics for s in ok):  # a failed reward counts as not correct
            out["eval/accuracy"] = sum(s.reward_metrics.get("acc", 0.0) for s in ok) / len(samples)
        return out

    def driver_state(self) -> dict:
        return {"step": self.step, "version": self.version, "next_group_id": self.next_group_id,
                "generated_tokens": self.generated_tokens,
                "iterator": self.iterator.state_dict(), "rng": self.rng.getstate(),
                "sampler": self.sampler.state_dict() if self.sampler is not None else None,
                "replay": self.replay.state_dict() if self.replay is not None else None,
                "replay_rng": rng_state(self.replay_rng)}

    def save_checkpoint(self, step: int) -> None:
        def save_trainer(directory: str, tag: str) -> None:
            ray.get([r.save_checkpoint.remote(directory, tag) for r in self.w.trainer])

        checkpoint.save(self.out, step, self.driver_state(), save_trainer, self.cfg.trainer.keep_last)

    def _maybe_resume(self) -> int:
        resume = self.cfg.trainer.resume
        if resume == "never":
            return 0
        path = checkpoint.latest(self.out) if resume == "auto" else Path(resume)
        if path is None:
            return 0
        state = checkpoint.load_driver_state(path)
        ray.get([r.load_checkpoint.remote(str(path / "trainer"), "state") for r in self.w.trainer])
        self.step, self.version, self.next_group_id = state["step"], state["version"], state["next_group_id"]
        self.generated_tokens = state.get("generated_tokens", 0)
        self.iterator.load_state_dict(state["iterator"])
        self.rng.setstate(state["rng"])
        if self.sampler is not None and state["sampler"] is not None:
            self.sampler.load_state_dict(state["sampler"])
        if self.replay is not None and state.get("replay") is not None:
            self.replay.load_state_dict(state["replay"])
        if "replay_rng" in state:
            set_rng_state(self.replay_rng, state["replay_rng"])
        self.sync_weights(self.version)
        log.info("resumed from %s at step %d", path, self.step)
        return self.step

    def save_final(self) -> None:
        final = self.out / "final"
        ray.get([r.save_hf.remote(str(final)) for r in self.w.trainer])

    def close(self) -> None:
        if hasattr(self, "logger"):
            self.logger.close()


def sample_record(s: Sample) -> dict:
    """What samples.jsonl keeps of a sample: the rendered prompt, the completion and how it was scored."""
    return {"prompt_id": s.prompt_id, "group_id": s.group_id, "policy_version": s.policy_version,
            "prompt": s.prompt_text, "completion": s.response_text, "response_tokens": s.response_length,
            "finish_reason": s.finish_reason, "reward": s.reward, "reward_status": s.reward_status,
            "reward_metrics": dict(s.reward_metrics), "advantage": s.advantage}


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
