"""Confine the calling process: namespaces, a minimal read-only filesystem, an unprivileged uid, rlimits.

`enter_sandbox` is called inside the process to be confined, before any untrusted code runs in it:
by each reward worker process (reward/pool_worker.py) before it imports the reward functions, and
by the one-shot child that runs a completion's code for the `code` verifier (reward/code_child.py,
run as a script). It applies the level it is asked for, or none at all: a level that
cannot be reached raises `SandboxUnavailable` (one line: the level reached, why, how to get the
one asked for), so nothing runs below the configured level. Levels, weakest first (LEVELS):

  full    (root)       new network, mount, PID, IPC and UTS namespaces; the process becomes PID 1 of
                       its PID namespace (so when it dies every process it left dies with it) and
                       sees a minimal filesystem: the system directories, the interpreter and its
                       libraries and the files named in its `View`, all read-only, a private /proc
                       (its own processes only), a few device nodes and a private writable /tmp;
                       nothing else of the host (home, caches, datasets, checkpoints, Ray session
                       directories and their sockets). It then runs as a uid of its own
                       (SANDBOX_UID_BASE + the host pid of the process that called enter_sandbox),
                       with no_new_privs, not dumpable, and a seccomp denylist (reward/syscall_filter.py).
  userns  (non-root)   the same through an unprivileged user namespace; the process keeps the
                       caller's uid, so it can read what the caller can within its filesystem view.
  rlimits              only rlimits and a private working directory (no namespaces are tried).
  off                  no sandbox, by explicit choice (e.g. an LLM judge that needs the network):
                       the same rlimits and working directory as `rlimits`; a function that
                       declares a minimum level (`required_sandbox`) refuses it.

Confinement is atomic: the namespaces are entered while the process has a single thread (checked:
unshare() moves only the calling thread), and the mounts, uid, limits and filter are in place
before enter_sandbox returns, so a thread the untrusted code starts later is inside too. Entering a
PID namespace takes a fork: the caller's process stays outside as a relay (`_relay`: it forwards
signals, exits with the inner process's status and kills it when its own parent dies) and
enter_sandbox returns in the inner process. Every level sets rlimits on address space, file size,
process count, open files and core dumps; they are per process (or per uid), so a process that
forks holds more memory in total than RLIMIT_AS says (cgroups are not used). `SandboxInfo.notes`
says what the level in force does not give. The environment variable TEST_DENY_ENV (tests only)
makes a level unreachable honestly: the named paths are not tried. This file imports only the
standard library and its sibling syscall_filter.py, because the code child imports it as a sibling
module, outside the package.
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
import platform
import resource
import select
import signal
import sys
import tempfile
import time

if __package__:
    from reward import syscall_filter
else:  # imported by the code child, reward/code_child.py run as a script with `python -I`: the sibling module
    import syscall_filter  # type: ignore[no-redef]

SANDBOX_UID_BASE = 2_000_000
"""Sandboxed processes run as uid SANDBOX_UID_BASE + the host pid of the confined process: unique while it lives."""
ENV_LEVEL = "REWARD_SANDBOX_LEVEL"
"""Set in a confined process so that a nested child knows it already runs inside a sandbox."""
LEVELS = ("off", "rlimits", "userns", "full")
"""Isolation levels, weakest first (see the module docstring)."""
TEST_DENY_ENV = "REWARD_SANDBOX_TEST_DENY"
"""Tests only: comma-separated paths not to try, `root` (level full) and/or `userns` (user namespaces), so
that a test can ask for a level this machine could reach and see the refusal. Said in the notes when set."""
WORKDIR = "/tmp/work"
"""The working directory (also HOME and TMPDIR) inside the private /tmp of levels full and userns."""

_CLONE_NEWNS, _CLONE_NEWUTS, _CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
_CLONE_NEWUSER, _CLONE_NEWPID, _CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
_NAMESPACES = _CLONE_NEWNS | _CLONE_NEWUTS | _CLONE_NEWIPC | _CLONE_NEWPID | _CLONE_NEWNET
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_NOEXEC, _MS_REMOUNT = 1, 2, 4, 8, 32
_MS_NOATIME, _MS_NODIRATIME, _MS_BIND, _MS_REC, _MS_PRIVATE, _MS_RELATIME = 1024, 2048, 4096, 16384, 1 << 18, 1 << 21
_MNT_DETACH = 2
_PR_SET_PDEATHSIG, _PR_SET_DUMPABLE, _PR_SET_CHILD_SUBREAPER, _PR_SET_NO_NEW_PRIVS = 1, 4, 36, 38
_SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "ppc64le": 203, "s390x": 217}.get(platform.machine())
_SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
"""Shown read-only (or as the symlinks they are, on a merged /usr): the system's programs and libraries."""
_ETC_FILES = ("ld.so.cache", "ld.so.conf", "localtime", "passwd", "group", "nsswitch.conf", "os-release",
              "mime.types", "alternatives")
