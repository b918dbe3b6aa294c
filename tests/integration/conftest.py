"""One local Ray cluster (on loopback) shared by the integration tests of a session."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def ray_cluster():
    import ray
    from ray._private import ray_constants

    from launch.cluster import use_loopback

    with pytest.MonkeyPatch.context() as mp:  # environment and Ray's switch restored after the session
        mp.setenv("RAY_AUTH_MODE", os.environ.get("RAY_AUTH_MODE", "disabled"))
        mp.setenv(ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR, os.environ.get(ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR, "0"))
        mp.setattr(ray_constants, "ENABLE_RAY_CLUSTER", ray_constants.ENABLE_RAY_CLUSTER)
        use_loopback()  # as a local launch.train run does
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false", "WANDB_MODE": "disabled"}})
        yield ray
        ray.shutdown()


def debug_config(tmp_path, *overrides: str):
    from launch.config import load_config

    return load_config("configs/debug_cpu.yaml", [f"trainer.output_dir={tmp_path}",
                                                  f"model.cache_dir={tmp_path.parent / 'models'}", *overrides])


ONES_REWARD = '''
def ones(prompt: str, completion: str, **sample) -> dict:
    share = completion.count("1") / max(len(completion), 1)
    return {"reward": share, "acc": float(share > 0.5)}
'''


def ones_reward(directory) -> str:
    """A user reward file a tiny model can learn (the share of "1" characters; correct when more than half),
    written under `directory`; returns its `reward.fns` spec."""
    path = directory / "ones_reward.py"
    path.write_text(ONES_REWARD)
    return f"{path}:ones"
