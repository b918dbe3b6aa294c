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

import reward
from reward import RewardRunner
from reward.sandbox import SANDBOX_UID_BASE
from reward.pool_worker import CALL_PROCESS_NAME

TIMEOUT_S = 2.0
MARGIN_S = 3.0  # worker kill + replacement start, on a loaded 2-core machine
SPEC = f"{os.path.abspath(__file__)}:hostile"
PLANTED = "planted-secret-5d1e"
SECRETS = ("WANDB_API_KEY", "HF_TOKEN", "AWS_SECRET_ACCESS_KEY", "RAY_PLANTED_TOKEN")


def hostile(prompt: str, completion: str, *, answer: str, case: str, port: int = 0, targets: tuple = (),
            targets_read: tuple = (), unix_socket: str = "", host_pid: int = 0, **sample):
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
    if case == "forge_reply":  # garbage on every descriptor: the pool's pipes are not among them
        for fd in map(int, os.listdir("/proc/self/fd")):
            if fd > 2:
                try:
                    os.write(fd, b"\xff" * 64)
                except OSError:
                    pass
        os._exit(0)
    if case == "plant":  # state for the calls after this one: a patched builtin, a thread, an open descriptor
        import builtins
        import threading

        builtins.float = lambda *args: 1.0  # the honest case's float(completion == answer) would say 1.0
        threading.Thread(target=time.sleep, args=(3600,), daemon=True).start()
        os.open("/dev/null", os.O_RDONLY)
        return 0.0
    if case == "planted":  # what a later call sees of that state
        import threading

        return {"reward": float(completion.strip() == answer), "threads": threading.active_count(),
                "fds": len(os.listdir("/proc/self/fd"))}
    if case == "host_processes":  # the test process (by host pid) and any command line mentioning pytest
        try:
            os.kill(host_pid, 0)
            return 1.0  # the test process is visible: the test sees status ok and fails
        except ProcessLookupError:
            pass
        for entry in os.listdir("/proc"):
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if b"pytest" in f.read():
                        return 1.0
            except OSError:
                continue
        raise LookupError("no host process visible")
    if case == "read_host":  # the dataset, the checkpoints, caches, Ray's session directory, a unix socket
        for path in targets_read:
            if os.path.exists(path):
                return 1.0
        sock = socket.socket(socket.AF_UNIX)
        try:
            sock.connect(unix_socket)
            return 1.0
        except OSError as exc:
            raise FileNotFoundError(f"nothing of the host visible ({exc})") from None
    if case == "nested_namespace":  # a new user namespace (then mounts, ...) or io_uring from inside
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.unshare(0x10000000) == 0 or libc.syscall(425, 8, ctypes.create_string_buffer(120)) >= 0:
            return 1.0
        raise PermissionError(f"denied: {os.strerror(ctypes.get_errno())}")
    if case == "sysv_shm":  # a SysV segment would outlive the call and the worker without an IPC namespace
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.shmget(0x5EED, 4096, 0o1666) < 0:  # IPC_CREAT | 0666
            raise OSError(ctypes.get_errno(), "shmget failed")
        raise RuntimeError("segment created")
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
    "segfault": ("error", "killed by SIGSEGV"),
    "memory": ("error", "MemoryError"),
    "fork_bomb": ("error", "process limit"),
    "write_outside": ("error", "Read-only file system"),
    "connect": ("error", "Network is unreachable"),
    "print_100mb": ("error", "file-size limit"),
    "forge_reply": ("error", "malformed result"),
    "host_processes": ("error", "no host process visible"),
    "read_host": ("error", "nothing of the host visible"),
    "nested_namespace": ("error", "denied: Operation not permitted"),
    "sysv_shm": ("error", "segment created"),
    "exit": ("error", "exit code 0"),
    "env_secret": ("error", "no planted secret visible"),
    "open_files": ("error", "open-file limit max_open_files=256"),
}


SETTLE_S = 10.0  # a SIGKILLed process is gone once scheduled; 10 s covers a loaded 2-core machine


