"""Faults injected into real worker processes with real signals (`faults.inject`, rl/faults.py): a dead or hung
rollout, reward or trainer actor costs a replacement (or a trainer-group rebuild and a replay), never the run,
and the run's metrics and final weights are those of an uninterrupted run. A bounded number of retries, then
an error naming the actor; a run whose rewards all fail stops instead of writing final/.

Injection points (the tiny debug recipe, eval at steps 0, 2 and 4): rollout `generate` call 1 is the step-0 eval,
call 2 step 1, call 3 step 2; trainer `train_step` call k is step k; reward `score` call k follows generate call k.
"""

from __future__ import annotations

import json
import logging
import re

import pytest
import torch

from tests.integration.conftest import debug_config

STEPS = ("trainer.total_steps=4", "trainer.save_every=2", "trainer.eval_every=2")


def _rows(out) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _learning(rows: list[dict]) -> list[dict]:
    """What a run learned and measured, without timings and fault counters."""
    return [{k: v for k, v in r.items() if k != "time" and not k.startswith(("perf/", "faults/"))} for r in rows]


def _weights(out) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return {k: v for f in sorted((out / "final").glob("*.safetensors")) for k, v in load_file(f).items()}


@pytest.fixture(scope="module")
def baseline(ray_cluster, tmp_path_factory):
    from launch.loop import run

    out = tmp_path_factory.mktemp("baseline")
    run(debug_config(out, *STEPS))
    return _learning(_rows(out)), _weights(out)


def _same_run(out, baseline) -> None:
    rows, weights = baseline
    assert _learning(_rows(out)) == rows  # one row per step, every value the same
    got = _weights(out)
    assert got.keys() == weights.keys() and all(torch.equal(got[k], weights[k]) for k in weights)


def test_dead_rollout_and_reward_workers_are_replaced_and_the_step_is_unchanged(ray_cluster, tmp_path, baseline):
    from launch.loop import run

    run(debug_config(tmp_path, *STEPS, "faults.inject=[rollout:0:generate:3:kill,reward:0:score:4:kill]"))
    _same_run(tmp_path, baseline)
    last = _rows(tmp_path)[-1]
    assert last["faults/rollout_restarts"] == 1 and last["faults/reward_restarts"] == 1
    assert last["faults/trainer_restarts"] == 0


def test_dead_trainer_rank_rebuilds_the_group_and_replays_from_the_checkpoint(ray_cluster, tmp_path, baseline):
    from launch.loop import run

    # step 4's update is lost with rank 1; the group comes back from checkpoints/step_2 and trains 3 and 4 again
    run(debug_config(tmp_path, *STEPS, "faults.inject=[trainer:1:train_step:4:kill]"))
    _same_run(tmp_path, baseline)
    last = _rows(tmp_path)[-1]
    assert last["faults/trainer_restarts"] == 1 and last["faults/steps_replayed"] == 1


def test_trainer_death_before_any_checkpoint_restarts_from_the_initial_model(ray_cluster, tmp_path, baseline):
    from launch.loop import run

    run(debug_config(tmp_path, *STEPS, "faults.inject=[trainer:0:train_step:2:kill]"))
    _same_run(tmp_path, baseline)
    assert _rows(tmp_path)[-1]["faults/trainer_restarts"] == 1


def test_hung_workers_are_stopped_at_their_deadline_with_their_stacks(ray_cluster, tmp_path, baseline, caplog):
    from launch.loop import run

    # a rollout worker that sleeps in generate, a reward worker frozen by SIGSTOP, a trainer rank that sleeps
    # in train_step while its peer waits in a collective (whose timeout follows faults.trainer_timeout_s)
    # Deadlines: a healthy call of the tiny model takes well under a second on an idle machine; these leave a
    # margin of more than 10x for a loaded one, so that only the injected hangs reach them.
    inject = "[rollout:0:generate:2:hang,reward:0:score:3:stop,trainer:1:train_step:3:hang]"
    with caplog.at_level(logging.WARNING, logger="rlvr"):
        run(debug_config(tmp_path, *STEPS, f"faults.inject={inject}", "faults.rollout_timeout_s=15",
                         "faults.reward_timeout_s=15", "faults.trainer_timeout_s=20"))
    _same_run(tmp_path, baseline)
    last = _rows(tmp_path)[-1]
    assert (last["faults/rollout_restarts"], last["faults/reward_restarts"], last["faults/trainer_restarts"]) == (1, 1, 1)
    warnings = "\n".join(r.getMessage() for r in caplog.records)
    assert "rollout[0] did not finish within 15 s while generating" in warnings
    assert "reward[0] did not finish within 15 s while scoring" in warnings
    # seen either at the driver's deadline or, first, through its peer's collective timeout and a ping
    assert re.search(r"trainer\[1\] (did not finish within 20 s|did not answer a ping within 10 s after another "
                     r"rank failed with: .*Timed out)", warnings), warnings
    # the stacks the hung actors dumped at their deadline name the function they were stuck in
    assert warnings.count('in _inject') >= 2, warnings