"""What of /etc is shown, copied: the loader's cache, time zone, user names, the alternatives symlinks."""
_DEVICES = ("null", "zero", "full", "random", "urandom")
_COPY_LIMIT_BYTES = 16 << 20
"""A file named in a View larger than this is refused (it is copied into memory-backed storage)."""

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
    more: a worker keeps its pipes)."""


@dataclasses.dataclass(frozen=True)
class View:
    """What of the host filesystem a process confined at level full or userns sees, besides the system
    directories and the interpreter (`host_view`). Everything is read-only and keeps its host path."""

    dirs: tuple[str, ...] = ()
    """Directories shown as they are (read-only bind mounts): libraries, a reward package."""
    files: tuple[tuple[str, bytes], ...] = ()
    """(path, content) of files shown as a copy made before confinement, readable by the sandbox uid
    whatever the host file's mode: a reward module, read as the spawning user."""


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
    pid_namespace: bool = False
    """Whether the process is PID 1 of its own PID namespace (then `kill_strays` kills every other process in it)."""


def host_view(dirs: tuple[str, ...] = (), files: tuple[tuple[str, bytes], ...] = ()) -> View:
    """The interpreter and its libraries (every sys.path entry inside an installation prefix), this package's
    own `reward` and `rl` packages (not the directory holding them: an editable checkout also holds runs,
    data and checkpoints), and the given extra directories and files."""
    prefixes = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    shown = set(prefixes) | {os.path.dirname(os.path.realpath(sys.executable))}
    for entry in sys.path:
        real = os.path.realpath(entry) if entry else ""
        if real and any(real == p or real.startswith(p + os.sep) for p in prefixes) and os.path.exists(real):
            shown.add(real if os.path.isdir(real) else os.path.dirname(real))  # a zip: its directory
    here = os.path.dirname(os.path.realpath(__file__))
    shown.add(here)
    rl_dir = os.path.join(os.path.dirname(here), "rl")
    if os.path.isfile(os.path.join(rl_dir, "__init__.py")):
        shown.add(rl_dir)
    shown.update(os.path.realpath(d) for d in dirs if os.path.isdir(d))
    return View(dirs=tuple(sorted(shown)), files=tuple(files))


def read_for_view(path: str) -> tuple[str, bytes]:
    """A file's (absolute path, content) for View.files, read now (before confinement); OSError if too big."""
    path = os.path.abspath(path)
    if os.path.getsize(path) > _COPY_LIMIT_BYTES:
        raise OSError(f"{path} is over {_COPY_LIMIT_BYTES >> 20} MiB: too big to show inside the sandbox")
    with open(path, "rb") as f:
        return path, f.read()


