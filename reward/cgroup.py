"""Control groups for reward workers: a memory and a process limit on everything a worker's sandbox runs,
together, so that forking cannot dodge them (rlimits count per process: four children each under a 512 MiB
RLIMIT_AS hold 2 GiB between them), and a teardown that kills the whole group at once.

Each worker gets its own group, made by the pool before the worker runs any user code and removed after it
exited. Groups are made under the cgroup the trainer itself runs in, so they nest inside whatever the cluster
scheduler or container gave it:

- cgroup v2 (the unified hierarchy): the trainer's cgroup must have `memory` and `pids` in its
  `cgroup.subtree_control`, i.e. be delegated to it (systemd `Delegate=yes`, a Kubernetes/Slurm setup that
  delegates, or root on a host where the cgroup holds no processes). Limits: `memory.max`, `memory.swap.max`
  = 0, `pids.max`; teardown: `cgroup.kill`.
- cgroup v1 (separate `memory` and `pids` hierarchies, still common in containers): a writable directory
  under the trainer's cgroup of each controller. Limits: `memory.limit_in_bytes` (and `memsw` where swap is
  accounted), `pids.max`; teardown kills every process the group lists until it is empty.

Where neither is writable `find()` says why, and the pool falls back to per-process rlimits (see
reward/sandbox.py for what that leaves open). Nothing here is needed for correctness of the limits a
single process has: the rlimits stay in force either way.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import signal
import time

PREFIX = "rlvr-reward-"
"""Name prefix of the groups this module makes: PREFIX + the making process's pid + a counter."""

MODES = ("auto", "required", "off")
"""`reward.cgroup`: use one where the host delegates it, refuse to start without one, or never use one."""


class CgroupUnavailable(RuntimeError):
    """cgroup=required and no cgroup is writable (the message says why and how to get one)."""


@dataclasses.dataclass(frozen=True)
class Parent:
    """Where this process may make groups: one directory per controller (the same one for v2)."""

    version: int
    dirs: dict[str, str]
    """Controller ("memory", "pids") -> the directory new groups of that controller go under."""

    def describe(self) -> str:
        return f"cgroup v{self.version} ({', '.join(sorted(self.dirs))})"

    def create(self, name: str, *, memory_mb: int | None, max_processes: int | None) -> Group:
        """A new group `name` with the limits (None: that one unlimited). Raises OSError if the host refuses."""
        made: dict[str, str] = {}
        try:
            for controller, base in self.dirs.items():
                path = os.path.join(base, name)
                if path not in made.values():
                    os.mkdir(path, 0o755)
                made[controller] = path
            group = Group(self.version, made)
            group.set_limits(memory_mb, max_processes)
        except OSError:
            for path in set(made.values()):
                _rmdir(path)
            raise
        return group


@dataclasses.dataclass
class Group:
    """One worker's group (its directory per controller)."""

    version: int
    dirs: dict[str, str]

    def set_limits(self, memory_mb: int | None, max_processes: int | None) -> None:
        memory = self.dirs.get("memory")
        if memory is not None and memory_mb is not None:
            limit = str(memory_mb * 1024 * 1024)
            if self.version == 2:
                _write(memory, "memory.max", limit)
                _write(memory, "memory.swap.max", "0", missing_ok=True)  # no swap: the limit is what it holds
            else:
                _write(memory, "memory.limit_in_bytes", limit)
                _write(memory, "memory.memsw.limit_in_bytes", limit, missing_ok=True)  # only with swap accounting
        pids = self.dirs.get("pids")
        if pids is not None and max_processes is not None:
            _write(pids, "pids.max", str(max_processes))

    def add(self, pid: int) -> None:
        """Move `pid` into the group (in every controller); its children from now on are born in it."""
        for path in set(self.dirs.values()):
            _write(path, "cgroup.procs", str(pid))

    def pids(self) -> set[int]:
        found: set[int] = set()
        for path in set(self.dirs.values()):
            try:
                with open(os.path.join(path, "cgroup.procs")) as f:
                    found |= {int(line) for line in f if line.strip()}
            except FileNotFoundError:
                continue
        return found

    def oom_kills(self) -> int:
        """Processes the kernel killed for this group's memory limit so far."""
        memory = self.dirs.get("memory")
        if memory is None:
            return 0
        name = "memory.events" if self.version == 2 else "memory.oom_control"
        try:
            with open(os.path.join(memory, name)) as f:
                for line in f:
                    key, _, value = line.partition(" ")
                    if key == "oom_kill":
                        return int(value)
        except (OSError, ValueError):
            pass
        return 0

    def kill(self, timeout_s: float = 5.0) -> bool:
        """SIGKILL every process in the group and wait until it is empty; False if it is not after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        if self.version == 2:
            try:
                _write(self.dirs[next(iter(self.dirs))], "cgroup.kill", "1")
            except OSError:  # kernels before 5.14: kill them one by one as on v1
                pass
        while pids := self.pids():
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)  # a process forked meanwhile is listed next round
                except ProcessLookupError:
                    pass
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def remove(self) -> None:
        """Kill what is left and remove the group's directories."""
        self.kill()
        for path in set(self.dirs.values()):
            _rmdir(path)


