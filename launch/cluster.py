"""Ray connection and worker creation: R rollout workers, K reward workers, W trainer ranks.

`connect` joins the cluster that `ray job submit` runs us in (RAY_ADDRESS), or the configured
`ray.address`, or starts a local one. On CPU every actor is a plain actor that asks for no CPU
slot (we size torch threads ourselves; the synchronous loop runs one phase at a time, and the overlapped
modes of trainer.async_mode pin each rollout worker and trainer rank to its own cores, `plan_cpus`). On
GPUs launch/placement.py plans which GPU each rollout engine and trainer rank gets (`split` or
`colocated`), one placement group reserves them and each actor runs in its bundle; then the trainer
connects the weight transport that rl/weight_sync.py chooses (NCCL, CUDA IPC or the object store).
"""

from __future__ import annotations

import logging
import os
import socket
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
from ray import cloudpickle

from launch import packages
from launch.config import Config, ConfigError
from launch.supervisor import gather, guard_spec

log = logging.getLogger("rlvr")


def check_reachable(cfg: Config, timeout_s: float = 5.0) -> None:
    """Fail in seconds, not minutes, when a configured cluster address does not answer.

    ray.init retries an unreachable GCS for minutes; a TCP connect to host:port tells at once.
    """
    address = cfg.ray.address
    if not address or address == "auto":
        return
    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"ray.address={address}: write it as host:port (the head's GCS port, default 6379), "
                          f"ray://host:port for Ray Client, or auto")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise ConfigError(
            f"ray.address={address}: nothing answers there ({e.strerror or e}). Start a cluster with `ray start --head`, "
            f"fix the address, or drop ray.address to run on a local cluster"
        ) from None


def connect(cfg: Config) -> None:
    if ray.is_initialized():
        return
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
    # The hook pins our packages in each worker before Ray puts the driver's cwd first on its sys.path. It
    # travels by value: at that point `launch` may not be importable there yet (a checkout run from its root).
    cloudpickle.register_pickle_by_value(packages)
    env = {"env_vars": {"TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore"},
           "worker_process_setup_hook": packages.pin}
    if address:
        try:
            ray.init(address=address, runtime_env=env, log_to_driver=True)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise ConfigError(
                f"ray.address={address}: cannot reach a Ray cluster there ({type(e).__name__}: {e}). Start one with "
                f"`ray start --head`, fix the address, or drop ray.address to run on a local cluster"
            ) from None
    else:
        use_loopback()
        ray.init(num_cpus=cfg.ray.num_cpus, include_dashboard=False, runtime_env=env, log_to_driver=True)


def use_loopback() -> None:
    """Keep a local cluster on 127.0.0.1: nothing listens on or talks to outside interfaces.

    Ray (2.x) maps 127.0.0.1 to the machine's routable IP unless its "no real cluster" switch
    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 is set; it reads that variable once, when `ray` is imported, so
    setting it afterwards needs the module constant too. The variable also reaches the processes Ray
    starts. A user who exports RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1 keeps Ray's default.
    """
    from ray._private import ray_constants  # no public switch exists; checked by tests/unit/test_cluster_loopback.py

    os.environ.setdefault(ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR, "0")
    if os.environ[ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR] == "0":
        ray_constants.ENABLE_RAY_CLUSTER = False


