"""Parent side of the reward worker pool: spawn, dispatch, enforce deadlines, kill, replace.

`WorkerPool.run(tasks, timeout_s)` hands (fn index, row) calls to `num_workers` worker
processes (reward/pool_worker.py), one call per worker at a time, and waits on all their pipes
with one selector. The per-call deadline is kept here, outside the worker: when a call runs
past it, the worker's process group is SIGKILLed, then every process of its sandbox uid (what
it forked, even after setsid), and a fresh worker is started in the background. A worker that
dies or sends a malformed reply is replaced the same way. So a function that spins, sleeps,
blocks in C, ignores signals or segfaults costs one deadline and one respawn, never the batch.

Writes to a worker go through the same selector: the parent's write ends are non-blocking and a
frame (a row can be far larger than the 64 KiB pipe buffer) is sent as the worker reads it. A
worker that stops reading (stopped, or wedged) therefore costs its call's deadline, or its
startup timeout for the config frame, like one that stops answering; a blocking write would
hang the batch.

A worker that fails to start (its functions fail to import, no hello in time, it exits) is
retried after a backoff of START_RETRY_S, doubling with each failure in a row up to
START_RETRY_MAX_S; a successful start resets it. While no worker is up and the backoff runs, the
calls of a batch fail at once with the last start error rather than wait; a later batch past
the backoff tries again, so a transient cause (a file briefly missing, memory pressure) heals.

Workers run at the pool's sandbox level exactly (reward/sandbox.py), or not at all: one that cannot
reach it fails its start with the one-line refusal. Their environment is an allowlist
(`worker_env`), not the parent's: secrets in the actor's environment (Ray tokens, WANDB_API_KEY,
HF_TOKEN, AWS_*) never reach a reward function unless its entry names them in `env`.
"""

from __future__ import annotations

import itertools
import logging
import os
import pickle
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from reward import cgroup, sandbox
from reward.protocol import ProtocolError, decode_reply, frame, pop_frame
from reward.types import CallOutcome

log = logging.getLogger("reward")
_group_ids = itertools.count()
"""Numbers the cgroups this process makes (with its pid: unique on the host)."""
_logged_notes: set[str] = set()  # what a level does not give is logged once per process
START_RETRY_S = 0.5
"""Wait after a failed worker start before the next; it doubles with each failure in a row."""
START_RETRY_MAX_S = 30.0
"""Longest wait between worker start attempts."""


class RewardWorkerError(RuntimeError):
    """Reward worker processes cannot be started."""


@dataclass
class _Worker:
    proc: subprocess.Popen[bytes]
    rfd: int
    wfd: int
    dump_fd: int
    """Read end of the pipe where the worker's faulthandler writes its stacks on SIGUSR1."""
    workdir: str
    deadline: float
    state: str = "starting"  # starting | idle | busy | dead
    timeout_s: float = 0.0
    """Deadline of the call it is on (seconds)."""
    task: int | None = None
    buf: bytearray = field(default_factory=bytearray)
    out: memoryview = field(default_factory=lambda: memoryview(b""))
    """What is left to write of the frame being sent (the write end is non-blocking)."""
    start_error: str | None = None
    group: cgroup.Group | None = None
    """Its control group (memory and process limits on its whole sandbox), where the host has one."""
    oom_seen: int = 0
    """The group's memory-limit kills already reported."""


