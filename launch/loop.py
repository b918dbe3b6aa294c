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

import contextlib
import logging
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path

import ray
import torch

from launch import checkpoint
from launch.cluster import Workers, check_reachable, connect, create_workers
from launch.config import Config, ConfigError, save_config
from launch.lookahead import Collected, Lookahead
from launch.metrics import MetricsLogger
from launch.prepare import Prepared, prepare, startup_warnings
from launch.runlock import RunLock
from launch.supervisor import ActorFailure, Calls, gather
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
    with RunLock(out):  # a second run on the same output_dir refuses to start, naming this one
        save_config(cfg, out / "config.yaml")
        connect(cfg)
        workers = create_workers(cfg, prep.model_path, str(out))
        driver = Driver(cfg, prep, workers)
        try:
            driver.train()
        finally:
            driver.close()
    return out


FAULT_METRICS = ("rollout_restarts", "reward_restarts", "trainer_restarts", "steps_replayed", "recovery_s")
"""faults/* in every step's metrics, counted since this process started: workers replaced, trainer group
rebuilds, steps trained again after a rebuild, and the seconds spent recovering."""


PING_TIMEOUT_S = 10.0
"""After a rank raised inside a collective call: how long the others get to answer a ping (a live rank answers in
milliseconds once its own part of the call has failed too; a hung one never does)."""


class TrainerLost(RuntimeError):
    """A trainer rank died or hung (the ActorFailure's message): the whole group is rebuilt from the newest
    complete checkpoint."""


