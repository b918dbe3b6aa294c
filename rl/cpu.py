"""CPU threads and cores of one actor process (the rollout workers and trainer ranks on CPU).

In `sync` mode the phases take turns, so every actor may use every core. When generation overlaps training
(trainer.async_mode), the rollout workers and the trainer ranks run at once: two torch thread pools on the same
cores would preempt each other mid-GEMM, so launch/cluster.py gives each actor its own cores and `use_cpus` pins
the whole process to them.
"""

from __future__ import annotations

import logging
import os

import torch

log = logging.getLogger("rlvr")


def use_cpus(threads: int, cores: list[int] | None) -> None:
    """torch threads for this process (`threads` > 0), and with `cores` every thread of it pinned to those CPU ids
    (threads started later inherit the mask). Cores this machine does not have are left out; with none left (an
    actor placed on another node of a CPU cluster) the process stays unpinned and says so."""
    if cores:
        usable = sorted(set(cores) & os.sched_getaffinity(0))
        if usable:
            for tid in _threads_of_this_process():
                try:
                    os.sched_setaffinity(tid, usable)
                except OSError:  # a thread that ended since the listing
                    pass
            threads = len(usable)
        else:
            log.warning("CPU cores %s are not available to this process (%s); running unpinned", cores,
                        sorted(os.sched_getaffinity(0)))
    if threads > 0:
        torch.set_num_threads(threads)


def _threads_of_this_process() -> list[int]:
    try:
        return [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:  # no procfs: the calling thread only
        return [0]


def split_cores(available: list[int], counts: list[int], requested: list[int]) -> list[list[list[int]]]:
    """Disjoint cores for groups of actors: group g has counts[g] actors of requested[g] cores each (0: share the
    rest in proportion to the actors of the groups that asked for 0). Returns, per group, each actor's cores.
    Raises ValueError when the request does not fit."""
    fixed = sum(c * r for c, r in zip(counts, requested) if r > 0)
    free = len(available) - fixed
    auto = [g for g, r in enumerate(requested) if r <= 0]
    auto_actors = sum(counts[g] for g in auto)
    if free < auto_actors or free < 0:
        raise ValueError(f"{len(available)} CPU cores cannot give {sum(counts)} actors their own cores "
                         f"({fixed} asked for explicitly, {auto_actors} actors need at least one more)")
    per = dict.fromkeys(range(len(counts)), 0)
    for g, r in enumerate(requested):
        per[g] = r if r > 0 else 0
    left = free
    for n, g in enumerate(auto):  # proportional to actors; rounding gives the last group the remainder
        share = left if n == len(auto) - 1 else max(1, round(free * counts[g] / auto_actors))
        per[g] = max(1, share // counts[g])
        left -= per[g] * counts[g]
    out, pos = [], 0
    for g, c in enumerate(counts):
        group = []
        for _ in range(c):
            group.append(available[pos:pos + per[g]])
            pos += per[g]
        out.append(group)
    return out
