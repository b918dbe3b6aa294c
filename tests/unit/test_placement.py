"""GPU placement plans (launch/placement.py): the layouts of docs/gpu_cluster.md, and every refusal."""

from __future__ import annotations

import pytest

from launch.placement import Node, PlacementError, plan_placement


def nodes(*gpus: int, cpus: float = 64) -> list[Node]:
    return [Node(f"id{i}", f"10.0.0.{i + 1}", g, cpus) for i, g in enumerate(gpus)]


def node_of(plan, bundle: int, ns: list[Node]) -> str:
    return ns[plan.bundle_nodes[bundle]].ip


def test_one_gpu_colocated_shares_the_gpu():
    ns = nodes(1)
    plan = plan_placement(ns, rollout_workers=1, rollout_gpus=1, trainer_workers=1, trainer_gpus=1, mode="colocated")
    assert plan.rollout == ((0,),) and plan.trainer == (0,)
    assert plan.bundles == ({"GPU": 1.0, "CPU": 2.0, "node:10.0.0.1": 0.001},)  # trainer + rollout actor
    assert plan.rollout_actor(0) == (0, 0.5) and plan.trainer_actor(0) == (0, 0.5)


def test_one_gpu_cannot_split():
    with pytest.raises(PlacementError, match=r"needs 1×1 rollout \+ 1×1 trainer = 2 GPUs.*colocated"):
        plan_placement(nodes(1), rollout_workers=1, rollout_gpus=1, trainer_workers=1, trainer_gpus=1)


def test_eight_gpus_split_tp1():
    ns = nodes(8)
    plan = plan_placement(ns, rollout_workers=4, rollout_gpus=1, trainer_workers=4, trainer_gpus=1)
    assert plan.rollout == ((0,), (1,), (2,), (3,)) and plan.trainer == (4, 5, 6, 7)
    assert len(plan.bundles) == 8 and all(b["GPU"] == 1.0 for b in plan.bundles)
    assert sum(b.get("CPU", 0) for b in plan.bundles) == 8
    assert plan.rollout_actor(2) == (2, 1.0) and plan.trainer_actor(3) == (7, 1.0)
    assert not set(b for e in plan.rollout for b in e) & set(plan.trainer)  # split: disjoint GPUs


def test_tensor_parallel_engine_holds_no_gpu_itself():
    ns = nodes(8)
    plan = plan_placement(ns, rollout_workers=2, rollout_gpus=2, trainer_workers=4, trainer_gpus=1)
    assert plan.rollout == ((0, 1), (2, 3))
    # the actor sits in its first bundle without a GPU; vLLM's TP workers take the bundles
    assert plan.rollout_actor(1) == (2, 0.0)
    assert plan.engine_kwargs(1) == {"bundle_indices": [2, 3], "gpu_share": 1.0}
    assert plan.bundles[1] == {"GPU": 1.0, "node:10.0.0.1": 0.001}  # TP rank 1: no actor, no CPU


def test_eight_gpus_colocated_tp2():
    ns = nodes(8)
    plan = plan_placement(ns, rollout_workers=4, rollout_gpus=2, trainer_workers=8, trainer_gpus=1, mode="colocated")
    assert plan.rollout == ((0, 1), (2, 3), (4, 5), (6, 7))
    assert plan.trainer == tuple(range(8))  # rank i on GPU i: rank 0 shares with engine 0
    assert plan.engine_kwargs(0) == {"bundle_indices": [0, 1], "gpu_share": 0.5}
    assert [b.get("CPU", 0) for b in plan.bundles] == [2, 1, 2, 1, 2, 1, 2, 1]


def test_two_nodes_split_rollout_on_one_node_trainer_on_the_other():
    ns = nodes(8, 8)
    plan = plan_placement(ns, rollout_workers=4, rollout_gpus=2, trainer_workers=8, trainer_gpus=1)
    rollout_nodes = {node_of(plan, b, ns) for e in plan.rollout for b in e}
    trainer_nodes = {node_of(plan, b, ns) for b in plan.trainer}
    assert len(rollout_nodes) == 1 and len(trainer_nodes) == 1 and rollout_nodes != trainer_nodes
    for b in range(len(plan.bundles)):  # every bundle is pinned to the node the plan chose
        assert f"node:{node_of(plan, b, ns)}" in plan.bundles[b]


