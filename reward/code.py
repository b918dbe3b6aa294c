"""Built-in `code` verifier: run the completion's Python against the row's tests in a sandbox.

The program is the last ```python fenced block of the completion (the whole completion if it
has none). Each test runs in its own one-shot child (reward/code_child.py run as a script) with
rlimits, a wall-clock limit and capped output; the reward is the fraction of tests passed.
Inside a RewardRunner worker the child nests in the worker's sandbox (no network, the worker's
private /tmp and uid); called anywhere else it builds its own (see reward/sandbox.py), the
strongest the OS allows. `code` requires level REQUIRED_SANDBOX (`userns`) or better: a runner
configured below it refuses to start, and a call outside a sandbox that cannot build one raises
SandboxUnavailable rather than run model-written code with the network and the runner's files
in reach. The row's `tests` column is one of:

    ["assert add(1, 2) == 3", ...]                 assert tests, each a snippet of Python (see below)
    [{"input": "1 2\\n", "output": "3\\n"}, ...]     stdin/stdout pairs (whitespace at line ends ignored)
    {"inputs": [...], "outputs": [...]}            the same pairs, APPS/CodeContests style
    or a JSON string of any of these.

Verdicts are decided in this process, never in the child that runs the candidate. A stdin/stdout
pair's child gets the input only; its output is compared here. An assert test is split by
reward/code_asserts.py: the child gets the program and the test's candidate-dependent
sub-expressions ("probes", e.g. `add(1, 2)`), evaluates them and prints their values in a strict
encoding of exact builtin types (code_child.encode_result); the asserts, with their expected values,
are evaluated here on the decoded values. So a lying `__eq__`, reading the harness's frames or
printing a forged result line gains nothing, and `sys.exit(0)` at the top of a solution leaves no
result: the test fails. An assert test may hold imports, assignments, expression statements,
asserts, functions and classes that do not call the candidate, and HumanEval's `def
check(candidate): ...` + `check(name)`; one that cannot be split (a loop, say) fails and is counted
in the `undecided` metric, with its reason logged once.
"""

from __future__ import annotations

import json
import logging
import os
import re
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

from reward import code_child, sandbox
from reward.code_asserts import AssertPlan, UndecidableTest, decide, decode_results, plan_assert_test
from reward.types import time_left

TEST_TIMEOUT_S = 2.0
"""Wall-clock limit of one test; all tests together also stop before the call's deadline."""
OUTPUT_CAP_BYTES = 1 << 20
"""A test's stdout beyond this fails the test (the child is killed)."""
CHILD_LIMITS = sandbox.Limits(memory_mb=1024, file_size_mb=16, max_processes=16, tmpfs_mb=64, max_open_files=64)
REQUIRED_SANDBOX = "userns"
"""The weakest level `code` runs at: no network, private temporary directories (`full` adds a uid of its own).
Not `full`, so that non-root users with unprivileged user namespaces can run it; not `rlimits`, where
model-written code could reach the network and every temporary directory."""
_PROBE: dict[str, str] = {}
"""Outside a sandbox: "" once a child confined itself, or the refusal (checked once per process; keyed by
sandbox.TEST_DENY_ENV, which tests set)."""

_WARNED: set[str] = set()
"""Reasons already logged in this process (bounded: a dataset of broken tests logs a thousand, not a million)."""
log = logging.getLogger("reward")

_FENCE_RE = re.compile(r"```[ \t]*([\w+-]*)[ \t]*\n(.*?)```", re.DOTALL)


def extract_code(completion: str) -> str:
    """The last python (or unlabelled) fenced block; the whole completion when there is none.

    >>> extract_code("Here:\\n```python\\nprint(1)\\n```\\nand\\n```python\\nprint(2)\\n```")
    'print(2)\\n'
    >>> extract_code("x = 1")
    'x = 1'
    """
    blocks = [body for lang, body in _FENCE_RE.findall(completion) if lang.lower() in ("", "python", "py", "python3")]
    return blocks[-1] if blocks else completion


