"""rl/cpu.py and launch/cluster.plan_cpus: disjoint CPU cores for the rollout workers and trainer ranks when they
run at once (trainer.async_mode other than sync), and the pinning itself on this process's own threads."""

from __future__ import annotations

import os
import threading

import pytest
import torch

from launch.cluster import plan_cpus
from launch.config import ConfigError, load_config
from rl.cpu import split_cores, use_cpus


def _disjoint(groups: list[list[list[int]]]) -> bool:
    cores = [c for g in groups for actor in g for c in actor]
    return len(cores) == len(set(cores))


@pytest.mark.parametrize("n, counts, requested, sizes", [
    (2, [1, 1], [0, 0], [[1], [1]]),
    (16, [1, 2], [0, 0], [[5], [5, 5]]),      # in proportion to the actors: 1/3 and 2/3
    (16, [2, 2], [3, 0], [[3, 3], [5, 5]]),   # rollout asked for 3 each, trainer shares the remaining 10
    (8, [1, 1], [2, 6], [[2], [6]]),
    (5, [1, 3], [0, 0], [[1], [1, 1, 1]]),    # rounding leaves a core idle rather than overlap
])
def test_split_cores_gives_every_actor_its_own_cores(n, counts, requested, sizes):
    groups = split_cores(list(range(n)), counts, requested)
    assert [[len(a) for a in g] for g in groups] == sizes
    assert _disjoint(groups)
    assert all(c in range(n) for g in groups for a in g for c in a)


@pytest.mark.parametrize("n, counts, requested", [(2, [2, 1], [0, 0]), (4, [1, 1], [2, 3]), (4, [1, 2], [3, 0])])
def test_split_cores_refuses_what_does_not_fit(n, counts, requested):
    with pytest.raises(ValueError, match=f"{n} CPU cores cannot give {sum(counts)} actors their own cores"):
        split_cores(list(range(n)), counts, requested)


def test_plan_cpus_is_empty_in_sync_mode_and_disjoint_when_overlapped():
    assert plan_cpus(load_config(None, [])) == {}
    cfg = load_config(None, ["trainer.async_mode=one_step_off", "algorithm.loss.tis_level=token"])
    cores = len(os.sched_getaffinity(0))
    plan = plan_cpus(cfg)
    if cores < 2:  # one core cannot be split: the run goes on unpinned (with a warning)
        assert plan == {}
    else:
        assert len(plan["rollout"]) == 1 and len(plan["trainer"]) == 1
        assert _disjoint([plan["rollout"], plan["trainer"]])


def test_plan_cpus_with_explicit_threads_that_do_not_fit_is_a_config_error():
    cores = len(os.sched_getaffinity(0))
    cfg = load_config(None, ["trainer.async_mode=one_step_off", "algorithm.loss.tis_level=token",
                             f"trainer.threads_per_worker={cores}"])
    with pytest.raises(ConfigError, match=r"rollout.threads_per_worker / trainer.threads_per_worker"):
        plan_cpus(cfg)


def test_use_cpus_pins_every_thread_of_the_process_and_sets_torch_threads():
    """The mask and torch's thread count are restored afterwards, so nothing leaks into later tests."""
    before, threads_before = os.sched_getaffinity(0), torch.get_num_threads()
    core = min(before)
    started = threading.Event()
    stop = threading.Event()

    def idle():
        started.set()
        stop.wait(10)

    other = threading.Thread(target=idle)
    other.start()
    started.wait(5)
    try:
        use_cpus(0, [core, 10_000])  # a core this machine lacks is left out
        assert os.sched_getaffinity(0) == {core}
        assert os.sched_getaffinity(other.native_id) == {core}
        assert torch.get_num_threads() == 1
    finally:
        stop.set()
        other.join()
        for tid in os.listdir("/proc/self/task"):
            try:
                os.sched_setaffinity(int(tid), before)
            except OSError:
                pass
        torch.set_num_threads(threads_before)
