"""Confine the calling process: namespaces, a private /tmp, an unprivileged uid and rlimits.

`enter_sandbox` is called inside the process to be confined, after it has imported what it
needs: by each reward worker process (reward/pool_worker.py) before it takes any call, and by
the one-shot child that runs a completion's code for the `code` verifier (this file run as a
script, see `_child_main`). It applies the level it is asked for, or none at all: a level that
cannot be reached raises `SandboxUnavailable` (one line: the level reached, why, how to get the
one asked for), so nothing runs below the configured level. Levels, weakest first (LEVELS):

  full    (root)       new network namespace (no interface is up: no network at all), new mount
                       namespace with private tmpfs over /tmp, /var/tmp, /dev/shm and /run/lock,
                       then setuid to a uid of its own (SANDBOX_UID_BASE + pid), so it can write
                       only in its working directory and every process it leaves behind can be
                       found and killed by uid.
  userns  (non-root)   the same namespaces through an unprivileged user namespace; the process
                       keeps the caller's uid, so it can still write where the caller can.
  rlimits              only rlimits and a private working directory (no namespaces are tried).
  off                  no sandbox, by explicit choice (e.g. an LLM judge that needs the network):
                       the same rlimits and working directory as `rlimits`; a function that
                       declares a minimum level (`required_sandbox`) refuses it.

Every level sets rlimits on address space, file size, process count, open files and core
dumps. `SandboxInfo.notes` says what the level in force does not give. The environment variable
TEST_DENY_ENV (tests only) makes a level unreachable honestly: the named paths are not tried.
This file imports only the standard library, because the code child runs it with `python -I`
outside the package.
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
import resource
import signal
import stat
import sys
import tempfile
import time

SANDBOX_UID_BASE = 2_000_000
"""Sandboxed processes run as uid SANDBOX_UID_BASE + their pid: unique while they live."""
ENV_LEVEL = "REWARD_SANDBOX_LEVEL"
"""Set in a confined process so that a nested child knows it already runs inside a sandbox."""
LEVELS = ("off", "rlimits", "userns", "full")
"""Isolation levels, weakest first (see the module docstring)."""
TEST_DENY_ENV = "REWARD_SANDBOX_TEST_DENY"
"""Tests only: comma-separated paths not to try, `root` (level full) and/or `userns` (user namespaces), so
that a test can ask for a level this machine could reach and see the refusal. Said in the notes when set."""

_CLONE_NEWNS, _CLONE_NEWUSER, _CLONE_NEWNET = 0x00020000, 0x10000000, 0x40000000
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_REMOUNT = 1, 2, 4, 32
_MS_BIND, _MS_MOVE, _MS_REC, _MS_PRIVATE = 4096, 8192, 16384, 1 << 18
_PR_SET_NO_NEW_PRIVS, _PR_SET_CHILD_SUBREAPER = 38, 36
# World-writable directories that an unprivileged process could otherwise write to.
_SHARED_TMP_DIRS = ("/var/tmp", "/dev/shm", "/run/lock")

_libc = ctypes.CDLL(None, use_errno=True)


@dataclasses.dataclass(frozen=True)
class Limits:
    """Resource limits of a confined process (rlimits; the deadline is enforced from outside)."""

    memory_mb: int | None = 4096
    """RLIMIT_AS (virtual address space) in MiB; None = unlimited."""
    file_size_mb: int = 64
    """RLIMIT_FSIZE: largest file it may write, its captured stdout/stderr included."""
    max_processes: int = 64
    """RLIMIT_NPROC: processes and threads of its uid (exact at level full, where the uid is its own)."""
    cpu_s: float | None = None
    """RLIMIT_CPU hard limit in seconds (one-shot children); workers set a soft limit per call."""
    tmpfs_mb: int = 256
    """Size of the private /tmp (levels full and userns)."""
    max_open_files: int = 256
    """RLIMIT_NOFILE: file descriptors a process may hold (raised to what it already holds + 32 if that is
    more: a worker keeps its pipes and what its reward module opened at import)."""


class SandboxUnavailable(RuntimeError):
    """The required isolation level cannot be reached here; the message is one line saying why and how."""


def normalize_level(value: object, where: str = "sandbox") -> str:
    """A level name from config: one of LEVELS, or the old booleans (true = full, false = off).

    >>> normalize_level(True), normalize_level("False"), normalize_level(" userns ")
    ('full', 'off', 'userns')
    """
    if isinstance(value, bool):
        return "full" if value else "off"
    if isinstance(value, str):
        text = value.strip().lower()
        if text in LEVELS:
            return text
        if text in ("true", "false"):  # a YAML bool read into a string field
            return "full" if text == "true" else "off"
    raise ValueError(f"{where}={value!r}: use one of {', '.join(LEVELS[::-1])} (true means full, false means off)")


def level_rank(level: str) -> int:
    """Position in LEVELS: a higher rank isolates more."""
    return LEVELS.index(level)


@dataclasses.dataclass
class SandboxInfo:
    level: str
    """"full" | "userns" | "rlimits" | "off" (see the module docstring)."""
    uid: int
    """The uid the process runs as afterwards."""
    workdir: str
    """Private working directory (the cwd; also HOME and TMPDIR)."""
    notes: list[str]
    """What the level in force does not give, in words; empty at level full."""


def enter_sandbox(limits: Limits, workdir: str, *, level: str = "full", at_least: bool = False) -> SandboxInfo:
    """Confine this process at `level`, or raise SandboxUnavailable. Namespaces are tried only while the process
    has a single thread (unshare() moves the calling thread only), so `full` and `userns` refuse otherwise.

    With `at_least`, the strongest level the OS allows is applied and only one below `level` is refused (the
    `code` verifier's children outside a worker). Inside a sandbox already (a nested child), the parent's
    namespaces and uid apply. `workdir` is a directory the spawner created and will delete; it becomes the
    working directory at levels where no private tmpfs can be mounted.
    """
    level = normalize_level(level)
    notes: list[str] = []
    inherited = os.environ.get(ENV_LEVEL)
    if inherited in ("full", "userns"):
        reached = inherited  # nested: the namespaces and uid of the parent sandbox already apply
    elif level in ("off", "rlimits") and not at_least:
        reached = level
    else:
        reached = _enter_namespaces(limits, notes, ceiling="full" if at_least else level)
        if reached in ("full", "userns"):
            workdir = "/tmp/work"
            os.mkdir(workdir, 0o700)
    if level_rank(reached) < level_rank(level):
        raise SandboxUnavailable(refusal_message(level, reached, notes))
    if reached in ("userns", "rlimits", "off") and not notes:
        notes.append(_WEAKNESS[reached])
    own_uid = reached == "full" and inherited is None
    uid = SANDBOX_UID_BASE + os.getpid() if own_uid else os.getuid()
    if own_uid:
        os.chown(workdir, uid, uid)
    _set_rlimits(limits, exact_nproc=reached == "full")
    os.chdir(workdir)
    os.environ.update(HOME=workdir, TMPDIR=workdir, **{ENV_LEVEL: reached})
    tempfile.tempdir = None  # re-read TMPDIR
    if own_uid:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
    # No setuid binary may give privileges back; orphans re-parent to us so we can reap them.
    _libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    _libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    return SandboxInfo(level=reached, uid=uid, workdir=workdir, notes=notes)


_WEAKNESS = {
    "userns": "no separate uid: writes are possible wherever the runner's user can write",
    "rlimits": "no namespaces: network is reachable and writes go wherever the runner's user can write",
    "off": "sandbox off: network is reachable and writes go wherever the runner's user can write",
}


def refusal_message(required: str, reached: str, notes: list[str]) -> str:
    """One line: the level required, the one reached and why, how to get the required one, the way out."""
    why = "; ".join(notes) or "no reason recorded"
    if reached == "rlimits" and _threads() > 1 and required in ("full", "userns"):
        how = "start no thread while the reward module is imported (start it in the first call instead)"
    elif required == "full" and (os.geteuid() != 0 or "root" in _denied()):
        how = ("run the reward workers as root (e.g. in a container; a rootless container needs a spare uid mapped "
               "for the sandbox)")
    elif required == "full" and reached == "userns":
        how = ("map more uids into this user namespace (a rootless container with a subuid range) so the sandbox "
               "gets a uid of its own")
    elif os.geteuid() == 0:
        how = ("allow namespaces and mounts for root in this container (e.g. docker --cap-add SYS_ADMIN "
               "--security-opt seccomp=unconfined --security-opt apparmor=unconfined)")
    else:
        how = ("enable unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1 on Debian, "
               "kernel.apparmor_restrict_unprivileged_userns=0 on Ubuntu 23.10+, user.max_user_namespaces > 0; "
               "a container must allow unshare), or run as root")
    return (f"reward sandbox: level {required} is required but only {reached} can be reached here ({why}); "
            f"to get {required}: {how}; or choose a lower level explicitly (reward.sandbox={reached}, or "
            f"sandbox: {reached} in the function's reward.fns entry)")


def _denied() -> set[str]:
    return {p.strip() for p in os.environ.get(TEST_DENY_ENV, "").split(",") if p.strip()}


def _threads() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return 1


def inside_sandbox() -> bool:
    """Whether this process already runs inside namespaces set up by `enter_sandbox`."""
    return os.environ.get(ENV_LEVEL) in ("full", "userns")


def _enter_namespaces(limits: Limits, notes: list[str], *, ceiling: str) -> str:
    """Enter the strongest level up to `ceiling` ("full" or "userns") that works; the level reached."""
    denied = _denied()
    if denied:
        notes.append(f"{TEST_DENY_ENV}={','.join(sorted(denied))} (a test knob): those paths were not tried")
    threads = _threads()
    if threads > 1:  # unshare() moves only the calling thread: the others would stay in the host's namespaces
        notes.append(f"the process has {threads} threads (a reward module that starts threads at import time?), "
                     "and unshare() confines only the calling thread: namespaces were not tried")
        return "rlimits"
    if ceiling == "full" and os.geteuid() == 0 and "root" not in denied:
        own_uid = _uid_mapped(SANDBOX_UID_BASE + os.getpid())
        try:
            _check(_libc.unshare(_CLONE_NEWNS | _CLONE_NEWNET), "unshare(NEWNS|NEWNET)")
            _private_mounts(limits, notes, expose=own_uid)
            if own_uid:
                return "full"
            # Root of a user namespace (rootless container) that maps too few uids to give us our own.
            notes.append("root, but no spare uid is mapped in this user namespace: the sandbox keeps the runner's uid, "
                         "so writes are possible wherever the runner can write")
            return "userns"
        except OSError as exc:
            notes.append(f"running as root but namespaces failed ({exc})")
    elif ceiling == "full" and os.geteuid() != 0:
        notes.append("not root: level full needs root (a uid of its own for the sandbox)")
    if "userns" in denied:
        return "rlimits"
    uid, gid = os.getuid(), os.getgid()
    try:
        _check(_libc.unshare(_CLONE_NEWUSER | _CLONE_NEWNS | _CLONE_NEWNET), "unshare(NEWUSER|NEWNS|NEWNET)")
        _write("/proc/self/setgroups", "deny")
        _write("/proc/self/uid_map", f"0 {uid} 1")
        _write("/proc/self/gid_map", f"0 {gid} 1")
        _private_mounts(limits, notes, expose=False)
        notes.append(_WEAKNESS["userns"])
        return "userns"
    except OSError as exc:
        notes.append(f"no user namespace ({exc})")
        return "rlimits"


def _private_mounts(limits: Limits, notes: list[str], *, expose: bool) -> None:
    """Private tmpfs over the shared temporary directories; keep the interpreter readable."""
    _mount("none", "/", None, _MS_REC | _MS_PRIVATE)
    readable = _exposure_plan() if expose else []
    _mount("tmpfs", "/tmp", "tmpfs", _MS_NOSUID | _MS_NODEV, f"size={limits.tmpfs_mb}m,mode=0755")
    for path in _SHARED_TMP_DIRS:
        if os.path.isdir(path) and not os.path.islink(path):
            try:
                _mount("tmpfs", path, "tmpfs", _MS_NOSUID | _MS_NODEV, "size=1m,mode=0755")
            except OSError as exc:
                notes.append(f"could not cover {path} ({exc})")
    _expose(readable, notes)


def _exposure_plan() -> list[tuple[str, str]]:
    """(hidden_dir, child) pairs: the interpreter lives below a dir others may not traverse.

    A pyenv Python under /root (mode 700) is unreadable once we drop to another uid. For each
    such path we cover the closed directory with a tmpfs holding a read-only bind of only the
    child on the way to the interpreter: the rest of that directory stays hidden.
    """
    wanted = {sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.dirname(os.path.realpath(sys.executable))}
    wanted.update(p for p in sys.path if p and os.path.isabs(p) and os.path.exists(p))
    wanted.add(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    plan: set[tuple[str, str]] = set()
    for path in wanted:
        parts = os.path.realpath(path).split(os.sep)[1:]
        for i in range(1, len(parts)):
            ancestor = "/" + "/".join(parts[:i])
            if ancestor == "/tmp" or ancestor.startswith("/tmp/"):
                break  # hidden by the private /tmp anyway
            if not os.stat(ancestor).st_mode & stat.S_IXOTH:
                plan.add((ancestor, parts[i]))
                break
    return sorted(plan)


def _expose(plan: list[tuple[str, str]], notes: list[str]) -> None:
    by_dir: dict[str, list[str]] = {}
    for hidden, child in plan:
        by_dir.setdefault(hidden, []).append(child)
    for n, (hidden, children) in enumerate(sorted(by_dir.items())):
        staged = []
        for k, child in enumerate(children):
            stage = f"/tmp/.expose-{n}-{k}"
            os.mkdir(stage)
            _mount(os.path.join(hidden, child), stage, None, _MS_BIND | _MS_REC)
            staged.append((stage, child))
        _mount("tmpfs", hidden, "tmpfs", _MS_NOSUID | _MS_NODEV, "size=1m,mode=0755")
        for stage, child in staged:
            target = os.path.join(hidden, child)
            os.mkdir(target, 0o755)
            _mount(stage, target, None, _MS_MOVE)
            os.rmdir(stage)
            try:
                _mount("none", target, None, _MS_BIND | _MS_REMOUNT | _MS_RDONLY | _MS_REC)
            except OSError as exc:
                notes.append(f"{target} is readable but not read-only ({exc})")


def _uid_mapped(uid: int) -> bool:
    """Whether `uid` exists in this process's user namespace (always, outside containers)."""
    try:
        with open("/proc/self/uid_map") as f:
            ranges = [tuple(map(int, line.split())) for line in f if line.strip()]
    except OSError:
        return True
    return any(inside <= uid < inside + count for inside, _, count in ranges)


def _set_rlimits(limits: Limits, *, exact_nproc: bool) -> None:
    mb = 1024 * 1024
    _setrlimit(resource.RLIMIT_CORE, 0)
    _setrlimit(resource.RLIMIT_FSIZE, limits.file_size_mb * mb)
    if limits.memory_mb is not None:
        _setrlimit(resource.RLIMIT_AS, limits.memory_mb * mb)
    # RLIMIT_NPROC counts every process of the uid: only exact when the uid is ours alone.
    nproc = limits.max_processes if exact_nproc else _count_uid_tasks(os.getuid()) + limits.max_processes
    _setrlimit(resource.RLIMIT_NPROC, nproc)
    _setrlimit(resource.RLIMIT_NOFILE, max(limits.max_open_files, _highest_fd() + 1 + 32))
    if limits.cpu_s is not None:
        _setrlimit(resource.RLIMIT_CPU, int(limits.cpu_s) + 1)


def _highest_fd() -> int:
    try:
        return max(int(fd) for fd in os.listdir("/proc/self/fd"))
    except (OSError, ValueError):
        return 2


def _setrlimit(which: int, value: int) -> None:
    _, hard = resource.getrlimit(which)
    if hard != resource.RLIM_INFINITY:
        value = min(value, hard)
    resource.setrlimit(which, (value, value))


def set_cpu_budget(seconds: float) -> None:
    """Soft RLIMIT_CPU = CPU used so far + seconds: a backstop for one call in a long-lived worker."""
    used = resource.getrusage(resource.RUSAGE_SELF)
    spent = used.ru_utime + used.ru_stime
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    soft = int(spent + seconds) + 2
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))