def _settles(check, timeout_s: float = SETTLE_S) -> bool:
    """Whether `check()` holds within the time a killed process needs to be gone."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _process_picture(runner, own_children) -> tuple[list[int], list[int], list[tuple[int, str]]]:
    """What runs besides the workers: the test's descendants that are neither a worker nor its zygote, the
    zygotes' children (calls' processes), and processes of a sandbox uid that are not a zygote."""
    try:
        children = {p.pid for p in own_children() if p.status() != psutil.STATUS_ZOMBIE}
        # Listed after the children: a process listed there is still here, or gone, when the zygotes are listed.
        zygotes = {c.pid for w in runner.worker_pids for c in psutil.Process(w).children()}
        spares, calls = set(), []  # each zygote has the process for its next call ready, waiting
        for z in zygotes:
            kids = [c for c in psutil.Process(z).children() if c.status() != psutil.STATUS_ZOMBIE]
            ready = [c.pid for c in kids if c.name() == CALL_PROCESS_NAME][:1]
            spares |= set(ready)
            calls += [c.pid for c in kids if c.pid not in ready]
    except psutil.NoSuchProcess as exc:  # something exited while being read: read again
        return [exc.pid], [], []
    extra = sorted(children - set(runner.worker_pids) - zygotes - spares)
    leftovers = [(p.pid, p.name()) for p in _sandbox_processes(runner.spawned_pids)
                 if p.pid not in zygotes | spares]
    return extra, calls, leftovers


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
    """An open (0777) directory under /tmp and a root-owned one under /run (or the home dir), both hidden from the
    sandbox, and this package's directory, which it sees read-only (the last error is the one reported)."""
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    base = "/run" if os.access("/run", os.W_OK) else None
    closed_dir = tempfile.mkdtemp(prefix="reward-hostile-", dir=base)
    os.chmod(closed_dir, 0o755)
    package_dir = os.path.dirname(os.path.abspath(reward.__file__))  # shown inside the sandbox, read-only
    targets = [str(open_dir / "escape.txt"), os.path.join(closed_dir, "escape.txt"),
               os.path.join(package_dir, "escape.txt")]
    yield targets
    for path in targets[1:]:
        if os.path.exists(path):
            os.unlink(path)
    os.rmdir(closed_dir)


@pytest.mark.skipif(os.geteuid() != 0, reason="the full sandbox (own uid, namespaces) needs root")
def test_hostile_batch(tmp_path, listener, write_targets, own_children, monkeypatch):
    for name in SECRETS:  # in the runner's environment, as on a Ray actor; the workers must not see them
        monkeypatch.setenv(name, PLANTED)
    port = listener.getsockname()[1]
    dataset = tmp_path / "train.jsonl"
    dataset.write_text('{"prompt": "1+1", "answer": "2"}\n')
    unix_socket = tmp_path / "service.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(unix_socket))
    server.listen(1)
    package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    readable = [str(dataset), os.path.join(package_root, "pyproject.toml"), os.path.expanduser("~/.cache"),
                "/tmp/ray", os.path.join(package_root, "tests", "conftest.py")]  # beside this file, not it
    readable = [p for p in readable if os.path.exists(p)]  # each exists on the host; none may be seen inside
    rows = []
    for k, case in enumerate(EXPECTED):
        rows.append({"prompt": "p", "completion": str(k), "answer": str(k), "case": "good"})
        rows.append({"prompt": "p", "completion": "x", "answer": "x", "case": case, "port": port,
                     "targets": write_targets, "targets_read": readable, "unix_socket": str(unix_socket),
                     "host_pid": os.getpid()})
    quarantine = tmp_path / "quarantine.jsonl"
    runner = RewardRunner([SPEC], timeout_s=TIMEOUT_S, num_workers=6, quarantine_path=str(quarantine),
                          memory_limit_mb=512)
    try:
        assert runner.sandbox_level == "full"
        start = time.monotonic()
        results = runner.score(rows)
        elapsed = time.monotonic() - start
        # Each live worker is a relay and its sandbox's PID 1 (the zygote); no call's process is left. The
        # killed workers' sandboxes die asynchronously (SIGKILL, then the kernel tears the PID namespace down)
        # and a replacement forks its zygote while starting, so the picture is read until it settles.
        extra, calls_left, leftovers = _process_picture(runner, own_children)
        deadline = time.monotonic() + SETTLE_S
        while (extra or calls_left or leftovers) and time.monotonic() < deadline:
            time.sleep(0.1)
            extra, calls_left, leftovers = _process_picture(runner, own_children)
        assert not extra, f"the test process has children that are not workers: {extra}"
        assert not calls_left, f"a call's process is left: {calls_left}"
        assert elapsed < TIMEOUT_S + MARGIN_S, f"batch took {elapsed:.1f} s"
        assert not leftovers, f"processes left behind: {leftovers}"
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
        assert runner.worker_restarts == 3  # the 3 that timed out; a call that crashed took only its own process
        with open("/proc/sysvipc/shm") as f:
            assert not any(line.split()[0] == str(0x5EED) for line in f.readlines()[1:]), "a SysV segment escaped"
    finally:
        runner.close()
        server.close()
    assert _settles(lambda: not own_children()), own_children()
    assert _settles(lambda: not _sandbox_processes(runner.spawned_pids)), _sandbox_processes(runner.spawned_pids)