class Driver:
    def __init__(self, cfg: Config, prep: Prepared, workers: Workers):
        self.cfg, self.prep, self.w = cfg, prep, workers
        self.out = Path(cfg.trainer.output_dir)
        self.batch_size = cfg.trainer.train_prompts * cfg.rollout.group_size  # N = B·G (SSR tops up to it)
        self.faults: Counter[str] = Counter(dict.fromkeys(FAULT_METRICS, 0))  # faults/*, this process
        self.step_restarts: Counter[str] = Counter()  # replacements per worker within the current step
        self.synced = False  # the rollout workers hold trained weights (a replacement must load them)
        self.lookahead: Lookahead | None = None  # the producer thread of an overlapped trainer.async_mode
        self.published = None  # the PublishedWeights of the newest sync (an overlapped mode starts from them)
        if cfg.trainer.async_mode != "sync" and workers.transport != "object_store":
            raise ConfigError(f"trainer.async_mode={cfg.trainer.async_mode} loads weights into the rollout workers "
                              f"between their batches, which the {workers.transport} transport cannot (it needs "
                              "both sides in one collective): set rollout.weight_transport=object_store, or "
                              "trainer.async_mode=sync")
        self._initial_state()
        self.start_step = self._maybe_resume()
        self.logger = MetricsLogger(self.out, total_steps=cfg.trainer.total_steps, config=asdict(cfg),
                                    wandb_mode=cfg.logging.wandb_mode, wandb_project=cfg.logging.wandb_project,
                                    console=cfg.logging.console, start_step=self.start_step,
                                    tensorboard=cfg.logging.tensorboard)
        self.logger.rewind(self.start_step if self.start_step else -1)  # one row per step, also after a resume

    def _initial_state(self) -> None:
        """The driver's state before step 1 (what a checkpoint holds; see driver_state)."""
        cfg = self.cfg
        self.iterator = PromptIterator(len(self.prep.train_rows), seed=cfg.trainer.seed, shuffle=cfg.data.shuffle)
        self.sampler = cfg.algorithm.dynamic_sampling.build()
        self.replay = cfg.algorithm.replay.build(drop_truncated=cfg.algorithm.overlong.filtering)
        self.replay_rng = torch.Generator().manual_seed(cfg.trainer.seed)  # draws and batch order; checkpointed
        self.rng = random.Random(cfg.trainer.seed)
        self.step, self.version, self.next_group_id = 0, 0, 0
        self.generated_tokens = 0  # every sampled response token of the run (all rounds, eval excluded)
        self.failed_reward_steps = 0  # consecutive steps in which every sample failed its reward
        self.kl_probe: dict | None = None  # step 1's answers and their starting-policy logprobs (trainer.kl_probe)
        self.pending: list[Collected] = []  # overlapped modes: batches generated ahead, restored from a checkpoint

    # -- the loop --------------------------------------------------------------------------
    def train(self) -> None:
        """Every step from the one after the start (or resumed) step; a lost trainer rank costs a rebuild and the
        replay of the steps since the newest checkpoint, inside this call (faults.max_trainer_restarts)."""
        if self.start_step == 0:
            first = {f"data/dropped_overlong_{split}": n for split, n in self.prep.dropped_overlong.items()}
            if self.prep.eval_rows:
                first.update(self.evaluate())
            if first:
                self.logger.log(0, first)
        lost: TrainerLost | None = None
        while True:
            try:
                if lost is not None:  # a rebuild that itself loses a rank counts as the next rebuild
                    self._rebuild_trainers(lost)
                self._steps()
                return
            except TrainerLost as e:
                lost = e

    def _steps(self) -> None:
        if self.cfg.trainer.async_mode != "sync":
            self.lookahead = self._start_lookahead()
        try:
            self._run_steps()
        finally:
            if self.lookahead is not None:
                f = self.cfg.faults
                self.lookahead.stop(f.rollout_timeout_s + f.reward_timeout_s)
                self.lookahead = None

    def _run_steps(self) -> None:
        t, alg = self.cfg.trainer, self.cfg.algorithm
        for step in range(self.step + 1, t.total_steps + 1):
            if self.budget_spent():  # resumed from the checkpoint that spent it
                break
            self.step = step
            self.step_restarts.clear()
            t0 = time.perf_counter()
            samples, timing, metrics = self._next_batch(step)  # steps 1-4 (rewards scored and shaped, groups filtered)
            metrics.update(steps.staleness_metrics(samples, self.version))
            self._check_rewards(samples)
            metrics.update(self.kl_in_reward(samples))  # step 5
            metrics.update(steps.assign_advantages(samples, alg))
            self.logger.log_samples(step, [steps.sample_record(s) for s in samples[:self.cfg.logging.samples_per_step]])
            batch, replay_m = steps.mix_replay(samples, self.replay, self.replay_rng, alg, n_batch=self.batch_size,
                                               step=step, version=self.version)
            metrics.update(replay_m)

            if self.kl_probe is None and self.version == 0 and t.kl_probe:
                self.kl_probe = self.record_kl_probe(samples)
            t_train = time.perf_counter()
            metrics.update(steps.train_metrics(self.train_on(batch), batch))  # step 6
            metrics.update(self.kl_to_start())
            t_sync = time.perf_counter()
            if self.lookahead is None:
                self.sync_weights(step)  # step 7
            else:  # the producer loads them before the next batch that may use them
                self.published = self.trainer_call("publish_weights", "gathering weights")[0]
                self.version = step
                self.lookahead.publish(step, self.published)
            timing.update({"perf/train_s": t_sync - t_train, "perf/sync_s": time.perf_counter() - t_sync})

            tokens = timing.pop("perf/generated_tokens")  # step 8
            self.generated_tokens += tokens
            last = step == t.total_steps or self.budget_spent()
            if self.prep.eval_rows and (last or (t.eval_every and step % t.eval_every == 0)):
                t_eval = time.perf_counter()
                with self._rollout_idle():
                    if self.lookahead is not None:
                        self.lookahead.load_latest()  # the policy this step trained
                    metrics.update(self.evaluate())
                timing["perf/eval_s"] = time.perf_counter() - t_eval
            timing.update(self.rollout_memory() if self.lookahead is None else self.lookahead.rollout_memory)
            step_time = time.perf_counter() - t0
            metrics.update(timing, **{"perf/step_time_s": step_time, "perf/tokens_per_s": tokens / step_time,
                                      "perf/generated_tokens": tokens,
                                      "perf/generated_tokens_total": self.generated_tokens})
            metrics.update({f"faults/{k}": float(v) for k, v in sorted(self.faults.items())})
            self.logger.log(step, metrics)
            if last:
                break
            if t.save_every and step % t.save_every == 0:
                self.save_checkpoint(step)
        newest = checkpoint.latest(self.out)
        if newest is None or newest.name != f"step_{self.step}":  # a rebuild after the final save restored that save
            self.save_checkpoint(self.step)
        self.save_final()

    def _check_rewards(self, samples: list[Sample]) -> None:
        """Stop, rather than train on nothing and write final/, when every reward of several steps failed."""
        k = self.cfg.faults.max_failed_reward_steps
        if samples and all(s.reward_status != "ok" for s in samples):
            self.failed_reward_steps += 1
        else:
            self.failed_reward_steps = 0
        if k and self.failed_reward_steps >= k:
            raise RuntimeError(
                f"every sample of the last {k} steps failed its reward function (faults.max_failed_reward_steps={k}); "
                f"stopping at step {self.step} without writing final/. The errors are in "
                f"{self.out / 'quarantine.jsonl'}; fix the reward function or its inputs and rerun the same command "
                f"to resume from the newest checkpoint")

    def _next_batch(self, step: int) -> Collected:
        """Step `step`'s samples: generated now (sync), or taken from the producer thread, with the seconds the
        trainer waited for them (perf/wait_rollout_s)."""
        if self.lookahead is None:  # (batches an overlapped run generated ahead train first after a resume)
            return self.pending.pop(0) if self.pending else self.collect()
        t0 = time.perf_counter()
        samples, timing, metrics = self.lookahead.take(step)
        timing["perf/wait_rollout_s"] = time.perf_counter() - t0
        return samples, timing, metrics

    def _start_lookahead(self) -> Lookahead:
        t = self.cfg.trainer
        one_step_off = t.async_mode == "one_step_off"
        ready, self.pending = self.pending, []
        return Lookahead(collect=lambda batch: self.collect(), load=self._load_rollout, memory=self.rollout_memory,
                         next_batch=self.step + 1 + len(ready), last_batch=t.total_steps,
                         max_staleness=1 if one_step_off else t.max_staleness, exact=one_step_off,
                         rollout_version=self.version if self.synced else 0,
                         published={self.version: self.published} if self.synced and self.published else {},
                         ready=ready).start()

    def _load_rollout(self, version: int, published) -> None:
        self._on_rollout(lambda w: w.update_weights.remote(published, version), "loading weights")
        self.synced = True

    def _rollout_idle(self):
        """A context in which no batch is being generated (an overlapped mode's producer waits)."""
        return self.lookahead.exclusive() if self.lookahead is not None else contextlib.nullcontext()

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
        """Generate on the rollout workers; each generate call's samples go to the reward workers as soon as it
        returns, so scoring overlaps the generation still running. A worker's shard is one call, or with
        rollout.stream_samples several, queued on it back to back (a worker runs one call at a time).

        A worker that dies or overruns its deadline is replaced and its calls generated (same seeds) or scored
        again, so the step's samples are the same as without the fault (the engine being deterministic)."""
        R, K, f = len(self.w.rollout), len(self.w.reward), self.cfg.faults
        pieces = generate_calls(requests, params, R, self.cfg.rollout.stream_samples)
        calls = Calls(self.w.stack_dir)

        def generate(j: int) -> None:
            i, reqs, piece_params = pieces[j]
            w = self.w.rollout[i]
            calls.add(w.generate.remote(reqs, piece_params), f"rollout[{i}]",
                      f"generating {len(reqs)} prompts of step {self.step}", f.rollout_timeout_s, ("rollout", j, 0, w))

        def score(j: int, k: int) -> None:
            w = self.w.reward[k]
            calls.add(w.score.remote(rows[j][k::K]), f"reward[{k}]",
                      f"scoring {len(rows[j][k::K])} samples of step {self.step}", f.reward_timeout_s, ("reward", j, k, w))

        parts: dict[int, list[Sample]] = {}
        rows: dict[int, list[dict]] = {}
        scores: dict[tuple[int, int], list] = {}
        for j in range(len(pieces)):
            generate(j)
        generated_at = None
        while calls:
            (role, j, k, worker), value = calls.next()
            if isinstance(value, ActorFailure):
                index = pieces[j][0] if role == "rollout" else k
                if getattr(self.w, role)[index] is worker:  # not yet replaced for an earlier call of the same actor
                    self._replace_worker(role, index, value)
                if role == "rollout":
                    generate(j)
                else:
                    score(j, k)
                continue
            if role == "rollout":
                parts[j] = value
                rows[j] = [steps.reward_row(s) for s in value]
                for kk in range(K):
                    if rows[j][kk::K]:
                        score(j, kk)
                    else:
                        scores[j, kk] = []
                if len(parts) == len(pieces):
                    generated_at = time.perf_counter()
            else:
                scores[j, k] = value
        if timing is not None:
            timing["perf/generate_s"] += (generated_at or time.perf_counter()) - t0
            timing["perf/reward_s"] += time.perf_counter() - (generated_at or time.perf_counter())
        samples = []
        mask, names, acc_fn = self.cfg.algorithm.mask_reward_errors, self.prep.reward_names, self.cfg.reward.accuracy_fn
        for j in range(len(pieces)):  # call order, not completion order: runs stay reproducible
            for k in range(K):
                for s, res in zip(parts[j][k::K], scores[j, k]):
                    steps.apply_reward(s, res, mask_errors=mask, reward_names=names, accuracy_fn=acc_fn)
            samples += parts[j]
        return samples

    # -- faults: replacing workers, rebuilding the trainer group ------------------------------------
    def _replace_worker(self, role: str, index: int, failure: ActorFailure) -> None:
        """A fresh rollout or reward worker in place of one that died or hung (faults.max_worker_restarts a step);
        a rollout worker gets the current weights before it takes work."""
        name, limit = f"{role}[{index}]", self.cfg.faults.max_worker_restarts
        self.step_restarts[name] += 1
        if self.step_restarts[name] > limit:
            raise RuntimeError(f"{failure}\n{name} was replaced {limit} times in step {self.step} "
                               f"(faults.max_worker_restarts={limit}); stopping. Rerun the same command to resume from "
                               f"the newest checkpoint") from None
        if role == "rollout" and self.w.transport != "object_store" and self.synced:
            raise RuntimeError(f"{failure}\nA rollout worker cannot be replaced while the weights travel by "
                               f"{self.w.transport} (its group cannot take a new member); set "
                               f"rollout.weight_transport=object_store for restarts, or rerun to resume") from None
        t0 = time.perf_counter()
        log.warning("%s; replacing it (%d of at most %d this step)", failure, self.step_restarts[name], limit)
        actors = getattr(self.w, role)
        _kill(actors[index])
        actors[index] = new = self.w.new_rollout(index) if role == "rollout" else self.w.new_reward(index)
        self.w.ping(role, [new], [index])
        if role == "rollout" and self.synced:
            if self.lookahead is None:
                version = self.version
                published = self.trainer_call("publish_weights", "gathering weights for a new rollout worker")[0]
            else:  # the trainer may be a version ahead: the others hold the producer's
                version, published = self.lookahead.rollout_weights()
            if published is not None:
                gather(self.w.stack_dir, [new.update_weights.remote(published, version)], [name],
                       "loading weights", self.cfg.faults.rollout_timeout_s)
        self.faults[f"{role}_restarts"] += 1
        self.faults["recovery_s"] += time.perf_counter() - t0

    def _rebuild_trainers(self, lost: TrainerLost) -> None:
        """A new trainer group from the newest complete checkpoint (or the initial model), then replay."""
        limit = self.cfg.faults.max_trainer_restarts
        self.faults["trainer_restarts"] += 1
        path = checkpoint.latest(self.out)
        if self.faults["trainer_restarts"] > limit:
            where = f"the newest complete checkpoint is {path}" if path else "no checkpoint was written yet"
            raise RuntimeError(f"{lost}\nThe trainer group was rebuilt {limit} times "
                               f"(faults.max_trainer_restarts={limit}); stopping ({where}). Rerun the same command "
                               f"to resume") from None
        t0 = time.perf_counter()
        lost_step = self.step
        log.warning("%s; rebuilding the trainer group (%d of at most %d) from %s", lost,
                    self.faults["trainer_restarts"], limit, path or "the initial model")
        for rank in self.w.trainer:
            _kill(rank)
        try:
            self.w.trainer = self.w.new_trainers()
        except ActorFailure as failure:
            raise TrainerLost(failure) from None
        self._initial_state()
        if path is not None:
            self._restore(path)
        self.sync_weights(self.version)  # the rollout workers hold the lost steps' weights
        self.logger.rewind(self.step)
        self.faults["steps_replayed"] += max(0, lost_step - self.step - 1)  # the failed step itself is redone too
        self.faults["recovery_s"] += time.perf_counter() - t0

    def trainer_call(self, method: str, phase: str, *args) -> list:
        """Call `method` on every trainer rank (a collective) and return each rank's value. A rank that dies or
        hangs raises TrainerLost; an error raised by a rank while all are alive is the rank's own error."""
        ranks, names = self.w.trainer, self.w.names("trainer")
        timeout = self.cfg.faults.trainer_timeout_s
        try:
            return gather(self.w.stack_dir, [getattr(r, method).remote(*args) for r in ranks], names,
                          f"{phase} (step {self.step})", timeout)
        except ActorFailure as failure:
            raise TrainerLost(failure) from None
        except ray.exceptions.RayTaskError as error:
            try:  # a peer's death surfaces on the others as a collective error: then it is a lost rank
                gather(self.w.stack_dir, [r.ping.remote() for r in ranks], names, "answering a ping", PING_TIMEOUT_S)
            except ActorFailure as f:
                first = next((ln for ln in str(error.cause).splitlines() if ln.strip()), type(error.cause).__name__)
                cause = ("died" if f.cause.startswith("died") else f"did not answer a ping within {PING_TIMEOUT_S:g} s")
                raise TrainerLost(ActorFailure(f.actor, f"{phase} (step {self.step})",
                                               f"{cause} after another rank failed with: {first[:200]}",
                                               f.stacks)) from None
            raise

    # -- steps 5-6: the trainer ranks ----------------------------------------------------------
    def kl_in_reward(self, samples: list[Sample]) -> dict[str, float]:
        """Optional PPO-RLHF-style penalty: reward −= coef · Σ_t KL_t(π_θ‖π_ref), before advantages."""
        kr = self.cfg.algorithm.kl_in_reward
        if not kr.enable or not samples:
            return {}
        parts = self.trainer_call("sequence_kl", "computing the KL to the reference", ray.put(samples), kr.estimator)
        return steps.apply_kl_penalty(samples, {i: v for part in parts for i, v in part.items()}, kr.coef)

    def record_kl_probe(self, samples: list[Sample]) -> dict | None:
        """The fixed probe of actor/kl_to_start: up to trainer.kl_probe answers of step 1, which the starting
        policy sampled, with the trainer's logprobs of them under that policy (not the engine's, so the metric
        measures how far the policy moved, not the engine-trainer gap)."""
        chosen = [s for s in samples if s.response_ids][: self.cfg.trainer.kl_probe]
        if not chosen:
            return None
        prompts, responses = [list(s.prompt_ids) for s in chosen], [list(s.response_ids) for s in chosen]
        start = self.trainer_call("probe_logprobs", "scoring the KL probe", prompts, responses)[0]
        return {"prompts": prompts, "responses": responses, "logprobs": start}

    def kl_to_start(self) -> dict[str, float]:
        """actor/kl_to_start after this step's update (empty without a probe: trainer.kl_probe=0, or a run resumed
        from a checkpoint written before the probe existed)."""
        if self.kl_probe is None:
            return {}
        p = self.kl_probe
        now = self.trainer_call("probe_logprobs", "scoring the KL probe", p["prompts"], p["responses"])[0]
        return steps.kl_to_start(p["logprobs"], now)

    def train_on(self, batch: list[Sample]) -> list[TrainResult]:
        """One step's updates on every trainer rank (each takes its shard of every mini-batch)."""
        t = self.cfg.trainer
        if self.lookahead is None:  # (an overlapped mode needs split placement: nothing to free)
            self._on_rollout(lambda w: w.sleep.remote(), "freeing the GPUs for training")  # colocated
        return self.trainer_call("train_step", "training", ray.put(batch), t.mini_batches, t.epochs)

    # -- step 7: weights -------------------------------------------------------------------------
    def sync_weights(self, version: int) -> None:
        published = self.trainer_call("publish_weights", "gathering weights")[0]  # rank 0's holds any buckets
        self.version, self.synced = version, True
        if self.cfg.trainer.async_mode != "sync":  # the producer starts from them (a new worker may need them)
            self.published = published
        self._on_rollout(lambda w: w.update_weights.remote(published, version), "loading weights")

    def rollout_memory(self) -> dict[str, float]:
        """perf/rollout_{rss,peak_rss}_mb: the largest rollout worker's memory. A metric, not a health check:
        a worker that does not answer within seconds is left out here (the next real call finds a dead one)."""
        try:
            reports = ray.get([w.memory.remote() for w in self.w.rollout], timeout=10.0)
        except (ray.exceptions.RayError, ray.exceptions.GetTimeoutError):
            return {}
        return {f"perf/rollout_{k}": max(r.get(k, 0.0) for r in reports) for k in sorted({k for r in reports for k in r})}

    def _on_rollout(self, call: Callable, phase: str) -> None:
        """`call(worker)` on every rollout worker; one that fails is replaced (the replacement loads the
        current weights itself, so the call is not repeated)."""
        calls = Calls(self.w.stack_dir)
        for i, w in enumerate(self.w.rollout):
            calls.add(call(w), f"rollout[{i}]", phase, self.cfg.faults.rollout_timeout_s, i)
        while calls:
            i, value = calls.next()
            if isinstance(value, ActorFailure):
                self._replace_worker("rollout", i, value)

    # -- step 8: eval, checkpoints -----------------------------------------------------------
    def evaluate(self) -> dict[str, float]:
        """One greedy answer per held-out prompt (eval/accuracy); with trainer.eval_k, also k sampled answers
        (eval/avg@k, eval/pass@k'), drawn with the fixed eval.seed at every eval."""
        cfg = self.cfg
        rows = self.prep.eval_rows
        requests = prompt_requests(rows, range(len(rows)), [-1] * len(rows))
        params = SamplingParams(n=1, greedy=True, max_new_tokens=cfg.rollout.max_new_tokens,
                                stop=list(cfg.rollout.stop))
        metrics = steps.eval_metrics(self._generate_and_score(requests, params))
        if k := cfg.trainer.eval_k:
            params = SamplingParams(n=k, temperature=cfg.eval.temperature, top_p=cfg.eval.top_p,
                                    max_new_tokens=cfg.rollout.max_new_tokens, stop=list(cfg.rollout.stop),
                                    seed=cfg.eval.seed)
            metrics.update(steps.eval_sampled_metrics(self._generate_and_score(requests, params), k))
        return metrics

    def driver_state(self) -> dict:
        return {"step": self.step, "version": self.version, "next_group_id": self.next_group_id,
                "generated_tokens": self.generated_tokens, "failed_reward_steps": self.failed_reward_steps,
                "iterator": self.iterator.state_dict(), "rng": self.rng.getstate(),
                "sampler": self.sampler.state_dict() if self.sampler is not None else None,
                "replay": self.replay.state_dict() if self.replay is not None else None,
                "replay_rng": rng_state(self.replay_rng), "kl_probe": self.kl_probe,
                "pending": [list(c) for c in (self.lookahead.pending() if self.lookahead else self.pending)]}

    def save_checkpoint(self, step: int) -> None:
        def save_trainer(directory: str, tag: str) -> None:
            self.trainer_call("save_checkpoint", "saving a checkpoint", directory, tag)

        def save_hf(directory: str) -> None:
            self.trainer_call("save_hf", "writing a checkpoint's hf/", directory)

        with self._rollout_idle():  # the driver state then matches the batches generated ahead
            checkpoint.save(self.out, step, self.driver_state(), save_trainer, self.cfg.trainer.keep_last,
                            save_hf if self.cfg.trainer.checkpoint_hf else None)

    def _maybe_resume(self) -> int:
        resume = self.cfg.trainer.resume
        if resume == "never":
            return 0
        path = checkpoint.latest(self.out) if resume == "auto" else Path(resume)
        if path is None:
            return 0
        self._restore(path)
        self.sync_weights(self.version)
        log.info("resumed from %s at step %d", path, self.step)
        return self.step

    def _restore(self, path: Path) -> None:
        """Trainer ranks and driver state from the checkpoint at `path`."""
        state = checkpoint.load_driver_state(path)
        self.trainer_call("load_checkpoint", f"loading {path}", str(path / "trainer"), "state")
        self.step, self.version, self.next_group_id = state["step"], state["version"], state["next_group_id"]
        self.generated_tokens = state.get("generated_tokens", 0)
        self.failed_reward_steps = state.get("failed_reward_steps", 0)
        self.iterator.load_state_dict(state["iterator"])
        self.rng.setstate(state["rng"])
        if self.sampler is not None and state["sampler"] is not None:
            self.sampler.load_state_dict(state["sampler"])
        if self.replay is not None and state.get("replay") is not None:
            self.replay.load_state_dict(state["replay"])
        if "replay_rng" in state:
            set_rng_state(self.replay_rng, state["replay_rng"])
        self.kl_probe = state.get("kl_probe")
        self.pending = [(s, t, m) for s, t, m in state.get("pending", [])]

    def save_final(self) -> None:
        self.trainer_call("save_hf", "writing final/", str(self.out / "final"))

    def close(self) -> None:
        if hasattr(self, "logger"):
            self.logger.close()