def enter_sandbox(limits: Limits, workdir: str, *, level: str = "full", at_least: bool = False,
                  view: View | None = None) -> SandboxInfo:
    """Confine this process at `level`, or raise SandboxUnavailable. Namespaces are tried only while the process
    has a single thread (unshare() moves the calling thread only), so `full` and `userns` refuse otherwise.

    With `at_least`, the strongest level the OS allows is applied and only one below `level` is refused (the
    `code` verifier's children outside a worker). Inside a sandbox already (a nested child), the parent's
    namespaces, filesystem view and uid apply. `workdir` is an empty directory the spawner created and will
    delete: the working directory at levels without namespaces, the mount point of the new root otherwise.
    `view` (default `host_view()`) is what of the host the new root shows. At levels full and userns this
    call forks (see the module docstring): it returns in a new process, PID 1 of its PID namespace.
    """
    level = normalize_level(level)
    notes: list[str] = []
    inherited = os.environ.get(ENV_LEVEL)
    uid = os.getuid()
    in_pid_ns = False
    if inherited in ("full", "userns"):
        reached = inherited  # nested: the namespaces, view and uid of the parent sandbox already apply
    elif level in ("off", "rlimits") and not at_least:
        reached = level
    else:
        reached, uid = _enter_namespaces(limits, notes, ceiling="full" if at_least else level, newroot=workdir,
                                         view=view if view is not None else host_view())
        if reached in ("full", "userns"):
            workdir, in_pid_ns = WORKDIR, True
    if level_rank(reached) < level_rank(level):
        raise SandboxUnavailable(refusal_message(level, reached, notes))
    if reached in ("userns", "rlimits", "off") and not notes:
        notes.append(_WEAKNESS[reached])
    own_uid = uid != os.getuid()
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
    if in_pid_ns:
        # Not dumpable: a later process of the same uid (a call, a code child) cannot read this one's memory
        # through /proc/PID/mem or ptrace; then the syscall denylist, last, once nothing here needs mount().
        _libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)
        try:
            syscall_filter.install_denylist()
        except OSError as exc:
            raise SandboxUnavailable(refusal_message(level, "rlimits", [f"no seccomp filter ({exc})"])) from None
    return SandboxInfo(level=reached, uid=uid, workdir=workdir, notes=notes, pid_namespace=in_pid_ns)


_WEAKNESS = {
    "userns": "no separate uid: what the runner's user can read within the sandbox's filesystem view stays readable",
    "rlimits": "no namespaces: network is reachable and writes go wherever the runner's user can write",
    "off": "sandbox off: network is reachable and writes go wherever the runner's user can write",
}


def refusal_message(required: str, reached: str, notes: list[str]) -> str:
    """One line: the level required, the one reached and why, how to get the required one, the way out."""
    why = "; ".join(notes) or "no reason recorded"
    if reached == "rlimits" and _threads() > 1 and required in ("full", "userns"):
        how = "start no thread before the sandbox is entered"
    elif any("seccomp" in n for n in notes):
        how = f"install libseccomp (apt-get install libseccomp2; {syscall_filter.available() or 'it loads here'})"
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