class WorkerPool:
    def __init__(
        self, specs: list[dict[str, Any]], *, num_workers: int, limits: sandbox.Limits,
        level: str = "full", env: Sequence[str] = (), startup_timeout_s: float = 60.0,
        cgroup_mode: str = "auto", kind: str = "reward",
    ) -> None:
        """`level`: the sandbox level every worker must reach (see reward/sandbox.py); `env`: names of
        variables of this process passed to the workers besides the allowlist (a judge's API key);
        `cgroup_mode`: reward/cgroup.py's MODES (required raises CgroupUnavailable here if there is none);
        `kind`: "reward" (specs are reward functions) or "tool" (specs are rollout.tools specs, each called with
        the call's arguments; an outcome's `text` is what it returned)."""
        if kind not in ("reward", "tool"):
            raise ValueError(f"WorkerPool: kind={kind!r}; use 'reward' or 'tool'")
        self._level = sandbox.normalize_level(level)
        self._cgroup_parent, why = cgroup.find(cgroup_mode)
        self._limits = limits
        self.limits_note = (
            f"{why}: memory_limit_mb={limits.memory_mb} and max_processes={limits.max_processes} hold for each "
            "worker's processes together" if self._cgroup_parent is not None else
            f"per-process rlimits only ({why}): memory_limit_mb and max_processes hold for each process, so a "
            "function that forks can hold a multiple of them")
        """How the memory and process limits are enforced here (logged at start)."""
        self._config = {"specs": specs, "limits": limits, "sandbox": self._level, "parent_pid": os.getpid(),
                        "kind": kind}
        self._num_workers = num_workers
        self._startup_timeout_s = startup_timeout_s
        self._sel = selectors.DefaultSelector()
        self._workers: list[_Worker] = []
        self._last_start_error = ""
        self._retry_s = START_RETRY_S
        """Backoff that the next failed start sets."""
        self._next_start = 0.0
        """No worker is spawned before this time.monotonic() (set by a failed start)."""
        self._timeouts: float | Sequence[float] = 0.0
        self.level: str | None = None
        """Sandbox level of the running workers ("full", "userns", "rlimits", "off"): the pool's, once one started."""
        self.restarts = 0
        """Workers started to replace one that timed out, crashed, broke the protocol or failed to start."""
        self.start_failures = 0
        """Worker starts that failed (each is retried after the backoff)."""
        self.spawned_pids: list[int] = []
        """Every worker pid this pool started (for audits: the sandbox uid of each is base + pid)."""
        self._env_names = tuple(env)

    def start(self) -> None:
        """Start all workers and wait until each has imported its functions and is confined."""
        for _ in range(self._num_workers):
            self._spawn()
        while any(w.state == "starting" for w in self._workers):
            self._poll(None)
        failed = [w.start_error for w in self._workers if w.start_error]
        if failed:
            self.close()
            raise RewardWorkerError(f"reward worker failed to start:\n{failed[0]}")

    def run(self, tasks: list[tuple[int, dict[str, Any]]], timeout_s: float | Sequence[float]) -> list[CallOutcome]:
        """Run every (fn index, row) call; outcome i belongs to task i. `timeout_s` is one deadline for
        every call or one per function (indexed by fn index)."""
        self._timeouts = timeout_s
        for w in self._workers:
            if w.state == "busy":  # still on a call of an interrupted earlier batch
                self._kill(w)
        outcomes: list[CallOutcome | None] = [None] * len(tasks)
        queue = deque(range(len(tasks)))
        while queue or any(w.state == "busy" for w in self._workers):
            self._replace_dead()
            for w in self._workers:
                if queue and w.state == "idle":
                    self._dispatch(w, queue.popleft(), tasks, outcomes)
            wait = self._next_start - time.monotonic()
            if queue and wait > 0 and all(w.state == "dead" for w in self._workers):
                error = (f"no reward worker could be started; the first batch in {wait:.1f} s or later "
                         f"tries again; last start error: {self._last_start_error}")
                for i in queue:  # nothing can run them before the backoff ends: fail fast rather than hang
                    outcomes[i] = CallOutcome("error", error=error)
                queue.clear()
            self._poll(outcomes)
        return [o if o is not None else CallOutcome("error", error="lost call") for o in outcomes]

    @property
    def live_pids(self) -> list[int]:
        return [w.proc.pid for w in self._workers if w.state != "dead"]

    def close(self) -> None:
        for w in self._workers:
            if w.state != "dead":
                self._kill(w)
        self._workers.clear()
        self._sel.close()

    # -- internals ----------------------------------------------------------------------

    def _spawn(self) -> None:
        p_read, c_write = os.pipe()
        c_read, p_write = os.pipe()
        dump_read, dump_write = os.pipe()
        workdir = tempfile.mkdtemp(prefix="reward-worker-")
        group = None
        if self._cgroup_parent is not None:
            try:
                group = self._cgroup_parent.create(
                    f"{cgroup.PREFIX}{os.getpid()}-{next(_group_ids)}", memory_mb=self._limits.memory_mb,
                    max_processes=self._limits.max_processes)
            except OSError as exc:  # e.g. the delegated subtree is full: this worker runs on its rlimits
                log.warning("reward worker: no cgroup (%s); its limits are per process", exc)
        fds = (c_read, c_write, dump_write)
        proc = subprocess.Popen(
            [sys.executable, "-m", "reward.pool_worker", *map(str, fds)],
            pass_fds=fds, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            env=worker_env(workdir, self._env_names), start_new_session=True,
            cwd=workdir,  # `-m` puts the cwd first on sys.path: a user's reward.py there would shadow `reward`
        )
        self.spawned_pids.append(proc.pid)
        for fd in fds:
            os.close(fd)
        for fd in (p_read, p_write, dump_read):
            os.set_blocking(fd, False)
        w = _Worker(proc, p_read, p_write, dump_read, workdir, time.monotonic() + self._startup_timeout_s,
                    group=group)
        self._workers.append(w)
        self._sel.register(p_read, selectors.EVENT_READ, w)
        if group is not None:
            try:  # before the configuration is sent: until then the worker waits for it, running nothing of ours
                group.add(proc.pid)
            except OSError as exc:
                self._start_failed(w, f"could not move the worker into its cgroup: {exc}")
                return
        self._send(w, pickle.dumps(dict(self._config, workdir=workdir)), None)

    def _replace_dead(self) -> None:
        """Start a worker in place of each dead one, unless starts are failing and the backoff runs."""
        self._workers = [w for w in self._workers if w.state != "dead"]
        if time.monotonic() < self._next_start:
            return
        while len(self._workers) < self._num_workers:
            self._spawn()
            self.restarts += 1

    def _dispatch(self, w: _Worker, i: int, tasks: list[tuple[int, dict[str, Any]]],
                  outcomes: list[CallOutcome | None]) -> None:
        fn_index, row = tasks[i]
        timeout_s = self._timeouts if isinstance(self._timeouts, (int, float)) else self._timeouts[fn_index]
        try:
            message = pickle.dumps({"id": i, "fn": fn_index, "row": row, "timeout_s": timeout_s})
        except Exception as exc:  # noqa: BLE001 - an unpicklable row fails its own calls only
            outcomes[i] = CallOutcome("error", error=f"row cannot be sent to a worker: {type(exc).__name__}: {exc}")
            return
        w.state, w.task, w.deadline, w.timeout_s = "busy", i, time.monotonic() + timeout_s, timeout_s
        self._send(w, message, outcomes)

    def _send(self, w: _Worker, payload: bytes, outcomes: list[CallOutcome | None] | None) -> None:
        w.out = memoryview(frame(payload))
        self._on_writable(w, outcomes)

    def _on_writable(self, w: _Worker, outcomes: list[CallOutcome | None] | None) -> None:
        """Write what the pipe takes now; while some is left, the selector says when it takes more."""
        try:
            w.out = w.out[os.write(w.wfd, w.out):]
        except BlockingIOError:
            pass
        except OSError:  # EPIPE: its read end is closed, so it is exiting
            if w.state == "starting":
                self._start_failed(w, f"worker process exited during startup ({self._exit_text(w)})")
            else:
                self._fail(w, outcomes, "error", f"worker process died before the call ({self._exit_text(w)})")
            return
        waiting = w.wfd in self._sel.get_map()
        if w.out and not waiting:
            self._sel.register(w.wfd, selectors.EVENT_WRITE, w)
        elif not w.out and waiting:
            self._sel.unregister(w.wfd)

    def _poll(self, outcomes: list[CallOutcome | None] | None) -> None:
        """Wait for replies (and pipes that take more of a frame) until the nearest deadline, then
        enforce the deadlines that passed."""
        live = [w for w in self._workers if w.state in ("busy", "starting")]
        wait = max(0.0, min(w.deadline for w in live) - time.monotonic()) if live else 0.0
        for key, _ in self._sel.select(wait):
            w = key.data
            if w.state == "dead":
                continue  # killed while handling its other pipe's event of this round
            if key.fd == w.wfd:
                self._on_writable(w, outcomes)
            else:
                self._on_readable(w, outcomes)
        now = time.monotonic()
        expired = [w for w in self._workers if w.state == "busy" and now >= w.deadline]
        stacks = self._dump_stacks(expired)
        for w, stack in zip(expired, stacks):
            if w.out:
                error = (f"call could not be sent within the {w.timeout_s:g} s deadline (its worker "
                         "stopped reading); its worker was killed")
            else:
                error = f"call ran past the {w.timeout_s:g} s deadline; its worker was killed"
            self._fail(w, outcomes, "timeout", error, f"{error}\n--- stacks at the deadline ---\n{stack}")
        for w in self._workers:
            if w.state == "starting" and now >= w.deadline:
                self._start_failed(w, f"no hello within {self._startup_timeout_s:.0f} s")

    def _dump_stacks(self, workers: list[_Worker]) -> list[str]:
        """Where each timed-out call was stuck: faulthandler answers SIGUSR1 from C, even
        while the main thread spins or sits in a C call with signals blocked (a watchdog thread takes it)."""
        if not workers:
            return []
        for w in workers:
            try:
                os.kill(w.proc.pid, signal.SIGUSR1)
            except ProcessLookupError:
                pass
        time.sleep(0.1)
        stacks = []
        for w in workers:
            try:
                stacks.append(os.read(w.dump_fd, 1 << 16).decode(errors="replace"))
            except BlockingIOError:
                stacks.append("(no stack: the worker did not answer SIGUSR1)")
        return stacks

    def _on_readable(self, w: _Worker, outcomes: list[CallOutcome | None] | None) -> None:
        try:
            chunk = os.read(w.rfd, 1 << 20)
        except BlockingIOError:
            return
        if not chunk:
            self._on_exit(w, outcomes)
            return
        w.buf += chunk
        try:
            while (body := pop_frame(w.buf)) is not None and w.state != "dead":
                self._on_reply(w, decode_reply(body), outcomes)
        except ProtocolError as exc:
            self._fail(w, outcomes, "error", f"worker sent a malformed reply ({exc}); it was replaced")

    def _on_reply(self, w: _Worker, reply: dict[str, Any], outcomes: list[CallOutcome | None] | None) -> None:
        if reply["type"] == "hello" and w.state == "starting":
            if not reply.get("ok"):
                self._start_failed(w, str(reply.get("error")))
                return
            if reply.get("level") != self._level:  # cannot happen with reward/pool_worker.py: never run below it
                self._start_failed(w, f"worker reports sandbox level {reply.get('level')!r}, not {self._level!r}")
                return
            w.state, self._retry_s, self._next_start = "idle", START_RETRY_S, 0.0
            self.level = self._level
            for note in reply.get("notes") or []:
                if note not in _logged_notes:
                    _logged_notes.add(note)
                    log.info("reward sandbox level %s: %s", self.level, note)  # the configured level: no warning
            return
        if reply["type"] != "result" or w.state != "busy" or w.out or reply["id"] != w.task or outcomes is None:
            raise ProtocolError("unexpected message")
        if reply["status"] == "ok" and ("text" in reply) != (self._config["kind"] == "tool"):
            raise ProtocolError("a result of the wrong kind (a reward for a tool call, or a tool's text for a reward)")
        if reply["status"] == "ok" and "text" in reply:
            outcomes[w.task] = CallOutcome("ok", text=reply["text"])
        elif reply["status"] == "ok":
            metrics = {k: float(v) for k, v in reply["metrics"].items()}
            outcomes[w.task] = CallOutcome("ok", float(reply["reward"]), metrics, reply.get("stratum"))
        else:
            error = reply["error"] + self._oom_text(w)
            outcomes[w.task] = CallOutcome("error", error=error, traceback=reply["traceback"])
        w.state, w.task = "idle", None
        if reply.get("retire") is True:  # it could not clean up after the call (e.g. no descriptor left)
            self._kill(w)

    def _on_exit(self, w: _Worker, outcomes: list[CallOutcome | None] | None) -> None:
        if w.state == "starting":
            self._start_failed(w, f"worker process exited during startup ({self._exit_text(w)})")
        else:
            self._fail(w, outcomes, "error", f"worker process died during the call ({self._exit_text(w)})")

    def _oom_text(self, w: _Worker) -> str:
        """What to add to a failed call's error when its group's memory limit killed a process meanwhile."""
        if w.group is None:
            return ""
        kills = w.group.oom_kills()
        if kills <= w.oom_seen:
            return ""
        w.oom_seen = kills
        return (f" (the kernel killed a process at the worker's cgroup memory limit, memory_limit_mb="
                f"{self._limits.memory_mb} for all of its processes together)")

    def _fail(self, w: _Worker, outcomes: list[CallOutcome | None] | None, status: str, error: str,
              traceback: str | None = None) -> None:
        if status == "error":
            error += self._oom_text(w)
        if w.state == "busy" and w.task is not None and outcomes is not None:
            outcomes[w.task] = CallOutcome(status, error=error, traceback=traceback or error)  # type: ignore[arg-type]
        self._kill(w)

    def _start_failed(self, w: _Worker, error: str) -> None:
        w.start_error = self._last_start_error = error
        self.start_failures += 1
        self._next_start = time.monotonic() + self._retry_s
        log.warning("reward worker failed to start (%d so far; next try in %.1f s at the earliest): %s",
                    self.start_failures, self._retry_s, error)
        self._retry_s = min(2 * self._retry_s, START_RETRY_MAX_S)
        self._kill(w)

    def _exit_text(self, w: _Worker) -> str:
        try:
            code = w.proc.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            return "still running"
        if code < 0:
            return f"killed by {signal.Signals(-code).name}"
        return f"exit code {code}"

    def _kill(self, w: _Worker) -> None:
        """SIGKILL the worker, everything it started, and clean up after it."""
        pid = w.proc.pid
        if w.group is not None:  # everything the sandbox started, wherever it went (setsid, double fork)
            w.group.kill()
        else:  # without a group: its process group, its sandbox uid, and the tree as it is now
            strays = sandbox.descendants(pid) if self.level != "full" else []
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            if os.geteuid() == 0 and self._level == "full":
                sandbox.kill_uid(sandbox.SANDBOX_UID_BASE + pid)  # escaped the group (setsid) or not
            for p in strays:
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        w.proc.wait()
        if w.group is not None:
            w.group.remove()
            w.group = None
        self._sel.unregister(w.rfd)
        if w.wfd in self._sel.get_map():
            self._sel.unregister(w.wfd)
        for fd in (w.rfd, w.wfd, w.dump_fd):
            os.close(fd)
        shutil.rmtree(w.workdir, ignore_errors=True)
        w.state = "dead"


