"""RewardRunner with real worker processes: weights, dict results, async, statuses, quarantine.

The reward functions are defined here and loaded by the workers from this file by path.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import psutil
import pytest

from reward import RewardRunner, RewardSpecError, time_left
from reward.pool import RewardWorkerError
from reward.quarantine import append_records

HERE = os.path.abspath(__file__)


def exact(prompt, completion, *, answer, **sample):
    return float(completion.strip() == str(answer))


async def length_bonus(prompt, completion, **sample):
    await asyncio.sleep(0)
    chars = len(completion)
    return {"reward": min(chars, 10) / 10, "chars": chars, "stratum": sample.get("level"), "note": "not a metric"}


def budget(prompt, completion, **sample):
    return time_left()


def broken_in_workers(prompt, completion, **sample):
    return 1.0


_WARM = {"pid": 0}


def warmed(prompt, completion, **sample):
    """Whether its warmup ran in the worker before this call's process was forked from it."""
    return {"reward": float(_WARM["pid"] not in (0, os.getpid())), "warm_pid": float(_WARM["pid"])}


def _warm() -> None:
    _WARM["pid"] = os.getpid()


warmed.warmup = _warm


def warmup_fails(prompt, completion, **sample):
    return 1.0


def _fail_warmup() -> None:
    raise OSError("no model file")


warmup_fails.warmup = _fail_warmup


if sys.argv[0].endswith("pool_worker.py"):
    broken_in_workers = None  # type: ignore[assignment]  # only the worker processes see this


def _rows(n: int) -> list[dict]:
    return [{"prompt": f"q{i}", "completion": str(i), "answer": str(i if i % 2 == 0 else -1), "level": f"L{i % 3}"}
            for i in range(n)]


@pytest.fixture(scope="module")
def runner():
    specs = [f"{HERE}:exact", {"fn": f"{HERE}:length_bonus", "weight": 0.5, "name": "bonus"}, "format"]
    with RewardRunner(specs, timeout_s=5.0, num_workers=2) as r:
        yield r


def test_weighted_sum_dict_metrics_and_stratum(runner):
    rows = _rows(6)
    results = runner.score(rows)
    for i, res in enumerate(results):
        correct = float(i % 2 == 0)
        assert res.status == "ok" and res.error is None
        assert res.reward == pytest.approx(correct + 0.5 * 0.1)  # len("i") = 1 -> 0.1; format scores 0
        assert res.metrics == {"exact": correct, "bonus": 0.1, "bonus/chars": 1.0, "format": 0.0}  # no prefix
        assert res.stratum == f"L{i % 3}"
    assert runner.counts["calls"] >= 18 and runner.score([]) == []


def test_missing_column_is_an_error_not_a_wrong_answer(tmp_path):
    quarantine = tmp_path / "q.jsonl"
    rows = [{"prompt": "p", "completion": "1", "answer": "1"}, {"prompt": "p", "completion": "1"}]
    with RewardRunner([f"{HERE}:exact"], timeout_s=5.0, num_workers=1, quarantine_path=str(quarantine)) as r:
        ok, bad = r.score(rows)
        assert r.counts == {"calls": 2, "ok": 1, "error": 1, "timeout": 0}
    assert ok.reward == 1.0 and (bad.status, bad.reward) == ("error", None)
    assert "needs column(s) ['answer']" in bad.error
    (line,) = [json.loads(x) for x in quarantine.read_text().splitlines()]
    assert (line["fn"], line["status"], line["row"]) == ("exact", "error", rows[1])
    assert "KeyError" in line["traceback"]


def test_error_reward_option_and_deadline_visible_inside(tmp_path):
    with RewardRunner([f"{HERE}:exact"], timeout_s=5.0, num_workers=1, error_reward=-1.0) as r:
        (res,) = r.score([{"prompt": "p", "completion": "1"}])
    assert (res.status, res.reward) == ("error", -1.0)
    with RewardRunner([f"{HERE}:budget"], timeout_s=3.0, num_workers=1) as r:
        (res,) = r.score([{"prompt": "p", "completion": "c"}])
    assert 2.0 < res.reward <= 3.0