def _threads(requested: int, concurrent: int) -> int:
    if requested > 0:
        return requested
    return max(1, (os.cpu_count() or 1) // max(concurrent, 1))


def _options(gpus: float) -> dict:
    return {"num_gpus": gpus, "num_cpus": 1} if gpus > 0 else {"num_cpus": 0}


@dataclass
class Workers:
    """The live actors, and what it takes to start a replacement for any of them (launch/loop.py restarts them)."""

    cfg: Config
    model_path: str
    output_dir: str
    gpu: Any  # _GPUs | None
    rollout: list = field(default_factory=list)
    reward: list = field(default_factory=list)
    trainer: list = field(default_factory=list)
    transport: str = "object_store"
    incarnations: Counter = field(default_factory=Counter)
    """(role, index) → how many times that actor was started before (injected faults hit the first only)."""
    cores: dict[str, list[list[int]]] = field(default_factory=dict)
    """CPU overlap (trainer.async_mode other than sync, no GPUs): role → each actor's own CPU cores."""

    def __post_init__(self) -> None:
        self.cores = plan_cpus(self.cfg)

    @property
    def stack_dir(self) -> Path:
        return Path(self.output_dir) / "faults"

    def names(self, role: str) -> list[str]:
        return [f"{role}[{i}]" for i in range(len(getattr(self, role)))]

    def _guard(self, role: str, index: int):
        spec = guard_spec(self.cfg.faults, role, index, self.output_dir, self.incarnations[role, index])
        self.incarnations[role, index] += 1
        return spec

    def new_rollout(self, i: int):
        cfg, r, t = self.cfg, self.cfg.rollout, self.cfg.trainer
        from rollout.worker import RolloutWorker

        return ray.remote(RolloutWorker).options(**_rollout_options(self.gpu, i), name=None).remote(
            r.engine, self.model_path, engine_kwargs=_engine_kwargs(cfg, self.gpu, i),
            threads=_threads(r.threads_per_worker or t.threads_per_worker, r.num_workers),
            cores=self.cores["rollout"][i] if self.cores else None, guard=self._guard("rollout", i),
            tools=tool_settings(cfg))

    def new_reward(self, k: int):
        from reward.worker import RewardWorker

        rw = self.cfg.reward
        return RewardWorker.options(num_cpus=0).remote(rw.specs(), rw.timeout_s, rw.processes_per_worker,
                                                       os.path.join(self.output_dir, "quarantine.jsonl"),
                                                       guard=self._guard("reward", k), sandbox=rw.sandbox,
                                                       cgroup=rw.cgroup)

    def new_trainers(self) -> list:
        """A whole trainer group, its process group joined (a DeepSpeed group cannot take a new member)."""
        cfg, t = self.cfg, self.cfg.trainer
        ranks = _create_trainers(cfg, self.model_path, self.gpu,
                                 guards=[self._guard("trainer", rank) for rank in range(t.num_workers)],
                                 cores=self.cores)
        # rank 0's node hosts the rendezvous; every rank then joins the process group together
        names = [f"trainer[{rank}]" for rank in range(t.num_workers)]
        addr, port = gather(self.stack_dir, [ranks[0].rendezvous_address.remote()], names[:1], "starting",
                            cfg.faults.start_timeout_s)[0]
        gather(self.stack_dir, [w.setup.remote(addr, port) for w in ranks], names,
               "loading the model and joining the process group", cfg.faults.start_timeout_s)
        if self.transport != "object_store":  # the ranks' own joins time out at sync_timeout_s; this is the backstop
            gather(self.stack_dir, [w.connect_rollout.remote(self.rollout, self.transport, cfg.rollout.sync_timeout_s)
                                    for w in ranks], names, f"connecting the {self.transport} weight transport",
                   2 * cfg.rollout.sync_timeout_s)
        return ranks

    def ping(self, role: str, actors: list, indices: range | list[int] | None = None) -> None:
        """Wait (with the start deadline) until the actors have started."""
        names = [f"{role}[{i}]" for i in (indices if indices is not None else range(len(actors)))]
        replies = gather(self.stack_dir, [a.ping.remote() for a in actors], names, "starting",
                         self.cfg.faults.start_timeout_s)
        if role == "reward":  # the level in force (workers never run below reward.sandbox: they refuse to start)
            for name, reply in zip(names, replies):
                log.info("%s: sandbox level %s (reward.sandbox=%s)", name,
                         reply.get("sandbox_level") if isinstance(reply, dict) else reply,
                         self.cfg.reward.sandbox)


def create_workers(cfg: Config, model_path: str, output_dir: str) -> Workers:
    from rl.weight_sync import choose_transport

    r, t = cfg.rollout, cfg.trainer
    w = Workers(cfg, model_path, output_dir, _plan_gpus(cfg))
    w.rollout = [w.new_rollout(i) for i in range(r.num_workers)]
    if r.placement == "colocated":  # vLLM sizes its KV cache from free GPU memory: start it before the trainer
        w.ping("rollout", w.rollout)
    w.reward = [w.new_reward(k) for k in range(cfg.reward.num_workers)]
    requested = "object_store" if t.async_mode != "sync" and r.weight_transport == "auto" else r.weight_transport
    w.transport = choose_transport(requested, engine=r.engine, placement=r.placement,
                                   on_gpu=r.gpus_per_worker > 0 and t.gpus_per_worker > 0)
    w.trainer = w.new_trainers()
    for role in ("rollout", "reward", "trainer"):
        w.ping(role, getattr(w, role))
    refs = [w.trainer[0].describe_precision.remote(), w.rollout[0].describe_precision.remote()]
    trainer, rollout = gather(w.stack_dir, refs, ["trainer[0]", "rollout[0]"], "starting", cfg.faults.start_timeout_s)
    log.info("precision: trainer %s, rollout %s (model.dtype=%s)", trainer, rollout, cfg.model.dtype)
    return w


@dataclass
class _GPUs:
    plan: Any  # launch.placement.Placement
    pg: Any  # the Ray placement group that reserves it


def _plan_gpus(cfg: Config) -> _GPUs | None:
    """The GPU placement (None on CPU): planned from the live nodes, then reserved."""
    r, t = cfg.rollout, cfg.trainer
    if r.gpus_per_worker == 0 and t.gpus_per_worker == 0:
        return None
    from launch.placement import PlacementError, cluster_nodes, create_placement_group, plan_placement

    nodes = cluster_nodes()
    try:
        plan = plan_placement(nodes, rollout_workers=r.num_workers, rollout_gpus=r.gpus_per_worker,
                              trainer_workers=t.num_workers, trainer_gpus=t.gpus_per_worker, mode=r.placement)
    except PlacementError as e:
        raise ConfigError(str(e)) from None
    log.info("%s", plan.describe(nodes))
    return _GPUs(plan, create_placement_group(plan, nodes))


def _rollout_options(gpu: _GPUs | None, i: int) -> dict:
    if gpu is None or not gpu.plan.rollout:
        return _options(0)
    from launch.placement import actor_options

    return actor_options(gpu.pg, *gpu.plan.rollout_actor(i))


def tool_settings(cfg: Config) -> dict | None:
    """What a rollout worker builds its multi-turn tools from (rollout/worker.py); None without rollout.tools."""
    r = cfg.rollout
    if not r.tools:
        return None
    return {"specs": list(r.tools), "format": r.tool_format, "max_turns": r.max_turns, "timeout_s": r.tool_timeout_s,
            "workers": r.tool_workers, "response_template": r.tool_response_template, "sandbox": cfg.reward.sandbox,
            "cgroup": cfg.reward.cgroup}


def max_model_len(cfg: Config) -> int:
    """vLLM's context limit: prompt and response. A later turn of a tool rollout asks every live trajectory for the
    largest budget any of them has left (each is cut to its own afterwards, rollout/multiturn.py), so its context
    may reach the prompt, the response so far and one more budget."""
    r = cfg.rollout
    return cfg.data.max_prompt_tokens + r.max_new_tokens * (2 if r.tools else 1)


def _engine_kwargs(cfg: Config, gpu: _GPUs | None, i: int) -> dict:
    r = cfg.rollout
    kwargs: dict[str, Any] = {"dtype": cfg.model.dtype, "batch_size": r.batch_size,
                              "trust_remote_code": cfg.model.trust_remote_code}
    if r.engine == "vllm":  # vLLM's own knobs; which GPUs it uses comes from the placement plan
        kwargs.update(tensor_parallel_size=int(r.gpus_per_worker), gpu_memory_utilization=r.gpu_memory_utilization,
                      max_model_len=max_model_len(cfg), seed=cfg.trainer.seed + i,
                      enable_sleep_mode=r.placement == "colocated", sync_timeout_s=r.sync_timeout_s)
        if gpu is not None and gpu.plan.rollout:
            kwargs.update(gpu.plan.engine_kwargs(i))
    return kwargs


def plan_cpus(cfg: Config) -> dict[str, list[list[int]]]:
    """Each rollout worker's and trainer rank's own CPU cores when they run at once on CPU (trainer.async_mode
    other than sync, no GPUs); {} otherwise (the phases take turns and every actor may use every core). Cores are
    this driver's (os.sched_getaffinity), split by rollout.threads_per_worker / trainer.threads_per_worker, or
    in proportion to the actors of each role when those are 0. Fewer cores than actors: an error when the thread
    counts were set, else a warning and no pinning."""
    r, t = cfg.rollout, cfg.trainer
    if t.async_mode == "sync" or r.gpus_per_worker > 0 or t.gpus_per_worker > 0:
        return {}
    from rl.cpu import split_cores

    available = sorted(os.sched_getaffinity(0))
    try:
        rollout, trainer = split_cores(available, [r.num_workers, t.num_workers],
                                       [r.threads_per_worker or t.threads_per_worker, t.threads_per_worker])
    except ValueError as e:
        if not (r.threads_per_worker or t.threads_per_worker):  # a debug run on a small machine still runs
            log.warning("trainer.async_mode=%s: %s; the actors share the cores unpinned and will slow each other",
                        t.async_mode, e)
            return {}
        raise ConfigError(f"trainer.async_mode={t.async_mode} runs rollout.num_workers={r.num_workers} rollout "
                          f"workers and trainer.num_workers={t.num_workers} trainer ranks at once: {e}. Lower "
                          "rollout.threads_per_worker / trainer.threads_per_worker or the worker counts, or use "
                          "trainer.async_mode=sync") from None
    log.info("CPU cores (trainer.async_mode=%s): rollout %s, trainer %s", t.async_mode, rollout, trainer)
    return {"rollout": rollout, "trainer": trainer}


def _create_trainers(cfg: Config, model_path: str, gpu: _GPUs | None, guards: list,
                     cores: dict[str, list[list[int]]] | None = None) -> list:
    from rl.trainer import TrainerWorker

    t = cfg.trainer

    def options(rank: int) -> dict:
        if gpu is None or not gpu.plan.trainer:
            return _options(t.gpus_per_worker)
        from launch.placement import actor_options

        return actor_options(gpu.pg, *gpu.plan.trainer_actor(rank))

    ranks = [
        ray.remote(TrainerWorker).options(**options(rank)).remote(
            rank, t.num_workers, model_path=model_path, trainer=t, model=cfg.model,
            loss=cfg.algorithm.trainer_loss(), temperature=cfg.rollout.temperature,
            need_ref=cfg.algorithm.needs_reference, threads=_threads(t.threads_per_worker, t.num_workers),
            cores=cores["trainer"][rank] if cores else None, seed=t.seed, collective_timeout_s=cfg.faults.trainer_timeout_s, guard=guards[rank])
        for rank in range(t.num_workers)
    ]
    return ranks