STREAMED = ("trainer.total_steps=2", "trainer.save_every=0", "trainer.eval_every=0", "data.eval=null",
            "rollout.stream_samples=4")  # one prompt (a group of 4) per generate call: 4 calls a step


def test_streamed_scoring_loses_nothing_when_workers_die_between_the_calls_of_a_step(ray_cluster, tmp_path):
    """rollout.stream_samples queues a step's generate calls on one worker and scores each as it returns: the
    worker killed at its second call of step 1 (two more queued behind it) and a reward worker killed at its third
    scoring call are replaced within step 1, and the run is the uninterrupted streamed run's."""
    from launch.loop import run

    run(debug_config(tmp_path / "plain", *STREAMED))
    run(debug_config(tmp_path / "killed", *STREAMED, "faults.inject=[rollout:0:generate:2:kill,reward:0:score:3:kill]"))
    _same_run(tmp_path / "killed", (_learning(_rows(tmp_path / "plain")), _weights(tmp_path / "plain")))
    step1 = next(r for r in _rows(tmp_path / "killed") if r["step"] == 1)
    # both within step 1: without streaming, step 1 is generate call 1 and score call 1 only
    assert (step1["faults/rollout_restarts"], step1["faults/reward_restarts"]) == (1, 1)


def test_a_worker_that_keeps_dying_stops_the_run_naming_it(ray_cluster, tmp_path):
    from launch.loop import run

    cfg = debug_config(tmp_path, *STEPS, "faults.inject=[rollout:0:generate:2:kill]", "faults.max_worker_restarts=0")
    with pytest.raises(RuntimeError, match=r"rollout\[0\] died .* while generating 4 prompts of step 1(.|\n)*"
                                           r"faults.max_worker_restarts=0"):
        run(cfg)


def test_a_trainer_group_that_keeps_failing_stops_the_run(ray_cluster, tmp_path):
    from launch.loop import run

    cfg = debug_config(tmp_path, *STEPS, "faults.inject=[trainer:1:train_step:1:kill]", "faults.max_trainer_restarts=0")
    with pytest.raises(RuntimeError, match=r"trainer\[1\] died .* while training \(step 1\)(.|\n)*"
                                           r"faults.max_trainer_restarts=0(.|\n)*no checkpoint was written yet"):
        run(cfg)
    assert not (tmp_path / "final").exists()


REWARD_ALWAYS_FAILS = '''
def broken(prompt, completion, **sample):
    if completion == sample.get("answer"):
        return 0.0  # the start-up call (its completion is the row's answer), so that the run starts
    raise KeyError("solution")  # every sampled completion: a reward that breaks once training runs
'''


def test_a_run_whose_rewards_all_fail_stops_without_writing_final(ray_cluster, tmp_path):
    from launch.loop import run

    fn = tmp_path / "broken_reward.py"
    fn.write_text(REWARD_ALWAYS_FAILS)
    cfg = debug_config(tmp_path / "run", *STEPS, f"reward.fns=[{fn}:broken]", "faults.max_failed_reward_steps=2",
                       "data.eval=null")
    with pytest.raises(RuntimeError, match=r"every sample of the last 2 steps failed its reward(.|\n)*quarantine.jsonl"):
        run(cfg)
    assert not (tmp_path / "run" / "final").exists()
    assert (tmp_path / "run" / "quarantine.jsonl").read_text().count("KeyError") >= 2 * 16


def test_a_killed_driver_resumes_with_one_row_per_step(tmp_path, baseline):
    """SIGKILL of the whole `python -m launch.train` process group after step 3 was logged (checkpoint: step 2):
    the same command resumes from step 2, logs 3 and 4 once, and ends where the uninterrupted run ended."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    cmd = [sys.executable, "-m", "launch.train", "configs/debug_cpu.yaml", f"trainer.output_dir={tmp_path}",
           f"model.cache_dir={tmp_path.parent / 'models'}", *STEPS]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0", WANDB_MODE="disabled")
    # the tiny model runs a step (and the last save) in about 0.1 s, faster than the poll below: the first run
    # hangs in step 4's update, so that the kill always lands after step 3's row and before final/
    first = subprocess.Popen([*cmd, "faults.inject=[trainer:0:train_step:4:hang]"], cwd=root, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not ((tmp_path / "metrics.jsonl").exists() and any(r["step"] == 3 for r in _rows(tmp_path))):
            assert first.poll() is None and time.monotonic() < deadline, "the first run ended before step 3"
            time.sleep(0.2)
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=60)
    assert not (tmp_path / "final").exists()
    second = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert [r["step"] for r in _rows(tmp_path)] == [0, 1, 2, 3, 4]
    _same_run(tmp_path, baseline)