def _enter_namespaces(limits: Limits, notes: list[str], *, ceiling: str, newroot: str, view: View) -> tuple[str, int]:
    """Enter the strongest level up to `ceiling` ("full" or "userns") that works: (level reached, uid to run as).
    Past the unshare() there is no way back: a failure to build the new root raises SandboxUnavailable."""
    denied = _denied()
    if denied:
        notes.append(f"{TEST_DENY_ENV}={','.join(sorted(denied))} (a test knob): those paths were not tried")
    threads = _threads()
    if threads > 1:  # unshare() moves only the calling thread: the others would stay in the host's namespaces
        notes.append(f"the process has {threads} threads, and unshare() confines only the calling thread: "
                     "namespaces were not tried")
        return "rlimits", os.getuid()
    filter_missing = syscall_filter.available()
    if filter_missing:
        notes.append(f"no seccomp filter ({filter_missing})")
        return "rlimits", os.getuid()
    if ceiling == "full" and os.geteuid() == 0 and "root" not in denied:
        sandbox_uid = SANDBOX_UID_BASE + os.getpid()
        if _libc.unshare(_NAMESPACES) == 0:
            _fork_into_pid_namespace()
            _build_root(newroot, view, limits, notes, level="full")
            if _uid_mapped(sandbox_uid):
                return "full", sandbox_uid
            # Root of a user namespace (rootless container) that maps too few uids to give us our own.
            notes.append("root, but no spare uid is mapped in this user namespace: the sandbox keeps the runner's uid")
            return "userns", os.getuid()
        notes.append(f"running as root but namespaces failed (unshare: {os.strerror(ctypes.get_errno())})")
    elif ceiling == "full" and os.geteuid() != 0:
        notes.append("not root: level full needs root (a uid of its own for the sandbox)")
    if "userns" in denied:
        return "rlimits", os.getuid()
    uid, gid = os.getuid(), os.getgid()
    if _libc.unshare(_CLONE_NEWUSER | _NAMESPACES) != 0:
        notes.append(f"no user namespace (unshare: {os.strerror(ctypes.get_errno())})")
        return "rlimits", uid
    try:
        _write("/proc/self/setgroups", "deny")
        _write("/proc/self/uid_map", f"0 {uid} 1")
        _write("/proc/self/gid_map", f"0 {gid} 1")
    except OSError as exc:
        raise SandboxUnavailable(refusal_message(ceiling, "rlimits", notes + [f"user namespace maps: {exc}"])) from None
    _fork_into_pid_namespace()
    _build_root(newroot, view, limits, notes, level="userns")
    notes.append(_WEAKNESS["userns"])
    return "userns", os.getuid()


def _fork_into_pid_namespace() -> None:
    """After unshare(CLONE_NEWPID): fork; the child (PID 1 of the new namespace) returns, the parent relays."""
    child = os.fork()
    if child:
        _relay(child)
    die_with_parent()  # the relay is SIGKILLed (the pool's kill): so is the sandbox, all of it


def die_with_parent() -> None:
    """SIGKILL this process when the thread that forked it dies (a call's process, when its worker dies)."""
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _relay(child: int) -> None:
    """The outer process of a PID namespace, for life: forward signals to the sandbox's PID 1, kill it when our
    own parent is gone, exit as it did. Never returns."""
    parent = os.getppid()
    for sig in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda signum, _frame: _signal_quietly(child, signum))
    try:
        pidfd: int | None = os.pidfd_open(child)
    except OSError:  # a kernel before 5.3: poll
        pidfd = None
    while True:
        if pidfd is not None:
            select.select([pidfd], [], [], 0.5)
        else:
            time.sleep(0.02)
        pid, status = os.waitpid(child, os.WNOHANG)
        if pid:
            break
        if os.getppid() != parent:
            _signal_quietly(child, signal.SIGKILL)
            _, status = os.waitpid(child, 0)
            break
    if os.WIFSIGNALED(status):  # die the same way, so the spawner sees what happened
        signal.signal(os.WTERMSIG(status), signal.SIG_DFL)
        os.kill(os.getpid(), os.WTERMSIG(status))
    os._exit(os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 1)


