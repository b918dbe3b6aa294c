"""Confine the calling process: namespaces, a private /tmp, an unprivileged uid and rlimits.

`enter_sandbox` is called inside the process to be confined, after it has imported what it
needs: by each reward worker process (reward/pool_worker.py) before it takes any call, and by
the one-shot child that runs a completion's code for the `code` verifier (this file run as a
script, see `_child_main`). It applies the strongest isolation the OS allows:

  full    (root)       new network namespace (no interface is up: no network at all), new mount
                       namespace with private tmpfs over /tmp, /var/tmp, /dev/shm and /run/lock,
                       then setuid to a uid of its own (SANDBOX_UID_BASE + pid), so it can write
                       only in its working directory and every process it leaves behind can be
                       found and killed by uid.
  userns  (non-root)   the same namespaces through an unprivileged user namespace; the process
                       keeps the caller's uid, so it can still write where the caller can.
  rlimits              only rlimits and a private working directory (namespaces refused).
  off                  sandbox disabled by the caller: rlimits and a working directory only.

Every level sets rlimits on address space, file size, process count and core dumps. What was
given up is returned in `SandboxInfo.notes`; callers log it once. This file imports only the
standard library, because the code child runs it with `python -I` outside the package.
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


@dataclasses.dataclass
class SandboxInfo:
    level: str
    """"full" | "userns" | "rlimits" | "off" (see the module docstring)."""
    uid: int
    """The uid the process runs as afterwards."""
    workdir: str
    """Private working directory (the cwd; also HOME and TMPDIR)."""
    notes: list[str]
    """What could not be applied, in words; empty at level full."""


def enter_sandbox(limits: Limits, workdir: str, *, isolate: bool = True) -> SandboxInfo:
    """Confine this process as far as the OS allows; must run while it has a single thread.

    `workdir` is a directory the spawner created and will delete; it becomes the working
    directory at levels where no private tmpfs can be mounted.
    """
    notes: list[str] = []
    inherited = os.environ.get(ENV_LEVEL)
    if not isolate:
        level = "off"
    elif inherited in ("full", "userns"):
        level = inherited  # nested: the namespaces and uid of the parent sandbox already apply
    else:
        level = _enter_namespaces(limits, notes)
        if level in ("full", "userns"):
            workdir = "/tmp/work"
            os.mkdir(workdir, 0o700)
    uid = SANDBOX_UID_BASE + os.getpid() if level == "full" and inherited is None else os.getuid()
    if level == "full" and inherited is None:
        os.chown(workdir, uid, uid)
    _set_rlimits(limits, exact_nproc=level == "full")
    os.chdir(workdir)
    os.environ.update(HOME=workdir, TMPDIR=workdir, **{ENV_LEVEL: level})
    tempfile.tempdir = None  # re-read TMPDIR
    if level == "full" and inherited is None:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
    # No setuid binary may give privileges back; orphans re-parent to us so we can reap them.
    _libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    _libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    return SandboxInfo(level=level, uid=uid, workdir=workdir, notes=notes)


def inside_sandbox() -> bool:
    """Whether this process already runs inside namespaces set up by `enter_sandbox`."""
    return os.environ.get(ENV_LEVEL) in ("full", "userns")


def _enter_namespaces(limits: Limits, notes: list[str]) -> str:
    if os.geteuid() == 0:
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
            notes.append(f"running as root but namespaces failed ({exc}); trying a user namespace")
    uid, gid = os.getuid(), os.getgid()
    try:
        _check(_libc.unshare(_CLONE_NEWUSER | _CLONE_NEWNS | _CLONE_NEWNET), "unshare(NEWUSER|NEWNS|NEWNET)")
        _write("/proc/self/setgroups", "deny")
        _write("/proc/self/uid_map", f"0 {uid} 1")
        _write("/proc/self/gid_map", f"0 {gid} 1")
        _private_mounts(limits, notes, expose=False)
        notes.append("not root: no separate uid, so writes are possible wherever the runner's user can write")
        return "userns"
    except OSError as exc:
        notes.append(f"no namespaces ({exc}): network is reachable and writes go wherever the runner's user can write")
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
    if limits.cpu_s is not None:
        _setrlimit(resource.RLIMIT_CPU, int(limits.cpu_s) + 1)


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


def _child_main() -> int:
    """One-shot child of the `code` verifier: read a JSON job on stdin, confine, run it.

    The job is {"limits", "workdir", "mode": "assert"|"io", "solution", "test", "input", "nonce"}.
    In "assert" mode the nonce is printed only after the solution and the test ran to the end,
    so a solution that exits early (sys.exit(0), os._exit(0)) does not pass.
    """
    import io
    import json

    job = json.loads(sys.stdin.buffer.read())
    enter_sandbox(Limits(**job["limits"]), job["workdir"])
    sys.stdin = io.TextIOWrapper(io.BytesIO(job.get("input", "").encode()))
    return _run_job(job.pop("mode"), job.pop("solution"), job.pop("test", ""), job.pop("nonce", ""))


def _run_job(mode: str, solution: str, test: str, nonce: str) -> int:
    namespace = {"__name__": "__main__", "__builtins__": __builtins__}
    exec(compile(solution, "<solution>", "exec"), namespace)
    if mode == "assert":
        exec(compile(test, "<test>", "exec"), namespace)
        sys.stdout.flush()
        os.write(1, f"\n{nonce}\n".encode())
    return 0


if __name__ == "__main__":
    sys.exit(_child_main())
