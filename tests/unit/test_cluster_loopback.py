"""A local cluster started by launch.cluster.connect binds to loopback, though `ray` was imported first."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

CODE = """
import ray  # imported before connect: Ray has already read RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER
from launch.config import load_config
from launch.cluster import connect
connect(load_config("configs/debug_cpu.yaml", []))
print("NODE", ray.util.get_node_ip_address())
ray.shutdown()
"""


def test_local_cluster_node_is_on_loopback():
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)
    out = subprocess.run([sys.executable, "-c", CODE], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "NODE 127.0.0.1" in out.stdout, out.stdout + out.stderr[-2000:]