def _signal_quietly(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _build_root(newroot: str, view: View, limits: Limits, notes: list[str], *, level: str) -> None:
    """In the new mount namespace: a tmpfs root at `newroot` holding only what `view` and the system need, then
    pivot_root into it. Any failure raises SandboxUnavailable (the process is half-confined: it must not run)."""
    try:
        _mount("none", "/", None, _MS_REC | _MS_PRIVATE)
        _mount("tmpfs", newroot, "tmpfs", _MS_NOSUID | _MS_NODEV, "size=64m,mode=0755")
        # The private /tmp first: what the view shows below /tmp (a checkout in /tmp) is mounted inside it.
        os.mkdir(newroot + "/tmp", 0o755)
        _mount("tmpfs", newroot + "/tmp", "tmpfs", _MS_NOSUID | _MS_NODEV, f"size={limits.tmpfs_mb}m,mode=0755")
        for top in _SYSTEM_DIRS:
            if os.path.islink(top):
                os.symlink(os.readlink(top), newroot + top)
        shown: list[str] = []
        for path in sorted({*(d for d in _SYSTEM_DIRS if os.path.isdir(d) and not os.path.islink(d)), *view.dirs}):
            if any(path == s or path.startswith(s + os.sep) for s in shown):
                continue  # inside a directory shown already
            _bind_read_only(path, newroot + path)
            shown.append(path)
        _copy_etc(newroot)
        for path, content in view.files:
            if any(path.startswith(s + os.sep) for s in shown):
                continue  # already visible (e.g. a reward file inside site-packages)
            os.makedirs(os.path.dirname(newroot + path), mode=0o755, exist_ok=True)
            with open(newroot + path, "wb") as f:
                f.write(content)
            os.chmod(newroot + path, 0o444)
        _make_dev(newroot)
        os.mkdir(newroot + "/proc", 0o555)
        try:
            _mount("proc", newroot + "/proc", "proc", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC)
        except OSError as exc:  # e.g. a container that masks parts of /proc: then no /proc at all, never the host's
            notes.append(f"no /proc inside the sandbox ({exc})")
        _pivot_root(newroot)
        _mount("none", "/", None, _MS_REMOUNT | _MS_BIND | _MS_RDONLY | _MS_NOSUID | _MS_NODEV)
        os.mkdir(WORKDIR, 0o700)
        _libc.sethostname(b"sandbox", 7)
    except OSError as exc:
        raise SandboxUnavailable(refusal_message(level, "rlimits", notes + [f"building its filesystem: {exc}"])) from None


def _bind_read_only(src: str, target: str) -> None:
    os.makedirs(target, mode=0o755, exist_ok=True)
    _mount(src, target, None, _MS_BIND | _MS_REC)
    # A remount must keep the flags the kernel locks on the source (nosuid, nodev, noexec, atime) in a user ns.
    kept = os.statvfs(src).f_flag & (os.ST_NOSUID | os.ST_NODEV | os.ST_NOEXEC | os.ST_NOATIME | os.ST_NODIRATIME
                                     | os.ST_RELATIME)
    flags = (_MS_NOSUID if kept & os.ST_NOSUID else 0) | (_MS_NODEV if kept & os.ST_NODEV else 0)
    flags |= (_MS_NOEXEC if kept & os.ST_NOEXEC else 0) | (_MS_NOATIME if kept & os.ST_NOATIME else 0)
    flags |= (_MS_NODIRATIME if kept & os.ST_NODIRATIME else 0) | (_MS_RELATIME if kept & os.ST_RELATIME else 0)
    _mount("none", target, None, _MS_REMOUNT | _MS_BIND | _MS_RDONLY | _MS_NOSUID | flags)


def _copy_etc(newroot: str) -> None:
    os.mkdir(newroot + "/etc", 0o755)
    for name in _ETC_FILES:
        src, dst = "/etc/" + name, newroot + "/etc/" + name
        if os.path.islink(src):
            os.symlink(os.readlink(src), dst)
        elif os.path.isfile(src):
            with open(src, "rb") as f_in, open(dst, "wb") as f_out:
                f_out.write(f_in.read(_COPY_LIMIT_BYTES))
            os.chmod(dst, 0o444)
        elif os.path.isdir(src):  # alternatives: a directory of symlinks
            os.mkdir(dst, 0o755)
            for entry in os.listdir(src):
                if os.path.islink(os.path.join(src, entry)):
                    os.symlink(os.readlink(os.path.join(src, entry)), os.path.join(dst, entry))


def _make_dev(newroot: str) -> None:
    os.mkdir(newroot + "/dev", 0o755)
    for name in _DEVICES:
        if os.path.exists("/dev/" + name):
            open(newroot + "/dev/" + name, "w").close()
            _mount("/dev/" + name, newroot + "/dev/" + name, None, _MS_BIND)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                         ("stderr", "/proc/self/fd/2")):
        os.symlink(target, f"{newroot}/dev/{name}")
    os.mkdir(newroot + "/dev/shm", 0o755)
    _mount("tmpfs", newroot + "/dev/shm", "tmpfs", _MS_NOSUID | _MS_NODEV, "size=1m,mode=1777")


