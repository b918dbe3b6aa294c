"""A user's reward.py, rl.py or rollout.py in the working directory does not replace our packages.

`python -m launch.train` puts the cwd first on sys.path, Ray puts the driver's cwd first on every worker's
sys.path, and the reward pool starts `python -m reward.pool_worker`; launch/packages.py explains the fix.
Each user file here exits the process when imported, so an import of it cannot go unnoticed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from reward import RewardRunner

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def user_dir(tmp_path: Path) -> Path:
    for name in ("reward", "rl", "rollout"):
        (tmp_path / f"{name}.py").write_text(f"raise SystemExit('the user file {name}.py was imported')\n")
    return tmp_path


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    env.pop("RAY_ADDRESS", None)
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=180)


def test_cli_help_and_config_errors(user_dir):
    proc = _run(["-m", "launch.train", "--help"], user_dir)
    assert proc.returncode == 0 and "  rollout.group_size (int, default 8): " in proc.stdout, proc.stderr[-3000:]
    recipe = str(ROOT / "configs" / "debug_cpu.yaml")
    proc = _run(["-m", "launch.train", recipe, "num_generations=8"], user_dir)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines() == [
        "error: command line: num_generations=8: unknown key; TRL's num_generations is rollout.group_size here"]
    proc = _run(["-m", "launch.train", recipe, f"model.cache_dir={user_dir / 'models'}",
                 f"trainer.output_dir={user_dir / 'out'}", "reward.fns=[arithh]"], user_dir)  # imports `reward`
    assert proc.returncode == 2 and "arithh" in proc.stderr.strip().splitlines()[-1], proc.stderr[-3000:]


RAY_CODE = """
from launch.packages import pin
pin()  # what launch/train.py does
import ray
from launch.cluster import connect
from launch.config import load_config

@ray.remote
def where():
    import reward.registry, rl.registry
    return reward.__file__, rl.registry.__file__

connect(load_config(None, ["ray.num_cpus=1"]))
print("FILES", *ray.get(where.remote()))
ray.shutdown()
"""


def test_ray_workers(user_dir):
    proc = _run(["-c", RAY_CODE], user_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    files = proc.stdout.split("FILES", 1)[1].split()
    assert files == [str(ROOT / "reward" / "__init__.py"), str(ROOT / "rl" / "registry.py")]


def test_reward_pool_workers_load_the_users_reward_py_as_a_file(user_dir, monkeypatch):
    (user_dir / "reward.py").write_text("def fn(prompt, completion, **sample):\n    return 0.5\n")
    monkeypatch.chdir(user_dir)
    with RewardRunner(["reward.py:fn"], timeout_s=5.0, num_workers=1) as runner:
        [result] = runner.score([{"prompt": "q", "completion": "c"}])
    assert result.reward == 0.5
