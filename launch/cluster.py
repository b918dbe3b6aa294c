"""Ray connection and worker creation: R rollout workers, K reward workers, W trainer ranks.

`connect` joins the cluster that `ray job submit` runs us in (RAY_ADDRESS), or the configured
`ray.address`, or starts a local one. On CPU every actor is a plain actor that asks for no CPU
slot (we size torch threads ourselves, and the synchronous loop runs one phase at a time); on
GPUs the actors ask for `gpus_per_worker`.
"""

from __future__ import annotations

import os
import socket
from dataclasses import asdict, dataclass

import ray

from launch.config import Config, ConfigError


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
    env = {"env_vars": {"TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore"}}
    if address:
        try:
            ray.init(address=address, runtime_env=env, log_to_driver=True)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise ConfigError(
                f"ray.address={address}: cannot reach a Ray cluster there ({type(e).__name__}: {e}). Start one with "
                f"`ray start --head`, fix the address, or drop ray.address to run on a local cluster"
            ) from None
    else:
        # A local cluster stays on loopback: nothing listens on or talks to outside interfaces. Ray maps
        # 127.0.0.1 to the machine's routable IP unless its "no real cluster" switch is set (Ray 2.x).
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        ray.init(num_cpus=cfg.ray.num_cpus, include_dashboard=False, runtime_env=env, log_to_driver=True)


def _threads(requested: int, concurrent: int) -> int:
    if requested > 0:
        return requested
    return max(1, (os.cpu_count() or 1) // max(concurrent, 1))


def _options(gpus: float) -> dict:
    return {"num_gpus": gpus, "num_cpus": 1} if gpus > 0 else {"num_cpus": 0}


@dataclass
class Workers:
    rollout: list
    reward: list
    trainer: list


def create_workers(cfg: Config, model_path: str, output_dir: str) -> Workers:
    from reward.worker import RewardWorker
    from rollout.worker import RolloutWorker

    r, t = cfg.rollout, cfg.trainer
    engine_kwargs = {"dtype": cfg.model.dtype, "batch_size": r.batch_size,
                     "trust_remote_code": cfg.model.trust_remote_code}
    rollout = [
        ray.remote(RolloutWorker).options(**_options(r.gpus_per_worker), name=None).remote(
            r.engine, model_path, engine_kwargs=engine_kwargs, threads=_threads(t.threads_per_worker, r.num_workers))
        for _ in range(r.num_workers)
    ]
    specs = [{"fn": fn, "weight": w} for fn, w in zip(cfg.reward.fns, cfg.reward.weights or [1.0] * len(cfg.reward.fns))]
    reward = [
        RewardWorker.options(num_cpus=0).remote(specs, cfg.reward.timeout_s, cfg.reward.processes_per_worker,
                                                os.path.join(output_dir, "quarantine.jsonl"))
        for _ in range(cfg.reward.num_workers)
    ]
    trainer = _create_trainers(cfg, model_path)
    ray.get([w.ping.remote() for w in rollout + reward + trainer])
    return Workers(rollout, reward, trainer)


def _create_trainers(cfg: Config, model_path: str) -> list:
    from rl.trainer import TrainerWorker

    t = cfg.trainer
    actor = ray.remote(TrainerWorker).options(**_options(t.gpus_per_worker))
    ranks = [
        actor.remote(rank, t.num_workers, model_path=model_path, trainer_cfg=asdict(t), model_cfg=asdict(cfg.model),
                     loss_params=cfg.algorithm.loss_params(), temperature=cfg.rollout.temperature,
                     need_ref=cfg.algorithm.needs_reference, threads=_threads(t.threads_per_worker, t.num_workers),
                     seed=t.seed)
        for rank in range(t.num_workers)
    ]
    # rank 0's node hosts the rendezvous; every rank then joins the process group together
    addr, port = ray.get(ranks[0].rendezvous_address.remote())
    ray.get([w.setup.remote(addr, port) for w in ranks])
    return ranks