def _count_uid_tasks(uid: int) -> int:
    return sum(len(os.listdir(f"/proc/{pid}/task")) for pid in _pids_of_uid(uid))


def _pids_of_uid(uid: int) -> list[int]:
    """Live (non-zombie) processes whose real uid is `uid`."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
        except OSError:
            continue
        if int(fields["Uid"].split()[0]) == uid and not fields["State"].strip().startswith("Z"):
            pids.append(int(entry))
    return pids


def kill_uid(uid: int, rounds: int = 50) -> None:
    """SIGKILL every process of a sandbox uid until none is left (a fork bomb included)."""
    if uid < SANDBOX_UID_BASE:
        raise ValueError(f"refusing to kill uid {uid}: not a sandbox uid")
    for _ in range(rounds):
        pids = _pids_of_uid(uid)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.01)


def descendants(pid: int) -> list[int]:
    """Every live descendant of `pid` (from /proc), nearest first."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], list(children.get(pid, []))
    while todo:
        p = todo.pop(0)
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def kill_strays(info: SandboxInfo) -> None:
    """Kill what a call left running in this sandbox, then reap it."""
    if info.level == "full" and info.uid >= SANDBOX_UID_BASE:
        try:
            os.kill(-1, signal.SIGKILL)  # as our own uid: every other process of this sandbox
        except ProcessLookupError:
            pass
    elif _has_children():
        for _ in range(20):  # orphans re-parent to us (subreaper), so the tree stays reachable
            pids = descendants(os.getpid())
            if not pids:
                break
            for p in pids:
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            _reap(0.05)
    _reap(0.5)