@pytest.mark.parametrize("level", ["full", "rlimits"])
def test_state_planted_by_one_call_does_not_reach_the_next(level):
    """Each call runs in a process forked from the worker's imported state: a patched builtin (issue 12: after
    one planted patch, honest wrong answers scored 1.0), a thread and a descriptor die with the call."""
    if level == "full" and os.geteuid() != 0:
        pytest.skip("the full sandbox needs root")
    rows = [{"prompt": "p", "completion": "x", "answer": "x", "case": "planted"},
            {"prompt": "p", "completion": "x", "answer": "x", "case": "plant"},
            {"prompt": "p", "completion": "wrong", "answer": "x", "case": "planted"},
            {"prompt": "p", "completion": "x", "answer": "x", "case": "planted"}]
    with RewardRunner([SPEC], timeout_s=TIMEOUT_S, num_workers=1, sandbox=level) as runner:
        before, planted, wrong, right = runner.score(rows)
        assert runner.worker_restarts == 0
    assert planted.status == "ok"  # its own result is whatever the patched float() says: a hostile call's own score
    assert (wrong.reward, right.reward) == (0.0, 1.0), (wrong, right)
    for later in (wrong, right):
        assert later.metrics["hostile/threads"] == before.metrics["hostile/threads"], later
        assert later.metrics["hostile/fds"] == before.metrics["hostile/fds"], later


def test_isolation_worker_shares_the_worker_process():
    """{isolation: worker} runs calls in the worker itself, faster, and then a planted patch does reach the
    next call (what the option gives up; docs/reward.md): the per-call default above is what stops it."""
    rows = [{"prompt": "p", "completion": "x", "answer": "x", "case": "plant"},
            {"prompt": "p", "completion": "wrong", "answer": "x", "case": "planted"}]
    with RewardRunner([{"fn": SPEC, "isolation": "worker"}], timeout_s=TIMEOUT_S, num_workers=1,
                      sandbox="rlimits") as runner:
        _, wrong = runner.score(rows)
    assert wrong.reward == 1.0, wrong


def test_without_sandbox_deadline_and_crash_isolation_still_hold(own_children):
    """sandbox=False (for functions that need the network) keeps deadlines and process isolation."""
    cases = ["good", "spin", "segfault", "raises", "good"]
    rows = [{"prompt": "p", "completion": "z", "answer": "z", "case": c} for c in cases]
    with RewardRunner([SPEC], timeout_s=TIMEOUT_S, num_workers=3, sandbox=False) as runner:
        assert runner.sandbox_level == "off"
        start = time.monotonic()
        results = runner.score(rows)
        elapsed = time.monotonic() - start
        # Besides the workers, only the process each keeps ready for its next call (a killed call's process
        # may take a moment to be gone).
        assert _settles(lambda: not _strays(runner, own_children)), _strays(runner, own_children)
    assert elapsed < TIMEOUT_S + MARGIN_S
    assert [r.status for r in results] == ["ok", "timeout", "error", "error", "ok"]
    assert _settles(lambda: not own_children()), own_children()


def _strays(runner, own_children) -> list[tuple[int, str]]:
    """The test's live descendants that are neither a worker nor the one process a worker keeps ready."""
    out, ready_seen = [], set()
    for p in own_children():
        try:
            if p.pid in runner.worker_pids or p.status() == psutil.STATUS_ZOMBIE:
                continue
            if p.name() == CALL_PROCESS_NAME and p.ppid() in runner.worker_pids and p.ppid() not in ready_seen:
                ready_seen.add(p.ppid())
                continue
            out.append((p.pid, p.name()))
        except psutil.NoSuchProcess:
            continue
    return out


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-v"]))


# ====================================================================================================
# The `code` verifier against reward hacks (issue: verdicts decided outside the interpreter that runs
# the candidate). Every hostile solution below leaves the task unsolved (f(1) should be 987654321) and
# must score 0; before the fix, the frame reader, both lying __eq__ and, in part, the forged line scored 1.
# ====================================================================================================

from reward import code as code_verifier  # noqa: E402  (this section is appended to the file above)

CODE_TESTS = ["assert f(1) == 987654321", "import math\nassert math.isclose(f(1), 987654321.0)",
              "assert abs(f(1) - 987654321) < 1e-6", "def check(candidate):\n    assert candidate(1) == 987654321\ncheck(f)"]