def _pivot_root(newroot: str) -> None:
    """Make `newroot` the root and detach the old one (pivot_root(".", "."), then unmount the old root stacked
    underneath); where the syscall number is unknown, move the mount and chroot (the denylist forbids chroot
    afterwards, so the classic chroot escape is closed too)."""
    os.chdir(newroot)
    if _SYS_PIVOT_ROOT is not None:
        _check(_libc.syscall(_SYS_PIVOT_ROOT, b".", b"."), "pivot_root")
        _check(_libc.umount2(b".", _MNT_DETACH), "umount old root")
    else:
        _mount(newroot, "/", None, 8192)  # MS_MOVE
        _check(_libc.chroot(b"."), "chroot")
    os.chdir("/")


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


def name_process(name: str) -> None:
    """Set this process's name (comm, as `ps` and /proc/PID/stat show it; 15 bytes at most)."""
    _libc.prctl(15, name.encode()[:15], 0, 0, 0)  # PR_SET_NAME


def kill_strays(info: SandboxInfo, call_pid: int = 0) -> None:
    """Kill what a call (its process `call_pid`, done with its reply) left running in this sandbox.

    In a PID namespace (or under a uid of its own) one kill(-1) reaches all of it; a SIGKILLed process never
    runs user code again, so they are reaped as they finish dying rather than waited for (`reap`, and a fork
    that finds the process limit full reaps first). Elsewhere the call's process is waited for, then, if
    something it started is left (orphans re-parent to us, a subreaper), the process tree is walked."""
    if info.pid_namespace or (info.level == "full" and info.uid >= SANDBOX_UID_BASE):
        try:
            os.kill(-1, signal.SIGKILL)  # PID 1 of its namespace or its own uid: every other process of this sandbox
        except ProcessLookupError:
            pass
        if info.pid_namespace:
            _clear_sysv_ipc()
        reap(0.0)
        return
    if call_pid:
        _wait_for(call_pid, 1.0)
    if _has_children():
        for _ in range(20):
            pids = descendants(os.getpid())
            if not pids:
                break
            for p in pids:
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            reap(0.05)
    reap(0.5)


def _wait_for(pid: int, budget_s: float) -> None:
    """Reap `pid` (which is exiting by itself), killing it if it is still there after `budget_s`."""
    end = time.monotonic() + budget_s
    while True:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return
        if done:
            return
        if time.monotonic() > end:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return
        time.sleep(0.0002)


def _clear_sysv_ipc() -> None:
    """Remove the SysV shared memory, semaphores and message queues of this sandbox's IPC namespace (a call
    could leave one for the next call to read)."""
    for table, remove in (("shm", lambda i: _libc.shmctl(i, 0, None)), ("sem", lambda i: _libc.semctl(i, 0, 0)),
                          ("msg", lambda i: _libc.msgctl(i, 0, None))):  # 0 = IPC_RMID
        try:
            with open(f"/proc/sysvipc/{table}") as f:
                ids = [int(line.split()[1]) for line in f.readlines()[1:] if line.strip()]
        except (OSError, ValueError, IndexError):
            continue
        for ipc_id in ids:
            remove(ipc_id)


def _has_children() -> bool:
    """We are a subreaper: without a child of our own there is no descendant left anywhere."""
    try:
        os.waitpid(-1, os.WNOHANG)
    except ChildProcessError:
        return False
    return True


def reap(budget_s: float) -> None:
    """Reap exited children until none is left or `budget_s` has passed (0: those already exited)."""
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