ENV_ALLOWLIST = ("PATH", "LANG", "LANGUAGE", "TZ", "USER", "LOGNAME", "PYTHONHOME", "PYTHONHASHSEED", "PYTHONUTF8",
                 "PYTHONIOENCODING", "LD_LIBRARY_PATH", "SSL_CERT_FILE", "SSL_CERT_DIR", sandbox.TEST_DENY_ENV)
"""Variables a worker gets from the parent (if set), besides every LC_*; none of them holds a secret."""
MANAGED_ENV = frozenset({"TMPDIR", "PYTHONPATH", "PYTHONDONTWRITEBYTECODE", sandbox.ENV_LEVEL})
"""Variables the pool or the sandbox sets itself: a function's `env` may not name them (HOME it may: see
worker_env)."""


def worker_env(workdir: str, extra: Sequence[str] = ()) -> dict[str, str]:
    """A worker's whole environment: the allowlist, LC_*, the `extra` names, HOME and TMPDIR in its private
    directory, the parent's sys.path as PYTHONPATH (so the same modules import, our package root first, the
    parent's cwd included for the user's modules) and one thread per library. With HOME among `extra`, the
    imports see the parent's HOME (caches read at import time, e.g. ~/.cache/huggingface); the calls still
    get the private directory (reward/sandbox.py sets HOME at confinement)."""
    env = {k: v for k, v in os.environ.items() if k in ENV_ALLOWLIST or k.startswith("LC_")}
    env.update({k: os.environ[k] for k in extra if k in os.environ})
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    paths = [package_root] + [p or os.getcwd() for p in sys.path]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env.setdefault("PATH", os.defpath)
    if "HOME" not in extra or "HOME" not in os.environ:
        env["HOME"] = workdir
    env.update(TMPDIR=workdir, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
               TOKENIZERS_PARALLELISM="false", PYTHONDONTWRITEBYTECODE="1")
    return env