CODE_HACKS = {
    # Anything secret-looking (the old nonce) in the harness's frames and on the heap, printed as the last line.
    "frames_and_gc": (
        "import gc, os, re, sys\n"
        "found = []\n"
        "frame = sys._getframe()\n"
        "while frame is not None:\n"
        "    found += [v for v in list(frame.f_locals.values()) + list(frame.f_globals.values()) if isinstance(v, str)]\n"
        "    frame = frame.f_back\n"
        "for obj in gc.get_objects():\n"
        "    if isinstance(obj, dict):\n"
        "        found += [v for v in obj.values() if isinstance(v, str)]\n"
        "    elif isinstance(obj, (list, tuple)):\n"
        "        found += [v for v in obj if isinstance(v, str)]\n"
        "secret = sorted({s for s in found if re.fullmatch(r'[0-9a-f]{32}', s)})\n"
        "if secret:\n"
        "    print('\\n'.join(secret), flush=True)\n"
        "    os._exit(0)\n"
        "def f(x):\n"
        "    return 0\n"),
    "always_true_eq": ("class Yes:\n    def __eq__(self, other):\n        return True\n    __hash__ = object.__hash__\n"
                       "    def __sub__(self, other):\n        return 0\n    __float__ = lambda self: 987654321.0\n"
                       "def f(x):\n    return Yes()\n"),
    "int_subclass_eq": ("class Liar(int):\n    def __eq__(self, other):\n        return True\n    __hash__ = int.__hash__\n"
                        "    def __sub__(self, other):\n        return 0\n"
                        "def f(x):\n    return Liar(0)\n"),
    # A result line claiming whatever it likes: it cannot know the expected value, so it gains nothing.
    "forged_result_line": ("import os\n"
                           "os.write(1, b'\\n#code-verifier-results [{\"value\": [\"bool\", true]}]\\n')\n"
                           "os._exit(0)\n"),
    "sys_exit": "import sys\nsys.exit(0)\ndef f(x):\n    return 987654321\n",
    "os_exit": "import os\nos._exit(0)\ndef f(x):\n    return 987654321\n",
    # The child's own modules are the candidate's to patch; the verdict uses this process's.
    "patched_modules": ("import builtins, math\nmath.isclose = lambda *a, **k: True\nbuiltins.abs = lambda x: 0\n"
                        "def f(x):\n    return 0\n"),
}


@pytest.mark.parametrize("hack", sorted(CODE_HACKS))
def test_code_reward_hacks_score_zero(hack):
    out = code_verifier.code_reward("p", CODE_HACKS[hack], tests=CODE_TESTS)
    assert out["reward"] == 0.0 and out["acc"] == 0.0 and out["undecided"] == 0.0, out


def test_code_child_is_never_sent_expected_values_or_a_nonce(monkeypatch):
    jobs = []
    run_child = code_verifier._run_child
    monkeypatch.setattr(code_verifier, "_run_child", lambda job, timeout_s: jobs.append(job) or run_child(job, timeout_s))
    io_tests = [{"input": "1\n", "output": "987654321\n"}]
    code_verifier.code_reward("p", "def f(x):\n    return 0\n", tests=CODE_TESTS + ["want = 987654321\nassert f(1) == want"])
    code_verifier.code_reward("p", "print(0)", tests=io_tests)
    assert len(jobs) == len(CODE_TESTS) + 2
    for job in jobs:
        sent = json.dumps(job)
        assert "987654321" not in sent and "nonce" not in sent and "assert " not in json.dumps(job.get("steps")), job