def _kill(actor) -> None:
    """Stop an actor for good (a replacement takes its place); a dead one is already gone."""
    try:
        ray.kill(actor, no_restart=True)
    except Exception as e:  # noqa: BLE001 - killing is best effort: the replacement does not depend on it
        log.debug("could not kill an actor being replaced: %s", e)


def generate_calls(requests: list[PromptRequest], params: SamplingParams, workers: int,
                   stream_samples: int = 0) -> list[tuple[int, list[PromptRequest], SamplingParams]]:
    """The generate calls of one round, in the order their samples are kept: (worker, requests, params).

    Worker i takes requests i, i+R, ... (R workers); with stream_samples its share is cut into calls of
    max(1, stream_samples // n) requests (whole groups). Call c of worker i samples with seed + i + R·c, so the
    unstreamed call (c = 0) keeps the seed it always had and no two calls share one."""
    per_call = max(1, stream_samples // params.n) if stream_samples else None
    calls = []
    for i in range(workers):
        shard = requests[i::workers]
        size = per_call or max(1, len(shard))
        for c, start in enumerate(range(0, len(shard), size)):
            seed = None if params.seed is None else params.seed + i + workers * c
            calls.append((i, shard[start:start + size], replace(params, seed=seed)))
    return calls


def prompt_requests(rows: list[dict], ids: Sequence[int], group_ids: Sequence[int]) -> list[PromptRequest]:
    """Requests for the prepared rows `rows[i]` (launch.prepare), row ids[k] as group group_ids[k]."""
    return [PromptRequest(prompt_id=i, group_id=g, prompt_ids=rows[i]["prompt_ids"], prompt_text=rows[i]["prompt_text"],
                          fields=rows[i]["fields"]) for i, g in zip(ids, group_ids, strict=True)]

