"""Hostile reward functions against a real RewardRunner (real worker processes, real sandbox).

One batch mixes every hostile case with well-behaved rows, so the claims are checked together:
the batch returns within the deadline plus a small margin, the good rows are scored correctly,
each failure has the right status and a quarantine line, and no process is left behind. The
hostile function below is loaded by the workers from this very file ("<this file>:hostile").
The network case only ever connects to a listener this test opens on 127.0.0.1.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import sys
import tempfile
import time

import psutil
import pytest

from reward import RewardRunner
from reward.sandbox import SANDBOX_UID_BASE

TIMEOUT_S = 2.0
MARGIN_S = 3.0  # worker kill + replacement start, on a loaded 2-core machine
SPEC = f"{os.path.abspath(__file__)}:hostile"
PLANTED = "planted-secret-5d1e"
SECRETS = ("WANDB_API_KEY", "HF_TOKEN", "AWS_SECRET_ACCESS_KEY", "RAY_PLANTED_TOKEN")


def hostile(prompt: str, completion: str, *, answer: str, case: str, port: int = 0, targets: tuple = (), **sample):
    """Misbehave as `case` says; "good" is an honest exact-match reward."""
    if case == "good":
        return float(completion.strip() == answer)
    if case == "raises":
        raise RuntimeError("hostile: raised on purpose")
    if case in ("none", "nan", "inf", "string", "no_reward_key"):
        bad = {"none": None, "nan": float("nan"), "inf": float("inf"), "string": "1.0", "no_reward_key": {"score": 1.0}}
        return bad[case]
    if case == "sleep":
        time.sleep(10**6)
    if case == "spin":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        while True:
            pass
    if case == "c_block":
        # Every catchable signal masked, then stuck inside a C call that never returns.
        signal.pthread_sigmask(signal.SIG_BLOCK, set(signal.Signals))
        ctypes.CDLL(None).pause()
    if case == "segfault":
        ctypes.string_at(0)
    if case == "memory":
        hoard = []
        while True:
            hoard.append(bytearray(32 << 20))
    if case == "fork_bomb":
        while True:
            if os.fork() == 0:
                _bomb_child()
    if case == "write_outside":
        for path in targets:
            try:
                with open(path, "w") as f:
                    f.write("escaped")
                return 1.0  # a write got through: the test sees status ok and fails
            except OSError as exc:
                err = exc
        raise err
    if case == "connect":
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as s:
            s.sendall(b"escaped")
        return 1.0
    if case == "forge_reply":
        os.write(int(sys.argv[2]), b"\xff" * 64)  # garbage on the worker's reply pipe
        time.sleep(10**6)
    if case == "exit":
        os._exit(0)
    if case == "env_secret":  # the actor's secrets, in our environment or the parent's /proc/PID/environ
        seen = "".join(os.environ.values())
        try:
            with open(f"/proc/{os.getppid()}/environ", "rb") as f:
                seen += f.read().decode(errors="replace")
        except OSError:
            pass
        if PLANTED in seen:
            return 1.0  # a secret got through: the test sees status ok and fails
        raise LookupError("no planted secret visible")
    if case == "open_files":
        return float(len([os.open("/dev/null", os.O_RDONLY) for _ in range(1000)]))
    if case == "print_100mb":
        line = "x" * (1 << 20)
        for _ in range(100):
            print(line)
        return 1.0
    raise AssertionError(f"unknown case {case}")


def _bomb_child() -> None:
    try:
        while True:
            os.fork()  # parent and child both go on forking until the process limit stops them
    except OSError:
        pass
    try:
        time.sleep(10**6)  # hold the slot
    finally:
        os._exit(0)


# case -> (expected status, a fragment of the error message)
EXPECTED = {
    "raises": ("error", "raised on purpose"),
    "none": ("error", "returned None"),
    "nan": ("error", "non-finite"),
    "inf": ("error", "non-finite"),
    "string": ("error", "str"),
    "no_reward_key": ("error", "without a 'reward' key"),
    "sleep": ("timeout", "deadline"),
    "spin": ("timeout", "deadline"),
    "c_block": ("timeout", "deadline"),
    "segfault": ("error", "SIGSEGV"),
    "memory": ("error", "MemoryError"),
    "fork_bomb": ("error", "process limit"),
    "write_outside": ("error", "Permission denied"),
    "connect": ("error", "Network is unreachable"),
    "print_100mb": ("error", "file-size limit"),
    "forge_reply": ("error", "malformed reply"),
    "exit": ("error", "exit code 0"),
    "env_secret": ("error", "no planted secret visible"),
    "open_files": ("error", "open-file limit max_open_files=256"),
}


def _sandbox_processes(pids: list[int]) -> list[psutil.Process]:
    """Live processes running as the sandbox uid of any worker this runner ever started."""
    uids = {SANDBOX_UID_BASE + p for p in pids}
    out = []
    for proc in psutil.process_iter(["uids", "status"]):
        try:
            if proc.info["uids"].real in uids and proc.info["status"] != psutil.STATUS_ZOMBIE:
                out.append(proc)
        except (psutil.NoSuchProcess, TypeError):
            continue
    return out


@pytest.fixture
def listener():
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.setblocking(False)
    yield server
    server.close()


@pytest.fixture
def own_children():
    """This test's descendant processes: a function returning them, leaving out the processes (and their
    subtrees) that were already children of the test process, such as a session-wide Ray cluster."""
    me = psutil.Process()
    before = {p.pid for p in me.children()}

    def current() -> list[psutil.Process]:
        outside = set()
        for pid in before:
            try:
                outside |= {pid, *(c.pid for c in psutil.Process(pid).children(recursive=True))}
            except psutil.NoSuchProcess:
                continue
        return [p for p in me.children(recursive=True) if p.pid not in outside]

    return current


@pytest.fixture
def write_targets(tmp_path):
    """An open (0777) directory under /tmp and a root-owned one under /run (or the home dir)."""
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    base = "/run" if os.access("/run", os.W_OK) else None
    closed_dir = tempfile.mkdtemp(prefix="reward-hostile-", dir=base)
    os.chmod(closed_dir, 0o755)
    yield [str(open_dir / "escape.txt"), os.path.join(closed_dir, "escape.txt")]
    for name in ("escape.txt",):
        path = os.path.join(closed_dir, name)
        if os.path.exists(path):
            os.unlink(path)
    os.rmdir(closed_dir)


@pytest.mark.skipif(os.geteuid() != 0, reason="the full sandbox (own uid, namespaces) needs root")
def test_hostile_batch(tmp_path, listener, write_targets, own_children, monkeypatch):
    for name in SECRETS:  # in the runner's environment, as on a Ray actor; the workers must not see them
        monkeypatch.setenv(name, PLANTED)
    port = listener.getsockname()[1]
    rows = []
    for k, case in enumerate(EXPECTED):
        rows.append({"prompt": "p", "completion": str(k), "answer": str(k), "case": "good"})
        rows.append({"prompt": "p", "completion": "x", "answer": "x", "case": case, "port": port,
                     "targets": write_targets})
    quarantine = tmp_path / "quarantine.jsonl"
    runner = RewardRunner([SPEC], timeout_s=TIMEOUT_S, num_workers=6, quarantine_path=str(quarantine),
                          memory_limit_mb=512)
    try:
        assert runner.sandbox_level == "full"
        start = time.monotonic()
        results = runner.score(rows)
        elapsed = time.monotonic() - start
        leftovers = [p for p in _sandbox_processes(runner.spawned_pids) if p.pid not in runner.worker_pids]
        children = {p.pid for p in own_children()}
        assert children <= set(runner.worker_pids), "the test process has children that are not live workers"

        assert elapsed < TIMEOUT_S + MARGIN_S, f"batch took {elapsed:.1f} s"
        assert not leftovers, f"processes left behind: {[(p.pid, p.name()) for p in leftovers]}"
        for row, result in zip(rows, results):
            if row["case"] == "good":
                assert (result.status, result.reward) == ("ok", 1.0), result
                continue
            status, fragment = EXPECTED[row["case"]]
            assert result.status == status and result.reward is None, (row["case"], result)
            assert fragment in result.error, (row["case"], result.error)

        lines = [json.loads(line) for line in quarantine.read_text().splitlines()]
        assert sorted(line["row"]["case"] for line in lines) == sorted(EXPECTED)
        assert all(line["traceback"] and line["spec"] == SPEC for line in lines)
        # A timeout's traceback is the stack at the deadline: it points at the line that hung.
        assert all("test_reward_hostile.py" in line["traceback"] for line in lines if line["status"] == "timeout")
        assert not any(os.path.exists(p) for p in write_targets), "a sandboxed write escaped"
        with pytest.raises(BlockingIOError):
            listener.accept()  # nobody ever connected

        # The replaced workers score the next batch normally.
        again = runner.score([{"prompt": "p", "completion": "y", "answer": "y", "case": "good"}] * 6)
        assert [r.reward for r in again] == [1.0] * 6
        assert runner.worker_restarts == 7  # 3 timed out, segfault, forged reply, exit, no descriptor left
    finally:
        runner.close()
    assert not own_children()
    assert not _sandbox_processes(runner.spawned_pids)


def test_without_sandbox_deadline_and_crash_isolation_still_hold(own_children):
    """sandbox=False (for functions that need the network) keeps deadlines and process isolation."""
    cases = ["good", "spin", "segfault", "raises", "good"]
    rows = [{"prompt": "p", "completion": "z", "answer": "z", "case": c} for c in cases]
    with RewardRunner([SPEC], timeout_s=TIMEOUT_S, num_workers=3, sandbox=False) as runner:
        assert runner.sandbox_level == "off"
        start = time.monotonic()
        results = runner.score(rows)
        elapsed = time.monotonic() - start
        pids = runner.worker_pids
        strays = [p for p in own_children() if p.pid not in pids]
    assert elapsed < TIMEOUT_S + MARGIN_S
    assert [r.status for r in results] == ["ok", "timeout", "error", "error", "ok"]
    assert not strays, [p.cmdline() for p in strays]
    assert not own_children()


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-v"]))