CODE_SOLUTION = """
import math
def f(x):
    return x * 2
def nothing(x):
    return None
def pair(x):
    return [x, x + 1]
def area(r):
    return math.pi * r * r
def table(x):
    return {"a": x, (1, 2): {x}}
def noisy(x):
    print("debug", x)
    return x + 1
def sort_in_place(lst):
    lst.sort()
class Solution:
    def solve(self, n):
        return n + 1
"""
# (honest test, the same test with a wrong expected value)
CODE_FORMS = [
    ("assert f(1) == 2", "assert f(1) == 3"),
    ("assert abs(area(1) - 3.14159265) < 1e-6", "assert abs(area(1) - 3.1) < 1e-6"),
    ("import math\nassert math.isclose(area(2), 12.566, rel_tol=1e-3)", "import math\nassert math.isclose(area(2), 12.0)"),
    ("assert pair(1) == [1, 2] and tuple(pair(1)) == (1, 2)", "assert pair(1) == (1, 2)"),
    ("assert table(3) == {'a': 3, (1, 2): {3}}", "assert table(3) == {'a': 3, (1, 2): {4}}"),
    ("assert nothing(1) is None", "assert nothing(1) is not None"),
    ("assert not nothing(1)", "assert nothing(1)"),
    ("assert f(2) in (3, 4)", "assert f(2) in (3, 5)"),
    ("assert f(1) == 2\nassert f(2) == 4\nassert pair(0)[1] == 1", "assert f(1) == 2\nassert f(2) == 5"),
    ("assert noisy(1) == 2", "assert noisy(1) == 1"),
    ("def check(candidate):\n    assert candidate(1) == 2\n    assert candidate(3) == 6, 'msg'\n\ncheck(f)",
     "def check(candidate):\n    assert candidate(1) == 2\n    assert candidate(3) == 7\n\ncheck(f)"),
    ("lst = [3, 1, 2]\nsort_in_place(lst)\nassert lst == [1, 2, 3]", "lst = [3, 1, 2]\nsort_in_place(lst)\nassert lst == [3, 1, 2]"),
    ("assert Solution().solve(3) == 4", "assert Solution().solve(3) == 3"),
    ("res = f(3)\nassert res == 6", "res = f(3)\nassert res == 7"),
]


@pytest.mark.parametrize("honest, wrong", CODE_FORMS)
def test_code_honest_forms_pass_and_wrong_ones_fail(honest, wrong):
    assert code_verifier.code_reward("p", CODE_SOLUTION, tests=[honest]) == {
        "reward": 1.0, "acc": 1.0, "passed": 1.0, "num_tests": 1.0, "undecided": 0.0}
    assert code_verifier.code_reward("p", CODE_SOLUTION, tests=[wrong])["reward"] == 0.0


@pytest.mark.skipif(os.geteuid() != 0, reason="the full sandbox (own uid, namespaces) needs root")
def test_code_hacks_score_zero_inside_a_reward_runner():
    """The same, through the real path: `code` in a worker, its children nested in the worker's sandbox."""
    rows = [{"prompt": "p", "completion": CODE_HACKS[h], "tests": CODE_TESTS} for h in sorted(CODE_HACKS)]
    rows.append({"prompt": "p", "completion": "def f(x):\n    return 987654321\n", "tests": CODE_TESTS})
    with RewardRunner(["code"], timeout_s=20.0, num_workers=2) as runner:
        results = runner.score(rows)
    assert [r.status for r in results] == ["ok"] * len(rows), results
    assert [r.reward for r in results] == [0.0] * len(CODE_HACKS) + [1.0], results


READ_DATASET = """
import glob, json, os, sys
# An unsolved task; instead of solving it, find the dataset file with the expected outputs and print them.
for path in [DATASET] + glob.glob("/tmp/**/*.jsonl", recursive=True) + glob.glob(os.path.expanduser("~/**/*.jsonl")):
    try:
        with open(path) as f:
            row = json.loads(f.readline())
    except OSError:
        continue
    stdin = sys.stdin.read()
    for case in row["tests"]:
        if case["input"] == stdin:
            print(case["output"], end="")
            sys.exit(0)
print("nothing found")
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="the full sandbox (own uid, namespaces) needs root")
def test_code_io_expected_outputs_cannot_be_read_from_the_dataset(tmp_path):
    """io tests: the expected output never goes to the child, and the dataset file holding it is not in the
    sandbox's filesystem view (issue 12's third hack scored 1.0 by printing it)."""
    tests = [{"input": "3\n", "output": "a secret 91\n"}, {"input": "4\n", "output": "another 17\n"}]
    dataset = tmp_path / "train.jsonl"
    dataset.write_text(json.dumps({"prompt": "p", "tests": tests}) + "\n")
    hack = f"DATASET = {str(dataset)!r}\n" + READ_DATASET
    with open(dataset) as f:  # on the host the hack works: it finds the file and prints the outputs
        assert json.loads(f.readline())["tests"] == tests
    with RewardRunner(["code"], timeout_s=20.0, num_workers=1) as runner:
        [hacked, solved] = runner.score([
            {"prompt": "p", "completion": hack, "tests": tests},
            {"prompt": "p", "completion": "x = int(input())\nprint({3: 'a secret 91', 4: 'another 17'}[x])",
             "tests": tests},
        ])
    assert (hacked.status, hacked.reward) == ("ok", 0.0), hacked
    assert (solved.status, solved.reward) == ("ok", 1.0), solved
