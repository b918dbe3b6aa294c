"""Starting a trainer group: two real DeepSpeed ranks (Ray actors, gloo) on the local loopback cluster.

- The start builds no torch extension, so a build lock left by a run killed mid-build cannot hang it:
  the extension directory holds such a lock (no owner) and nothing else, before and after.
- Every TCP socket the ranks listen on is bound to loopback: rank 0's rendezvous store among them.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

import psutil
import pytest
import ray

from launch.config import load_config
from rl.trainer import TrainerWorker

pytestmark = pytest.mark.slow


def _loopback(ip: str) -> bool:
    """127.0.0.0/8, ::1, or a loopback IPv4 address mapped into IPv6 (::ffff:127.0.0.1, as gloo binds)."""
    address = ipaddress.ip_address(ip)
    return (getattr(address, "ipv4_mapped", None) or address).is_loopback


def _listening(pid: int) -> set[tuple[str, int]]:
    return {(c.laddr.ip, c.laddr.port) for c in psutil.Process(pid).net_connections("tcp")
            if c.status == psutil.CONN_LISTEN}


@pytest.mark.timeout(300)
def test_two_rank_start_builds_nothing_and_listens_on_loopback(ray_cluster, tiny_model_dir, tmp_path, monkeypatch):
    from torch.utils.cpp_extension import _get_build_directory  # torch's own path for an extension's build

    extensions = tmp_path / "torch_extensions"
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(extensions))
    lock = Path(_get_build_directory("deepspeed_shm_comm", verbose=False)) / "lock"
    lock.touch()  # what a run killed during the build leaves: torch's FileBaton waits while it exists
    cfg = load_config("configs/debug_cpu.yaml", ["trainer.num_workers=2", "trainer.zero_stage=2"])
    env = {"env_vars": {"TORCH_EXTENSIONS_DIR": str(extensions)}}
    ranks = [ray.remote(TrainerWorker).options(num_cpus=0, runtime_env=env).remote(
        rank, 2, model_path=tiny_model_dir, trainer=cfg.trainer, model=cfg.model, loss=cfg.algorithm.trainer_loss(),
        temperature=0.8, need_ref=False, threads=1, seed=0) for rank in range(2)]
    try:
        addr, port = ray.get(ranks[0].rendezvous_address.remote(), timeout=120)
        assert addr == "127.0.0.1"
        ray.get([r.setup.remote(addr, port) for r in ranks], timeout=150)  # waiting on the lock: never returns
        assert [p for p in extensions.rglob("*") if p.is_file()] == [lock]
        pids = ray.get([r.__ray_call__.remote(lambda self: os.getpid()) for r in ranks], timeout=30)
        listening = [_listening(pid) for pid in pids]
        assert (addr, port) in listening[0], listening[0]  # the rendezvous store: found, so the scan sees it
        outside = [a for per_rank in listening for a in per_rank if not _loopback(a[0])]
        assert not outside, f"rank sockets listening beyond loopback: {outside}"
    finally:
        for r in ranks:
            ray.kill(r)