def test_bad_arguments_fail_before_any_worker_starts():
    before = psutil.Process().children()
    with pytest.raises(RewardSpecError, match="did you mean 'math'"):
        RewardRunner(["mathh"])
    with pytest.raises(ValueError, match="timeout_s"):
        RewardRunner(["math"], timeout_s=0)
    with pytest.raises(ValueError, match="num_workers"):
        RewardRunner(["math"], num_workers=0)
    assert psutil.Process().children() == before


def test_worker_start_failure_is_reported_and_cleaned_up():
    before = psutil.Process().children()
    with pytest.raises(RewardWorkerError, match="is a NoneType, not a function"):
        RewardRunner([f"{HERE}:broken_in_workers"], num_workers=2)
    assert psutil.Process().children() == before


def test_warmup_runs_once_in_the_worker_before_the_calls():
    """A function's `warmup` runs in the worker (the zygote): each call's process is forked with it done."""
    rows = [{"prompt": "p", "completion": "c"}] * 3
    with RewardRunner([f"{HERE}:warmed"], num_workers=1, sandbox="rlimits") as r:
        results = r.score(rows)
        [worker] = r.worker_pids
    assert [x.reward for x in results] == [1.0] * 3, results  # warmed in another process than each call's
    assert {x.metrics["warmed/warm_pid"] for x in results} == {float(worker)}  # the worker, once
    with pytest.raises(RewardWorkerError, match=r"reward fn 'warmup_fails' .* its warmup\(\) failed: OSError: no "
                                                r"model file"):
        RewardRunner([f"{HERE}:warmup_fails"], num_workers=1, sandbox="rlimits")


def test_isolation_must_be_call_or_worker():
    with pytest.raises(RewardSpecError, match="isolation='fork'; use call"):
        RewardRunner([{"fn": "math", "isolation": "fork"}])


def test_rows_must_have_prompt_and_completion(runner):
    with pytest.raises(ValueError, match="row 1 must be a dict with str 'prompt' and 'completion'"):
        runner.score([{"prompt": "p", "completion": "c"}, {"prompt": "p"}])


def test_close_kills_workers():
    r = RewardRunner(["arith"], num_workers=2)
    pids = r.worker_pids
    assert len(pids) == 2 and all(psutil.pid_exists(p) for p in pids)
    r.close()
    r.close()
    assert not any(p in {c.pid for c in psutil.Process().children()} for p in pids)
    with pytest.raises(RuntimeError, match="after close"):
        r.score([])


def test_quarantine_appends_from_several_processes_never_interleave(tmp_path):
    path = tmp_path / "q.jsonl"
    code = (
        "import sys; sys.path.insert(0, sys.argv[2]);"
        "from reward.quarantine import append_records;"
        "[append_records(sys.argv[1], [{'w': sys.argv[3], 'i': i, 'pad': 'x' * 20000}] * 3) for i in range(40)]"
    )
    root = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
    procs = [subprocess.Popen([sys.executable, "-c", code, str(path), root, str(w)]) for w in range(4)]
    append_records(str(path), [{"w": "main", "i": 0, "pad": ""}])
    assert all(p.wait() == 0 for p in procs)
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert len(lines) == 4 * 40 * 3 + 1


def test_process_limit_named_even_without_source_lines():
    """EAGAIN from os.fork names the process limit; the check reads code objects, so it holds when the
    traceback has no source text (a file the sandbox cannot read, or linecache failing under a fork bomb)."""
    import errno
    import os

    from reward import sandbox
    from reward.pool_worker import _summary

    ns = {"os": os}
    exec(compile("def bomb():\n    os.fork\n    raise BlockingIOError(11, 'Resource temporarily unavailable')\n",
                 "<no source>", "exec"), ns)
    limits = sandbox.Limits(max_processes=7)
    try:
        ns["bomb"]()
    except OSError as exc:
        assert "process limit max_processes=7 reached" in _summary(exc, limits)
    try:
        raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")  # non-blocking I/O, not a fork
    except OSError as exc:
        assert "process limit" not in _summary(exc, limits)