def _has_children() -> bool:
    """We are a subreaper: without a child of our own there is no descendant left anywhere."""
    try:
        os.waitpid(-1, os.WNOHANG)
    except ChildProcessError:
        return False
    return True


def _reap(budget_s: float) -> None:
    end = time.monotonic() + budget_s
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            if time.monotonic() > end:
                return
            time.sleep(0.005)


def _mount(src: str, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = (lambda s: s.encode() if s is not None else None)
    _check(_libc.mount(enc(src), enc(target), enc(fstype), flags, enc(data)), f"mount {target}")


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


REFUSED_RC = 3
"""Exit status of a one-shot child that could not reach its level (before any job code ran)."""


RESULTS_PREFIX = "#code-verifier-results "
"""Starts the child's last stdout line in "assert" mode: the JSON list of encoded probe results. No secret:
a solution may print a forged line, but the child holds no expected value, so it can only forge values
it could as well have returned."""
ENCODE_MAX_DEPTH = 64
"""Nesting deeper than this (or a container that contains itself) is not encoded: the value is opaque."""
ENCODE_MAX_NODES = 100_000
"""Values in one probe result beyond this are not encoded either (the 1 MiB output cap would cut it anyway)."""


def _child_main() -> int:
    """One-shot child of the `code` verifier: read a JSON job on stdin, confine, run it.

    The job is {"limits", "workdir", "level", "mode": "assert"|"io", "solution"} plus "steps" (assert) or
    "input" (io); it is confined at `level` or better (a refusal exits with REFUSED_RC, its message on
    stderr). Without a "mode" it only confines itself and exits 0 (a probe). In "io" mode the solution
    reads "input" on stdin; the parent compares what it prints. In "assert" mode the job holds the probes
    of reward/code_asserts.py, never an expected value: see _run_probes. A solution that exits early
    (sys.exit(0), os._exit(0)) leaves no result line, and its test fails.
    """
    import io
    import json

    job = json.loads(sys.stdin.buffer.read())
    try:
        enter_sandbox(Limits(**job["limits"]), job["workdir"], level=job.get("level", "full"), at_least=True)
    except SandboxUnavailable as exc:
        sys.stderr.write(f"{exc}\n")
        return REFUSED_RC
    if "mode" not in job:
        return 0
    sys.stdin = io.TextIOWrapper(io.BytesIO(job.get("input", "").encode()))
    namespace = {"__name__": "__main__", "__builtins__": __builtins__}
    exec(compile(job["solution"], "<solution>", "exec"), namespace)
    if job["mode"] == "assert":
        _run_probes(job["steps"], namespace)
    return 0


def _run_probes(steps: list, namespace: dict) -> None:
    """Evaluate each step's probes in the solution's namespace, then exec its "then" statement (a binding of
    the test that later probes read); print the encoded results as the last line.

    Each value is encoded as soon as its probe returns (a later call cannot change what was compared) and
    kept in `__probe__` for the "then" statements. An exception is recorded by class name and does not
    stop the other probes; an exception in a "then" statement ends the child (the parent fails the test
    on the same statement)."""
    import json

    values: list = []
    encoded: list = []
    for step in steps:
        for source in step["probes"]:
            try:
                value = eval(compile(source, "<probe>", "eval"), namespace)
            except Exception as exc:
                values.append(None)
                encoded.append({"raised": _type_name(type(exc))})
                continue
            values.append(value)
            encoded.append(encode_result(value))
        if step["then"] is not None:
            namespace["__probe__"] = values
            exec(compile(step["then"], "<test>", "exec"), namespace)
    sys.stdout.flush()
    line = memoryview(f"\n{RESULTS_PREFIX}{json.dumps(encoded)}\n".encode())
    while line:
        line = line[os.write(1, line):]


class _NotEncoded(Exception):
    pass


def encode_result(value: object) -> dict:
    """{"value": tree} for a value made only of exact builtin types, else {"opaque": what it was}.

    Strict on purpose: `type(x) is int`, never isinstance, so no subclass, `__eq__`, `__repr__`, `__iter__` or
    `__hash__` of the candidate's runs here or reaches the parent. A tree is ["none"], ["bool", b],
    ["int", decimal], ["float", float.hex], ["complex", [re_hex, im_hex]], ["str", s], ["bytes", hex],
    ["list" | "tuple" | "set" | "frozenset", [items]] or ["dict", [[key, value], ...]].
    """
    nodes = 0

    def tree(x: object, depth: int) -> list:
        nonlocal nodes
        nodes += 1
        if nodes > ENCODE_MAX_NODES or depth > ENCODE_MAX_DEPTH:
            raise _NotEncoded(f"a value over the caps ({ENCODE_MAX_NODES} values, {ENCODE_MAX_DEPTH} levels)")
        kind = type(x)
        if x is None:
            return ["none"]
        if kind is bool:
            return ["bool", x is True]
        if kind is int:
            return ["int", int.__repr__(x)]  # over sys.get_int_max_str_digits() raises ValueError
        if kind is float:
            return ["float", float.hex(x)]
        if kind is complex:
            return ["complex", [float.hex(complex.real.__get__(x)), float.hex(complex.imag.__get__(x))]]
        if kind is str:
            return ["str", x]
        if kind is bytes:
            return ["bytes", bytes.hex(x)]
        if kind is list or kind is tuple or kind is set or kind is frozenset:
            return [_type_name(kind), [tree(item, depth + 1) for item in x]]
        if kind is dict:
            return ["dict", [[tree(k, depth + 1), tree(v, depth + 1)] for k, v in dict.items(x)]]
        raise _NotEncoded(f"a {_type_name(kind)} object")

    try:
        return {"value": tree(value, 0)}
    except _NotEncoded as exc:
        return {"opaque": str(exc)}
    except (ValueError, RuntimeError) as exc:  # an int too long to print; a container changed while read
        return {"opaque": f"a value that could not be encoded ({_type_name(type(exc))})"}


def _type_name(kind: type) -> str:
    """The class's own name, read from the type slot: a metaclass cannot substitute its own `__name__`."""
    return type.__dict__["__name__"].__get__(kind)


if __name__ == "__main__":
    sys.exit(_child_main())
