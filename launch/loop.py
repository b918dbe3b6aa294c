"""The driver: one synchronous RL step after another (docs/architecture.md, "One step").

    1. draw train_prompts prompts; each becomes a group of G samples (fresh group id per round)
    2. generate on the rollout workers (prompts sharded across them)
    3. score on the reward workers (sandboxed; errors are masked out, never scored as wrong)
    4. dynamic sampling (optional): keep informative groups, generate more until the batch is full
    5. advantages (registry) on the final batch; replay (optional) tops it up with past informative samples
    6. train on the trainer ranks (exact global token-mean over each mini-batch)
    7. sync weights trainer → rollout workers; bump the policy version
    8. metrics, periodic held-out eval, periodic checkpoint

The algorithm's steps (rewards onto samples, shaping, KL in the reward, advantages, replay mixing, step
metrics) are pure functions in rl/steps.py; this file holds their order, the Ray calls and the I/O.

Run it with `python -m launch.train CONFIG [key=value ...]`; tests call `run(cfg)` directly.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path

import ray
import torch

from launch import checkpoint
from launch.cluster import Workers, check_reachable, connect, create_workers
from launch.config import Config, save_config
from launch.metrics import MetricsLogger
from launch.prepare import Prepared, prepare, startup_warnings
from rl import steps
from rl.replay import rng_state, set_rng_state
from rl.types import PromptRequest, Sample, TrainResult
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
        self.batch_size = cfg.trainer.train_prompts * cfg.rollout.group_size  # N = B·G (SSR tops up to it)
        self.start_step = self._maybe_resume()
        self.logger = MetricsLogger(self.out, total_steps=cfg.trainer.total_steps, config=asdict(cfg),
                                    wandb_mode=cfg.logging.wandb_mode, wandb_project=cfg.logging.wandb_project,
                                    console=cfg.logging.console, start_step=self.start_step)

    # -- the loop --------------------------------------------------------------------------
    def train(self) -> None:
        t, alg = self.cfg.trainer, self.cfg.algorithm
        if self.start_step == 0 and self.prep.eval_rows:
            self.logger.log(0, self.evaluate())
        for step in range(self.start_step + 1, t.total_steps + 1):
            if self.budget_spent():  # resumed from the checkpoint that spent it
                break
            self.step = step
            t0 = time.perf_counter()
            samples, timing, metrics = self.collect()  # steps 1-4 (rewards scored and shaped, groups filtered)
            metrics.update(self.kl_in_reward(samples))  # step 5
            metrics.update(steps.assign_advantages(samples, alg))
            self.logger.log_samples(step, [steps.sample_record(s) for s in samples[:self.cfg.logging.samples_per_step]])
            batch, replay_m = steps.mix_replay(samples, self.replay, self.replay_rng, alg, n_batch=self.batch_size,
                                               step=step, version=self.version)
            metrics.update(replay_m)

            t_train = time.perf_counter()
            metrics.update(steps.train_metrics(self.train_on(batch), batch))  # step 6
            t_sync = time.perf_counter()
            self.sync_weights(step)  # step 7
            timing.update({"perf/train_s": t_sync - t_train, "perf/sync_s": time.perf_counter() - t_sync})

            tokens = timing.pop("perf/generated_tokens")  # step 8
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
            return samples, timing, steps.rollout_metrics(samples)
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
        metrics = steps.rollout_metrics(samples)
        metrics.update(self.sampler.metrics)
        return samples, timing, metrics

    def _generate_round(self, B: int, G: int, timing: dict) -> list[list[Sample]]:
        cfg = self.cfg
        t0 = time.perf_counter()
        ids = self.iterator.next_ids(B)
        requests = prompt_requests(self.prep.train_rows, ids, range(self.next_group_id, self.next_group_id + len(ids)))
        self.next_group_id += len(ids)
        params = SamplingParams(n=G, temperature=cfg.rollout.temperature, top_p=cfg.rollout.top_p,
                                max_new_tokens=cfg.rollout.max_new_tokens, stop=list(cfg.rollout.stop),
                                seed=self.rng.randrange(2**31))
        samples = self._generate_and_score(requests, params, timing, t0)
        timing["perf/generated_tokens"] += sum(len(s.response_ids) for s in samples)  # kept or not
        steps.shape_overlong(samples, cfg.algorithm.overlong, cfg.rollout.max_new_tokens)
        by_group: dict[int, list[Sample]] = {}
        for s in samples:
            by_group.setdefault(s.group_id, []).append(s)
        return list(by_group.values())

    def _generate_and_score(self, requests: list[PromptRequest], params: SamplingParams, timing: dict | None = None,
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
        mask, names, acc_fn = self.cfg.algorithm.mask_reward_errors, self.prep.reward_names, self.cfg.reward.accuracy_fn
        for i in sorted(parts):  # shard order, not completion order: runs stay reproducible
            for k, results in enumerate(ray.get(scores[i])):
                for s, res in zip(parts[i][k::K], results):
                    steps.apply_reward(s, res, mask_errors=mask, reward_names=names, accuracy_fn=acc_fn)
            samples += parts[i]
        if timing is not None:
            timing["perf/reward_s"] += time.perf_counter() - t1
        return samples

    # -- steps 5-6: the trainer ranks ----------------------------------------------------------
    def kl_in_reward(self, samples: list[Sample]) -> dict[str, float]:
        """Optional PPO-RLHF-style penalty: reward −= coef · Σ_t KL_t(π_θ‖π_ref), before advantages."""
        kr = self.cfg.algorithm.kl_in_reward
        if not kr.enable or not samples:
            return {}
        ref = ray.put(samples)
        parts = ray.get([t.sequence_kl.remote(ref, kr.estimator) for t in self.w.trainer])
        return steps.apply_kl_penalty(samples, {i: v for part in parts for i, v in part.items()}, kr.coef)

    def train_on(self, batch: list[Sample]) -> list[TrainResult]:
        """One step's updates on every trainer rank (each takes its shard of every mini-batch)."""
        t = self.cfg.trainer
        ray.get([w.sleep.remote() for w in self.w.rollout])  # colocated: hand the GPUs to the trainer
        ref = ray.put(batch)
        return ray.get([r.train_step.remote(ref, t.mini_batches, t.epochs) for r in self.w.trainer])

    # -- step 7: weights -------------------------------------------------------------------------
    def sync_weights(self, version: int) -> None:
        published = ray.get([r.publish_weights.remote() for r in self.w.trainer])[0]  # rank 0's holds any buckets
        ray.get([w.update_weights.remote(published, version) for w in self.w.rollout])
        self.version = version

    # -- step 8: eval, checkpoints -----------------------------------------------------------
    def evaluate(self) -> dict[str, float]:
        rows = self.prep.eval_rows
        requests = prompt_requests(rows, range(len(rows)), [-1] * len(rows))
        params = SamplingParams(n=1, greedy=True, max_new_tokens=self.cfg.rollout.max_new_tokens,
                                stop=list(self.cfg.rollout.stop))
        return steps.eval_metrics(self._generate_and_score(requests, params))

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


def prompt_requests(rows: list[dict], ids: Sequence[int], group_ids: Sequence[int]) -> list[PromptRequest]:
    """Requests for the prepared rows `rows[i]` (launch.prepare), row ids[k] as group group_ids[k]."""
    return [PromptRequest(prompt_id=i, group_id=g, prompt_ids=rows[i]["prompt_ids"], prompt_text=rows[i]["prompt_text"],
                          fields=rows[i]["fields"]) for i, g in zip(ids, group_ids, strict=True)]