def parse_tests(tests: Any) -> list[dict[str, str]]:
    """Normalise the `tests` column to [{"test": ...} | {"input": ..., "output": ...}]."""
    if isinstance(tests, str):
        try:
            tests = json.loads(tests)
        except ValueError:
            tests = [tests]
    if isinstance(tests, dict) and "inputs" in tests and "outputs" in tests:
        tests = [{"input": i, "output": o} for i, o in zip(tests["inputs"], tests["outputs"])]
    if isinstance(tests, str):
        tests = [tests]
    if not isinstance(tests, list) or not tests:
        raise ValueError(f"`tests` must be a non-empty list of assert strings or input/output pairs, got {tests!r:.200}")
    out = []
    for t in tests:
        if isinstance(t, str):
            out.append({"test": t})
        elif isinstance(t, dict) and "input" in t and "output" in t:
            out.append({"input": str(t["input"]), "output": str(t["output"])})
        else:
            raise ValueError(f"cannot read test {t!r:.200}: expected an assert string or {{'input', 'output'}}")
    return out


def code_reward(prompt: str, completion: str, *, tests: Any, **sample: Any) -> dict[str, float]:
    """Fraction of the row's tests that the completion's program passes; `acc` is 1.0 only when every
    test passes (a task is solved or it is not: partial credit shapes the reward, never the accuracy).
    `undecided` counts assert tests that reward/code_asserts.py cannot split into probes and a verdict
    (a loop, say): they fail, and the first time a reason comes up it is logged as a warning.

    >>> code_reward("Write add.", "```python\\ndef add(a, b):\\n    return a + b\\n```",
    ...             tests=["assert add(1, 2) == 3", "assert add(2, 2) == 5"])
    {'reward': 0.5, 'acc': 0.0, 'passed': 1.0, 'num_tests': 2.0, 'undecided': 0.0}
    >>> code_reward("Echo the sum.", "print(sum(map(int, input().split())))",
    ...             tests=[{"input": "1 2\\n", "output": "3\\n"}])
    {'reward': 1.0, 'acc': 1.0, 'passed': 1.0, 'num_tests': 1.0, 'undecided': 0.0}
    >>> code_reward("Cheat.", "import sys; sys.exit(0)", tests=["assert False"])["reward"]
    0.0
    >>> code_reward("Lie.", "class Yes:\\n    def __eq__(self, other):\\n        return True\\nf = lambda: Yes()",
    ...             tests=["assert f() == 42"])["reward"]
    0.0
    """
    cases = parse_tests(tests)
    program = extract_code(completion)
    _ensure_sandbox()
    end = time.monotonic() + time_left(default=len(cases) * TEST_TIMEOUT_S + 1.0) - 0.5
    passed = undecided = 0
    for case in cases:
        budget = min(TEST_TIMEOUT_S, end - time.monotonic())
        if budget <= 0.05:
            break  # out of time: the remaining tests count as failed, not as a timeout
        if "test" in case:
            try:
                plan = plan_assert_test(case["test"], program)
            except UndecidableTest as exc:
                undecided += 1
                _warn_once(str(exc))
                continue
            passed += _run_assert_case(program, plan, budget)
        else:
            passed += _run_io_case(program, case, budget)
    return {"reward": passed / len(cases), "acc": float(passed == len(cases)), "passed": float(passed),
            "num_tests": float(len(cases)), "undecided": float(undecided)}


code_reward.required_sandbox = REQUIRED_SANDBOX  # type: ignore[attr-defined]  # read by RewardRunner


def _child_env() -> dict[str, str]:
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
    for name in (sandbox.ENV_LEVEL, sandbox.TEST_DENY_ENV):
        if name in os.environ:
            env[name] = os.environ[name]
    return env


def _ensure_sandbox() -> None:
    """Outside a worker's namespaces, check once that a child can confine itself at REQUIRED_SANDBOX.

    A probe child, not the test children: a solution that exits with REFUSED_RC must fail its test, not
    turn into an error (errors are masked out of training)."""
    if sandbox.inside_sandbox():
        return
    key = os.environ.get(sandbox.TEST_DENY_ENV, "")
    if key not in _PROBE:
        workdir = tempfile.mkdtemp(prefix="code-probe-")
        job = {"limits": dict(vars(CHILD_LIMITS), cpu_s=10), "workdir": workdir, "level": REQUIRED_SANDBOX}
        try:
            proc = subprocess.run([sys.executable, "-I", code_child.__file__], input=json.dumps(job).encode(),
                                  capture_output=True, env=_child_env(), cwd=workdir, timeout=30)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        lines = proc.stderr.decode(errors="replace").strip().splitlines()
        _PROBE[key] = "" if proc.returncode == 0 else (lines[-1] if lines else f"exit status {proc.returncode}")
    if _PROBE[key]:
        raise sandbox.SandboxUnavailable(f"code verifier: {_PROBE[key]}")


