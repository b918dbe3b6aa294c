"""Control groups hold a worker's memory and process limits for all its processes together (issue 12: four
children each under a 512 MiB RLIMIT_AS held 1.27 GB between them). Real cgroups, real reward workers; each
test that needs a writable cgroup skips where the host gives none (say, a non-root container)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest

from reward import cgroup
from reward.runner import RewardRunner

PARENT, WHY = cgroup.find("auto")
needs_cgroup = pytest.mark.skipif(PARENT is None, reason=f"no writable cgroup here: {WHY}")

FNS = textwrap.dedent('''
    import os, signal, time

    def fork_and_hold(prompt, completion, **row):
        """Four children, each touching `mb` MiB (each alone is far under the per-process limit)."""
        mb = int(row["mb"])
        kids = []
        for _ in range(4):
            pid = os.fork()
            if pid == 0:
                block = bytearray(mb << 20)
                for i in range(0, len(block), 4096):
                    block[i] = 1
                time.sleep(1.0)
                os._exit(0)
            kids.append(pid)
        codes = [os.waitpid(p, 0)[1] for p in kids]
        killed = [os.WTERMSIG(c) for c in codes if os.WIFSIGNALED(c)]
        if killed:
            raise RuntimeError(f"children killed by signals {killed}")
        return 1.0

    def count_forks(prompt, completion, **row):
        """How many sleeping children it can have at once, up to `most`."""
        kids = []
        try:
            for _ in range(int(row["most"])):
                pid = os.fork()
                if pid == 0:
                    time.sleep(30)
                    os._exit(0)
                kids.append(pid)
        except OSError:
            pass
        for p in kids:
            os.kill(p, signal.SIGKILL)
            os.waitpid(p, 0)
        return {"reward": 1.0, "forks": float(len(kids))}

    def escape(prompt, completion, **row):
        """A daemon in its own session that re-forks without end (each generation records its pid and exits,
        so a list of the process tree taken at any moment is out of date), then a hang past the deadline."""
        if os.fork() == 0:
            os.setsid()
            while True:
                if os.fork() != 0:
                    os._exit(0)
                with open(row["pids"], "a") as f:
                    f.write(f"{os.getpid()}\\n")
                time.sleep(0.005)
        time.sleep(60)
        return 1.0
''')


@pytest.fixture
def fns_file(tmp_path):
    path = tmp_path / "cg_fns.py"
    path.write_text(FNS)
    return str(path)


def _levels() -> list[str]:
    return ["full", "rlimits"] if os.geteuid() == 0 else ["rlimits"]


@needs_cgroup
@pytest.mark.parametrize("level", _levels())
def test_memory_limit_holds_for_all_processes_together(fns_file, level):
    """4 x 200 MiB children under memory_limit_mb=512: each is far under its RLIMIT_AS, together they are
    over the group's limit, so the kernel kills one and the call says why. Without the group they all live."""
    row = {"prompt": "p", "completion": "c", "mb": 200}
    with RewardRunner([f"{fns_file}:fork_and_hold"], timeout_s=60, num_workers=1, memory_limit_mb=512,
                      sandbox=level) as runner:
        assert "hold for each worker's processes together" in runner.limits_note
        [held] = runner.score([row])
        [small] = runner.score([dict(row, mb=20)])  # the worker still serves calls under the limit
    assert held.status == "error", held
    assert "cgroup memory limit, memory_limit_mb=512" in held.error, held.error
    assert (small.status, small.reward) == ("ok", 1.0), small
    with RewardRunner([f"{fns_file}:fork_and_hold"], timeout_s=60, num_workers=1, memory_limit_mb=512,
                      sandbox=level, cgroup="off") as runner:
        assert "per-process rlimits only" in runner.limits_note
        [unbounded] = runner.score([row])
    assert (unbounded.status, unbounded.reward) == ("ok", 1.0), unbounded  # the rlimit weakness the group closes


@needs_cgroup
@pytest.mark.parametrize("level", _levels())
def test_process_limit_holds_for_the_whole_sandbox(fns_file, level):
    """pids.max counts every process of the sandbox, whatever its uid (RLIMIT_NPROC does not bind root)."""
    row = {"prompt": "p", "completion": "c", "most": 100}
    with RewardRunner([f"{fns_file}:count_forks"], timeout_s=60, num_workers=1, max_processes=24,
                      sandbox=level) as runner:
        [bounded] = runner.score([row])
    assert bounded.status == "ok", bounded
    assert bounded.metrics["count_forks/forks"] < 24, bounded.metrics  # the worker's own processes count too


@needs_cgroup
def test_teardown_kills_what_left_the_process_tree(fns_file, tmp_path):
    """A call that timed out left a re-forking daemon outside its session: killing the worker kills the
    whole group, the daemon's newest generation included, and closing the runner leaves no group."""
    pids = tmp_path / "daemon.pids"
    with RewardRunner([f"{fns_file}:escape"], timeout_s=2, num_workers=1, sandbox="rlimits", ) as runner:
        [result] = runner.score([{"prompt": "p", "completion": "c", "pids": str(pids)}])
        assert result.status == "timeout", result
        seen = [int(line) for line in pids.read_text().split()]
        assert len(seen) > 3, seen  # it was re-forking when its worker was killed
        time.sleep(0.5)
        alive = [p for p in seen[-20:] if _state(p) not in (None, "Z")]
        assert not alive, f"daemon generations survived the worker's teardown: {alive}"
        assert len(pids.read_text().split()) == len(seen), "the daemon kept forking after the teardown"
    assert not _own_groups(), _own_groups()


def test_required_refuses_without_a_cgroup(monkeypatch):
    """reward.cgroup=required where none can be made: a refusal naming what to do, before any worker starts."""
    monkeypatch.setattr(cgroup, "_mounts", lambda: [])  # as on a host with no cgroup filesystem mounted
    with pytest.raises(cgroup.CgroupUnavailable, match="Delegate=yes.*reward.cgroup=auto"):
        RewardRunner(["arith"], num_workers=1, sandbox="rlimits", cgroup="required")
    parent, why = cgroup.find("auto")
    assert parent is None and why == "no cgroup filesystem mounted"
    assert cgroup.find("off") == (None, "reward.cgroup=off")
    with pytest.raises(ValueError, match="reward.cgroup must be one of auto, required, off"):
        cgroup.find("yes")


@needs_cgroup
def test_groups_of_a_dead_trainer_are_removed():
    """A trainer killed before it removed its groups leaves them behind; the next one to look removes them."""
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    stale = PARENT.create(f"{cgroup.PREFIX}{int(gone.stdout)}-0", memory_mb=256, max_processes=8)
    mine = PARENT.create(f"{cgroup.PREFIX}{os.getpid()}-stale-test", memory_mb=256, max_processes=8)
    try:
        cgroup.find("auto")
        assert not any(os.path.exists(p) for p in stale.dirs.values())
        assert all(os.path.exists(p) for p in mine.dirs.values())  # a live trainer's group stays
    finally:
        stale.remove()
        mine.remove()


def _state(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return None


def _own_groups() -> list[str]:
    mine = f"{cgroup.PREFIX}{os.getpid()}-"
    return [os.path.join(base, n) for base in set(PARENT.dirs.values()) for n in os.listdir(base)
            if n.startswith(mine)]
