"""Overlapped training (trainer.async_mode, launch/lookahead.py) on real Ray, DeepSpeed with two ranks and the
tiny model: one_step_off trains every batch from step 2 on exactly one version behind, the same way in every run
of a seed, through worker faults, a trainer-group rebuild and a SIGKILL of the driver; async keeps its staleness
bound and trains every batch of the synchronous data order exactly once across a kill and resume.

Injection points as in test_faults.py: rollout `generate` call 1 is the step-0 eval, call 2 generates batch 1,
call 3 batch 2 (the producer thread starts batch 2 as soon as batch 1 is out); trainer `train_step` call k is step k.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.conftest import debug_config
from tests.integration.test_faults import _learning, _rows, _same_run, _weights

ONE_STEP_OFF = ("trainer.async_mode=one_step_off", "algorithm.loss.tis_level=token", "trainer.total_steps=4",
                "trainer.save_every=2", "trainer.eval_every=2", "logging.samples_per_step=16")
ASYNC = ("trainer.async_mode=async", "trainer.max_staleness=2", "algorithm.loss.tis_level=token",
         "trainer.total_steps=6", "trainer.save_every=2", "trainer.eval_every=0", "logging.samples_per_step=16")
ROOT = Path(__file__).resolve().parents[2]


def _samples(out) -> dict[int, list[dict]]:
    by_step: dict[int, list[dict]] = {}
    for line in (out / "samples.jsonl").read_text().splitlines():
        r = json.loads(line)
        by_step.setdefault(r["step"], []).append(r)
    return by_step


@pytest.fixture(scope="module")
def one_step_off(ray_cluster, tmp_path_factory):
    from launch.loop import run

    out = tmp_path_factory.mktemp("one_step_off")
    run(debug_config(out, *ONE_STEP_OFF))
    return out


def test_one_step_off_trains_one_version_behind_with_the_decoupled_correction(one_step_off):
    rows = {r["step"]: r for r in _rows(one_step_off)}
    assert sorted(rows) == [0, 1, 2, 3, 4]
    # batch b is generated with the weights step b-1 starts from: version max(0, b-2)
    for step, samples in _samples(one_step_off).items():
        assert {s["policy_version"] for s in samples} == {max(0, step - 2)}, step
        assert len(samples) == 16
        assert rows[step]["rollout/staleness_max"] == rows[step]["rollout/staleness_mean"] == (step > 1)
        assert rows[step]["perf/wait_rollout_s"] >= 0
    trained = [r for s, r in rows.items() if s and r.get("actor/tis_ess") is not None]
    assert trained, "no step logged its importance weights (algorithm.loss.tis_level=token)"
    for r in trained:  # ESS <= 1 up to fp32 rounding of its sums over <= 128 tokens (n·eps each, ~1e-5)
        assert 0 < r["actor/tis_ess"] <= 1 + 1e-4 and 0 <= r["actor/tis_truncated_frac"] <= 1
    assert (one_step_off / "final" / "config.json").is_file()


def test_one_step_off_is_unchanged_by_dead_workers_and_a_trainer_rebuild(ray_cluster, tmp_path, one_step_off):
    """A rollout worker killed while it generates batch 2 on the producer thread, and a trainer rank killed in
    step 3 (the group is rebuilt from checkpoint step 2, whose driver state holds batch 3, generated ahead): every
    logged value and the final weights are the uninterrupted run's."""
    from launch.loop import run

    run(debug_config(tmp_path, *ONE_STEP_OFF, "faults.inject=[rollout:0:generate:3:kill,trainer:1:train_step:3:kill]"))
    _same_run(tmp_path, (_learning(_rows(one_step_off)), _weights(one_step_off)))
    last = _rows(tmp_path)[-1]
    assert last["faults/rollout_restarts"] == 1 and last["faults/trainer_restarts"] == 1


def _kill_after_step(out: Path, overrides: tuple[str, ...], step: int, hang_at: int) -> None:
    """Start `python -m launch.train` with its trainer hanging in step `hang_at`, SIGKILL its whole process group
    once step `step` was logged, then run the same command again to the end."""
    cmd = [sys.executable, "-m", "launch.train", "configs/debug_cpu.yaml", f"trainer.output_dir={out}",
           f"model.cache_dir={out.parent / 'models'}", *overrides]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0", WANDB_MODE="disabled")
    first = subprocess.Popen([*cmd, f"faults.inject=[trainer:0:train_step:{hang_at}:hang]"], cwd=ROOT, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not ((out / "metrics.jsonl").exists() and any(r["step"] == step for r in _rows(out))):
            assert first.poll() is None and time.monotonic() < deadline, f"the first run ended before step {step}"
            time.sleep(0.2)
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=60)
    assert not (out / "final").exists()
    second = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]


def test_one_step_off_resumes_exactly_after_a_sigkill(tmp_path, one_step_off):
    """Killed in step 4 (checkpoint: step 2, with batch 3 generated ahead in its driver state): the resumed run,
    a fresh process, logs every value of the uninterrupted in-process run and ends on its weights."""
    _kill_after_step(tmp_path, ONE_STEP_OFF, step=3, hang_at=4)
    assert [r["step"] for r in _rows(tmp_path)] == [0, 1, 2, 3, 4]
    _same_run(tmp_path, (_learning(_rows(one_step_off)), _weights(one_step_off)))


def test_async_keeps_its_staleness_bound_and_trains_each_batch_once_across_a_kill(ray_cluster, tmp_path):
    """async with max_staleness=2, killed in step 5 (checkpoint: step 4, up to two batches generated ahead):
    after the resume, the (prompt, group) ids trained at every step are the synchronous run's, each once, and no
    sample was more than two versions old."""
    from launch.loop import run

    sync = tmp_path / "sync"
    run(debug_config(sync, *[o for o in ASYNC if not o.startswith(("trainer.async_mode", "trainer.max_staleness"))]))
    killed = tmp_path / "async"
    _kill_after_step(killed, ASYNC, step=4, hang_at=5)

    def ids(out) -> dict[int, list[tuple[int, int]]]:
        return {step: sorted((s["prompt_id"], s["group_id"]) for s in samples)
                for step, samples in _samples(out).items()}

    assert ids(killed) == ids(sync)
    assert sorted(ids(killed)) == [1, 2, 3, 4, 5, 6]
    rows = [r for r in _rows(killed) if r["step"]]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    for r in rows:
        assert 0 <= r["rollout/staleness_max"] <= 2, r["step"]
    for step, samples in _samples(killed).items():
        assert all(step - 1 - s["policy_version"] <= 2 for s in samples), step