def test_tp_engines_never_straddle_nodes():
    ns = nodes(4, 4)
    plan = plan_placement(ns, rollout_workers=2, rollout_gpus=4, trainer_workers=0, trainer_gpus=0)
    for engine in plan.rollout:
        assert len({node_of(plan, b, ns) for b in engine}) == 1
    with pytest.raises(PlacementError, match="needs 8 GPUs on one node"):
        plan_placement(ns, rollout_workers=1, rollout_gpus=8, trainer_workers=0, trainer_gpus=0)


def test_best_fit_leaves_room_for_wide_engines():
    ns = nodes(6, 2)  # the TP-2 engine takes the 2-GPU node whole, leaving 6 GPUs together on the other
    plan = plan_placement(ns, rollout_workers=1, rollout_gpus=2, trainer_workers=4, trainer_gpus=1)
    assert node_of(plan, plan.rollout[0][0], ns) == "10.0.0.2"
    assert {node_of(plan, b, ns) for b in plan.trainer} == {"10.0.0.1"}


def test_trainer_ranks_pack_onto_the_freest_node():
    ns = nodes(8, 8, 8)
    plan = plan_placement(ns, rollout_workers=8, rollout_gpus=1, trainer_workers=12, trainer_gpus=1)
    counts = {}
    for b in plan.trainer:
        counts[node_of(plan, b, ns)] = counts.get(node_of(plan, b, ns), 0) + 1
    assert sorted(counts.values()) == [4, 8]  # a whole node plus the rest, not 4+4+4


def test_cpu_only_parts_get_no_bundles():
    plan = plan_placement(nodes(2), rollout_workers=2, rollout_gpus=1, trainer_workers=2, trainer_gpus=0)
    assert plan.trainer == () and len(plan.bundles) == 2


@pytest.mark.parametrize("kwargs, words", [
    (dict(rollout_workers=2, rollout_gpus=1, trainer_workers=4, trainer_gpus=1, mode="colocated"),
     ["2×1", "== trainer.num_workers (4)", "trainer.num_workers=2"]),
    (dict(rollout_workers=1, rollout_gpus=1, trainer_workers=1, trainer_gpus=0, mode="colocated"),
     ["set both"]),
    (dict(rollout_workers=1, rollout_gpus=0.5, trainer_workers=1, trainer_gpus=1), ["rollout.gpus_per_worker=0.5",
                                                                                   "whole GPUs"]),
    (dict(rollout_workers=1, rollout_gpus=1, trainer_workers=2, trainer_gpus=2), ["trainer.num_workers=4"]),
    (dict(rollout_workers=1, rollout_gpus=1, trainer_workers=1, trainer_gpus=1, mode="mixed"), ["split or colocated"]),
    (dict(rollout_workers=3, rollout_gpus=4, trainer_workers=8, trainer_gpus=1), ["20 GPUs", "has 16"]),
])
def test_refusals_say_what_to_change(kwargs, words):
    with pytest.raises(PlacementError) as e:
        plan_placement(nodes(8, 8), **kwargs)
    for w in words:
        assert w in str(e.value)


def test_too_few_cpus_is_an_error():
    with pytest.raises(PlacementError, match="has 1 CPUs for the 2 actors.*--num-cpus"):
        plan_placement(nodes(1, cpus=1), rollout_workers=1, rollout_gpus=1, trainer_workers=1, trainer_gpus=1,
                       mode="colocated")


def test_plans_are_deterministic_whatever_the_node_order():
    a = plan_placement(nodes(8, 4), rollout_workers=2, rollout_gpus=2, trainer_workers=6, trainer_gpus=1)
    b = plan_placement(list(reversed(nodes(8, 4))), rollout_workers=2, rollout_gpus=2, trainer_workers=6,
                       trainer_gpus=1)
    ips = lambda plan, ns: [ns[n].ip for n in plan.bundle_nodes]  # noqa: E731
    assert ips(a, nodes(8, 4)) == ips(b, list(reversed(nodes(8, 4))))
