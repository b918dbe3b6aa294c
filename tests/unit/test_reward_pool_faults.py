"""Worker pool faults with real worker processes and real signals: a worker that stops reading its
pipe (SIGSTOP) while a frame larger than the pipe buffer is sent to it, and worker starts that fail
for a while and then heal.

The reward function `exact` is loaded by the workers from this file by path.
"""

from __future__ import annotations

import os
import pickle
import signal
import time

import psutil
import pytest

from reward import RewardRunner
from reward.pool import START_RETRY_S, RewardWorkerError

HERE = os.path.abspath(__file__)
PIPE_BUFFER = 64 << 10
MARGIN_S = 2.0  # stack dump, kill and respawn on a loaded 2-core machine


def exact(prompt, completion, *, answer, **sample):
    return float(completion == answer)


def _big_row() -> dict:
    return {"prompt": "p", "completion": "1", "answer": "1", "pad": "x" * (1 << 20)}


@pytest.mark.timeout(60)
def test_a_row_for_a_stopped_worker_times_out_at_the_deadline():
    """A 1 MiB row cannot fit in the pipe of a SIGSTOPped worker: the call fails at its deadline."""
    with RewardRunner([f"{HERE}:exact"], timeout_s=2.0, num_workers=1) as runner:
        (pid,) = runner.worker_pids
        os.killpg(pid, signal.SIGSTOP)  # the worker and, in its PID namespace, the sandbox's PID 1 (same group)
        start = time.monotonic()
        (res,) = runner.score([_big_row()])
        elapsed = time.monotonic() - start
        assert res.status == "timeout" and res.reward is None, res
        assert "could not be sent within the 2 s deadline" in res.error
        assert 2.0 <= elapsed < 2.0 + MARGIN_S, elapsed
        assert not psutil.pid_exists(pid)  # killed (SIGKILL works on a stopped process) and reaped
        # Its replacement reads the same 1 MiB row as it arrives and scores it.
        again = runner.score([_big_row(), _big_row()])
        assert [r.reward for r in again] == [1.0, 1.0]
        assert pid not in runner.worker_pids and runner.worker_restarts == 1
        assert runner.counts == {"calls": 3, "ok": 2, "error": 0, "timeout": 1}


@pytest.mark.timeout(60)
def test_config_frame_for_a_stalled_worker_fails_the_start_at_its_timeout(tmp_path, monkeypatch):
    """The startup config (here over 64 KiB: many specs) is sent as the worker reads it; a worker that
    stops before reading (a sitecustomize that SIGSTOPs it) fails its start at startup_timeout_s."""
    specs = [{"fn": "format", "name": f"format_{i:04d}_{'x' * 40}"} for i in range(3000)]
    assert len(pickle.dumps(specs)) > 2 * PIPE_BUFFER
    with RewardRunner(specs, num_workers=1) as runner:
        (res,) = runner.score([{"prompt": "p", "completion": "c"}])
        assert res.status == "ok" and len(res.metrics) == len(specs)

    (tmp_path / "sitecustomize.py").write_text(
        "import os, signal\n"
        "if os.environ.get('REWARD_TEST_STOP_WORKER'):\n"
        "    os.kill(os.getpid(), signal.SIGSTOP)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))  # the workers get the parent's sys.path
    monkeypatch.setenv("REWARD_TEST_STOP_WORKER", "1")  # named in `env`: workers get only an allowlist otherwise
    specs = [dict(spec, env=["REWARD_TEST_STOP_WORKER"]) for spec in specs]
    before = psutil.Process().children()
    start = time.monotonic()
    with pytest.raises(RewardWorkerError, match="no hello within 2 s"):
        RewardRunner(specs, num_workers=1, startup_timeout_s=2.0)
    assert time.monotonic() - start < 2.0 + MARGIN_S
    assert psutil.Process().children() == before


FLAKY = '''
import os

if os.path.exists({flag!r}):
    raise ImportError("a module this reward needs is briefly missing")


def score(prompt, completion, **sample):
    if sample.get("crash"):
        os._exit(3)
    return 1.0
'''


@pytest.mark.timeout(60)
def test_failed_starts_back_off_then_heal(tmp_path):
    """Replacement workers that fail at import fail the batch at once, are retried only after a doubling
    backoff, and a later batch scores normally once the cause is gone."""
    flag = tmp_path / "missing"
    path = tmp_path / "flaky.py"
    path.write_text(FLAKY.format(flag=str(flag)))
    good = {"prompt": "p", "completion": "c"}
    # rlimits: the module looks at a file of the host's at import, which the namespaced levels do not show
    with RewardRunner([f"{path}:score"], timeout_s=5.0, num_workers=1, sandbox="rlimits") as runner:
        flag.touch()
        (crashed,) = runner.score([dict(good, crash=True)])  # a call that exits takes only its own process
        assert crashed.status == "error" and "exit code 3" in crashed.error and runner.worker_restarts == 0
        (pid,) = runner.worker_pids
        os.killpg(pid, signal.SIGKILL)  # the worker itself dies (an OOM kill, say): its replacement is needed
        (died,) = runner.score([good])
        assert died.status == "error" and "died" in died.error, died

        start = time.monotonic()
        results = runner.score([good] * 3)  # the replacement fails at import: every call fails, none waits
        assert time.monotonic() - start < 2.0
        assert [r.status for r in results] == ["error"] * 3
        assert "no reward worker could be started" in results[0].error
        assert "briefly missing" in results[0].error and runner.worker_start_failures == 1

        spawned = len(runner.spawned_pids)
        (res,) = runner.score([good])  # within the backoff: no new start, fails at once
        assert res.status == "error" and len(runner.spawned_pids) == spawned

        backoff = START_RETRY_S
        for failures in (2, 3):  # past each backoff one more try, which fails too; the backoff doubles
            time.sleep(backoff + 0.1)
            backoff *= 2
            (res,) = runner.score([good])
            assert res.status == "error" and runner.worker_start_failures == failures
            assert len(runner.spawned_pids) == spawned + failures - 1

        flag.unlink()  # the cause is gone; the pool finds out at its next try, after the 2 s backoff
        time.sleep(backoff / 2)
        (res,) = runner.score([good])
        assert res.status == "error" and len(runner.spawned_pids) == spawned + 2
        time.sleep(backoff / 2 + 0.1)
        assert [r.reward for r in runner.score([good] * 3)] == [1.0] * 3
        assert runner.worker_start_failures == 3 and runner.worker_restarts == 4
        assert len(runner.worker_pids) == 1