def find(mode: str = "auto") -> tuple[Parent | None, str]:
    """Where groups can be made, or None and why. mode "off" never uses one; "required" raises
    CgroupUnavailable instead of returning None."""
    if mode not in MODES:
        raise ValueError(f"reward.cgroup must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "off":
        return None, "reward.cgroup=off"
    reasons: list[str] = []
    for probe in (_find_v2, _find_v1):
        parent = probe(reasons)
        if parent is not None:
            _remove_stale(parent)
            return parent, parent.describe()
    why = "; ".join(reasons) or "no cgroup filesystem mounted"
    if mode == "required":
        raise CgroupUnavailable(
            f"reward.cgroup=required but no cgroup can be made here ({why}). Run the trainer in a cgroup v2 "
            "delegated to it (memory and pids in its cgroup.subtree_control, e.g. systemd-run --user -p "
            "Delegate=yes, or a container with a writable cgroup), or set reward.cgroup=auto to fall back to "
            "per-process rlimits")
    return None, why


def _find_v2(reasons: list[str]) -> Parent | None:
    mount = next((m for m, fstype, _ in _mounts() if fstype == "cgroup2"), None)
    if mount is None:
        return None
    own = _own_paths().get("")
    if own is None:
        reasons.append("cgroup v2: this process is in no v2 group")
        return None
    base = os.path.join(mount, own.lstrip("/"))
    available = set(_read(base, "cgroup.controllers").split())
    missing = {"memory", "pids"} - available
    if missing:
        reasons.append(f"cgroup v2 at {base}: {', '.join(sorted(missing))} not delegated (cgroup.controllers)")
        return None
    enabled = set(_read(base, "cgroup.subtree_control").split())
    if not {"memory", "pids"} <= enabled:
        try:  # refused (EBUSY) while the group holds processes itself: the v2 "no internal processes" rule
            _write(base, "cgroup.subtree_control", " ".join(f"+{c}" for c in ("memory", "pids") if c not in enabled))
        except OSError as exc:
            reasons.append(f"cgroup v2 at {base}: memory and pids cannot be enabled for child groups "
                           f"({os.strerror(exc.errno or errno.EPERM)})")
            return None
    if not _writable_dir(base):
        reasons.append(f"cgroup v2 at {base}: not writable by this user")
        return None
    return Parent(2, {"memory": base, "pids": base})


def _find_v1(reasons: list[str]) -> Parent | None:
    own = _own_paths()
    dirs: dict[str, str] = {}
    for mount, fstype, options in _mounts():
        if fstype != "cgroup":
            continue
        for controller in ("memory", "pids"):
            if controller in options.split(",") and controller not in dirs:
                path = next((p for names, p in own.items() if controller in names.split(",")), None)
                if path is None:
                    continue
                base = os.path.join(mount, path.lstrip("/"))
                if _writable_dir(base):
                    dirs[controller] = base
                else:
                    reasons.append(f"cgroup v1 {controller} at {base}: not writable by this user")
    return Parent(1, dirs) if dirs else None


def _mounts() -> list[tuple[str, str, str]]:
    """(mount point, fs type, super options) of each mount, from /proc/self/mountinfo."""
    out = []
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                fields = line.split()
                if " - " not in line or len(fields) < 5:
                    continue
                after = line.split(" - ", 1)[1].split()
                out.append((_unescape(fields[4]), after[0], after[2] if len(after) > 2 else ""))
    except OSError:
        pass
    return out


def _own_paths() -> dict[str, str]:
    """Controllers ("memory", "cpu,cpuacct", "" for v2) -> this process's group path, from /proc/self/cgroup."""
    out = {}
    try:
        with open("/proc/self/cgroup") as f:
            for line in f:
                _, controllers, path = line.rstrip("\n").split(":", 2)
                out[controllers] = path
    except (OSError, ValueError):
        pass
    return out


def _remove_stale(parent: Parent) -> None:
    """Remove groups left by a trainer process that no longer exists (one killed before it could clean up)."""
    for base in set(parent.dirs.values()):
        try:
            names = os.listdir(base)
        except OSError:
            continue
        for name in names:
            owner = name[len(PREFIX):].split("-", 1)[0]
            if name.startswith(PREFIX) and owner.isdigit() and not _alive(int(owner)):
                stale = Group(parent.version, {"memory": os.path.join(base, name)})
                stale.remove()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _writable_dir(path: str) -> bool:
    return os.path.isdir(path) and os.access(path, os.W_OK | os.X_OK)


def _read(base: str, name: str) -> str:
    try:
        with open(os.path.join(base, name)) as f:
            return f.read()
    except OSError:
        return ""


def _write(base: str, name: str, value: str, missing_ok: bool = False) -> None:
    try:
        with open(os.path.join(base, name), "w") as f:
            f.write(value)
    except FileNotFoundError:
        if not missing_ok:
            raise


def _rmdir(path: str) -> None:
    for _ in range(50):  # the kernel frees a group a moment after its last process is reaped
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno != errno.EBUSY:
                return
            time.sleep(0.01)


def _unescape(path: str) -> str:
    return path.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")
