"""One local Ray cluster (on loopback) shared by the integration tests of a session."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def ray_cluster():
    import ray

    from launch.cluster import use_loopback

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    use_loopback()  # as a local launch.train run does
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false", "WANDB_MODE": "disabled"}})
    yield ray
    ray.shutdown()


def debug_config(tmp_path, *overrides: str):
    from launch.config import load_config

    return load_config("configs/debug_cpu.yaml", [f"trainer.output_dir={tmp_path}",
                                                  f"model.cache_dir={tmp_path.parent / 'models'}", *overrides])