def _run_assert_case(program: str, plan: AssertPlan, timeout_s: float) -> bool:
    """The child evaluates the probes; this process decides the asserts on the values it sends back."""
    out = _run_child({"mode": "assert", "solution": program, "steps": list(plan.child_steps)}, timeout_s)
    results = None if out is None else decode_results(out, plan.num_probes)
    return results is not None and decide(plan, results)


def _run_io_case(program: str, case: dict[str, str], timeout_s: float) -> bool:
    """The child gets the input only; the expected output is compared here."""
    out = _run_child({"mode": "io", "solution": program, "input": case["input"]}, timeout_s)
    return out is not None and _normalize(out.decode(errors="replace")) == _normalize(case["output"])


def _run_child(job: dict[str, Any], timeout_s: float) -> bytes | None:
    """The child's stdout, or None when it failed, timed out or went over the output cap."""
    workdir = tempfile.mkdtemp(prefix="code-")
    limits = dict(vars(CHILD_LIMITS), cpu_s=timeout_s + 1)
    job = {"limits": limits, "workdir": workdir, "level": REQUIRED_SANDBOX, **job}
    try:
        argv = [sys.executable, "-I", code_child.__file__]
        rc, out, timed_out = run_capped(argv, json.dumps(job).encode(), timeout_s, OUTPUT_CAP_BYTES, _child_env(), workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return None if rc != 0 or timed_out else out


def _warn_once(reason: str) -> None:
    if reason not in _WARNED and len(_WARNED) < 1000:
        _WARNED.add(reason)
        log.warning("code verifier: an assert test counts as failed (undecided): %s", reason)


def _normalize(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.strip().splitlines())


def run_capped(
    argv: list[str], stdin: bytes, timeout_s: float, cap_bytes: int, env: dict[str, str], cwd: str
) -> tuple[int | None, bytes, bool]:
    """Run argv with `stdin`, a wall-clock limit and at most `cap_bytes` of stdout kept.

    Returns (returncode, stdout, timed_out); the returncode is None when the output went over
    the cap. The child's whole process group is killed on return, and so is its sandbox uid.
    """
    proc = subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        env=env, cwd=cwd, start_new_session=True,
    )
    out, pending, timed_out, over = bytearray(), memoryview(stdin), False, False
    deadline = time.monotonic() + timeout_s
    assert proc.stdin is not None and proc.stdout is not None
    # The pidfd turns readable when the child exits: stop there, even if a process it forked
    # still holds stdout open.
    exited = os.pidfd_open(proc.pid)
    sel = selectors.DefaultSelector()
    os.set_blocking(proc.stdin.fileno(), False)
    os.set_blocking(proc.stdout.fileno(), False)
    sel.register(exited, selectors.EVENT_READ)
    sel.register(proc.stdout, selectors.EVENT_READ)
    sel.register(proc.stdin, selectors.EVENT_WRITE)
    try:
        done = False
        while not done and not over:
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                break
            for key, _ in sel.select(left):
                if key.fileobj is proc.stdin:
                    try:
                        pending = pending[os.write(proc.stdin.fileno(), pending[:65536]):]
                    except BrokenPipeError:
                        pending = pending[:0]
                    if not pending:
                        sel.unregister(proc.stdin)
                        proc.stdin.close()
                else:
                    over = _drain(proc.stdout.fileno(), out, cap_bytes, sel, proc.stdout)
                    done = key.fileobj is exited
                if over:
                    break
        if done:
            proc.wait()
    finally:
        sel.close()
        os.close(exited)
        _kill_child(proc)
    return (None if over else proc.returncode), bytes(out[:cap_bytes]), timed_out


def _drain(fd: int, out: bytearray, cap_bytes: int, sel: selectors.BaseSelector, fileobj: Any) -> bool:
    """Read what is there without blocking; True once the output is over the cap."""
    while len(out) <= cap_bytes:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return False
        if not chunk:  # EOF: nothing more will come
            try:
                sel.unregister(fileobj)
            except KeyError:
                pass
            return False
        out += chunk
    return True


def _kill_child(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
    for f in (proc.stdin, proc.stdout):
        if f is not None and not f.closed:
            f.close()
    if os.geteuid() == 0 and not sandbox.inside_sandbox():
        # The child confined itself as its own uid: kill what escaped its process group. (Inside
        # a worker's sandbox the worker kills every leftover of its uid after the call.)
        sandbox.kill_uid(sandbox.SANDBOX_UID_BASE + proc.pid)
