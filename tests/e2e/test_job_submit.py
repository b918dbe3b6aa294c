"""End to end as a cluster user runs it: a Ray head on loopback, `ray job submit` of debug_cpu.yaml.

Starts `ray start --head` bound to 127.0.0.1 (token auth disabled for this private test cluster),
submits `python -m launch.train configs/debug_cpu.yaml` with the repository as working dir, waits for
the job to succeed, and checks the outputs the README lists under "Outputs" (config.yaml, metrics.jsonl,
checkpoints/, final/).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def ray_head():
    # private test cluster, no token auth. (Not RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0: with it `ray start`'s job
    # agent never registers; the head then advertises this machine's own address besides loopback.)
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)
    # Ray's unix sockets live under --temp-dir; pytest's tmp paths can exceed the 107-byte socket limit
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    gcs, dash = _free_port(), _free_port()
    ray = [sys.executable, "-m", "ray.scripts.scripts"]
    subprocess.run(ray + ["start", "--head", "--node-ip-address=127.0.0.1", f"--port={gcs}",
                          "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--num-cpus=2",
                          f"--temp-dir={temp_dir}", "--disable-usage-stats"],
                   check=True, env=env, capture_output=True, timeout=180)
    try:
        yield f"http://127.0.0.1:{dash}", env
    finally:
        _stop_cluster(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _stop_cluster(temp_dir: str) -> None:
    """Stop only this test's cluster (`ray stop` would end every Ray cluster on the machine): its
    processes name its temp dir on their command line; their children (the workers) go with them."""
    import psutil

    procs = []
    me = {os.getpid(), *(p.pid for p in psutil.Process().parents())}
    for p in psutil.process_iter(["cmdline"]):
        if p.pid not in me and any(temp_dir in part for part in p.info["cmdline"] or []):
            procs += [p, *p.children(recursive=True)]
    for p in procs:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=15)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass


def test_ray_job_submit_debug_cpu(ray_head, tmp_path):
    address, env = ray_head
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "ray.scripts.scripts", "job", "submit", f"--address={address}",
           f"--working-dir={ROOT}", "--runtime-env-json", json.dumps({"excludes": ["outputs/", ".git/", "wandb/"]}),
           "--", "python", "-m", "launch.train", "configs/debug_cpu.yaml", f"trainer.output_dir={out}",
           "trainer.total_steps=2", f"model.cache_dir={tmp_path / 'models'}"]
    # right after `ray start` the job agent may not be up yet ("No available agent"): retry that, only that,
    # for up to 3 minutes (on a loaded 2-core machine the agent has taken over a minute to come up)
    deadline = time.monotonic() + 180
    while True:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, cwd=ROOT)
        if "No available agent" not in proc.stdout + proc.stderr or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert proc.returncode == 0 and "succeeded" in proc.stdout + proc.stderr, proc.stdout[-4000:] + proc.stderr[-4000:]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 1, 2]
    assert (out / "config.yaml").is_file()
    assert (out / "final" / "config.json").is_file() and list((out / "final").glob("*.safetensors"))
    assert (out / "checkpoints" / "step_2" / "COMPLETE").is_file()
