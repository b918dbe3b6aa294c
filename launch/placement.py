"""GPU placement: which GPU of which node each rollout engine and trainer rank gets.

A recipe states GPU counts only: R rollout workers with TP GPUs each (`rollout.gpus_per_worker`),
W trainer ranks with one GPU each, and a mode:
- `split`: rollout and trainer GPUs are disjoint (weights move by NCCL broadcast);
- `colocated`: every GPU holds one trainer rank and one rollout TP worker, which sleeps while the
  trainer trains (needs R·TP == W; weights move by CUDA IPC on the same GPU).
`plan_placement` is pure (a node list in, bundles and assignments out) so every layout is unit
tested without GPUs; `cluster_nodes`, `create_placement_group` and `actor_options` are the thin Ray
part. The plan becomes one placement group with one bundle per GPU, pinned to its node with Ray's
`node:<ip>` resource; vLLM's TP workers take their bundles through VLLM_RAY_BUNDLE_INDICES.

    plan = plan_placement(cluster_nodes(), rollout_workers=2, rollout_gpus=2, trainer_workers=4,
                          trainer_gpus=1, mode="split")
    pg = create_placement_group(plan)
"""

from __future__ import annotations

from dataclasses import dataclass

MODES = ("split", "colocated")
COLOCATED_SHARE = 0.5
"""Ray's GPU accounting when two actors share a GPU; real memory is governed by vLLM's
gpu_memory_utilization and its sleep mode, not by this number."""


class PlacementError(ValueError):
    """The requested layout does not fit the cluster; the message says what to change."""


@dataclass(frozen=True)
class Node:
    node_id: str
    ip: str
    gpus: int
    cpus: float


@dataclass(frozen=True)
class Placement:
    mode: str
    bundles: tuple[dict[str, float], ...]
    """Ray placement-group bundles, one per GPU, each pinned to its node."""
    bundle_nodes: tuple[int, ...]
    """Index (into the node list) of each bundle's node."""
    rollout: tuple[tuple[int, ...], ...]
    """Per rollout engine, the bundles of its TP GPUs (all on one node); empty when rollout is on CPU."""
    trainer: tuple[int, ...]
    """Per trainer rank, its bundle; empty when the trainer is on CPU."""
    rollout_share: float
    trainer_share: float

    def rollout_actor(self, i: int) -> tuple[int, float]:
        """(bundle, num_gpus) of rollout actor i. With TP > 1 the actor holds no GPU: vLLM's Ray
        workers take the engine's bundles (`vllm_env`)."""
        bundles = self.rollout[i]
        return bundles[0], (self.rollout_share if len(bundles) == 1 else 0.0)

    def trainer_actor(self, rank: int) -> tuple[int, float]:
        return self.trainer[rank], self.trainer_share

    def engine_kwargs(self, i: int) -> dict:
        """What the vLLM engine of rollout worker i needs to find its GPUs (rollout/vllm.py)."""
        return {"bundle_indices": list(self.rollout[i]), "gpu_share": self.rollout_share}

    def describe(self, nodes: list[Node]) -> str:
        lines = [f"placement {self.mode}: {len(self.bundles)} GPUs"]
        for i, bundles in enumerate(self.rollout):
            lines.append(f"  rollout {i}: {len(bundles)} GPU(s) on {nodes[self.bundle_nodes[bundles[0]]].ip}")
        for rank, b in enumerate(self.trainer):
            lines.append(f"  trainer rank {rank}: {nodes[self.bundle_nodes[b]].ip}")
        return "\n".join(lines)


def _whole(value: float, key: str, allowed: str) -> int:
    if value != int(value) or value < 0:
        raise PlacementError(f"{key}={value:g}: state whole GPUs ({allowed}); GPU sharing comes from "
                             f"rollout.placement=colocated, not from fractions")
    return int(value)


def plan_placement(nodes: list[Node], *, rollout_workers: int, rollout_gpus: float, trainer_workers: int,
                   trainer_gpus: float, mode: str = "split") -> Placement:
    """Assign GPUs: rollout engines first (each on one node, best fit), then trainer ranks."""
    if mode not in MODES:
        raise PlacementError(f"rollout.placement={mode!r}: use split or colocated")
    tp = _whole(rollout_gpus, "rollout.gpus_per_worker", "0 on CPU, or the tensor-parallel size")
    g = _whole(trainer_gpus, "trainer.gpus_per_worker", "0 on CPU or 1")
    if g > 1:
        raise PlacementError(f"trainer.gpus_per_worker={g}: a trainer rank drives one GPU; use "
                             f"trainer.num_workers={trainer_workers * g} instead")
    if mode == "colocated":
        _check_colocated(rollout_workers, tp, trainer_workers, g)
    order = sorted(range(len(nodes)), key=lambda n: (-nodes[n].gpus, nodes[n].ip, nodes[n].node_id))
    free = {n: nodes[n].gpus for n in order}
    _check_total(nodes, free, mode, rollout_workers, tp, trainer_workers, g)
    slots: list[int] = []  # the node of each bundle, in bundle order
    rollout = _place_engines(nodes, order, free, slots, rollout_workers if tp else 0, tp)
    if mode == "colocated":
        trainer = tuple(range(trainer_workers))  # rank i shares GPU i: rank 0 sits with engine 0
    else:
        trainer = _place_ranks(order, free, slots, trainer_workers if g else 0)
    return _finish(nodes, mode, slots, rollout, trainer)


def _check_total(nodes: list[Node], free: dict[int, int], mode: str, rollout_workers: int, tp: int,
                 trainer_workers: int, g: int) -> None:
    need = rollout_workers * tp + (0 if mode == "colocated" else trainer_workers * g)
    if need <= sum(free.values()):
        return
    parts = f"{rollout_workers}×{tp} rollout"
    if mode == "split":
        parts += f" + {trainer_workers}×{g} trainer"
    raise PlacementError(f"{mode} placement needs {parts} = {need} GPUs; the cluster has {sum(free.values())} "
                         f"({_free_text(nodes, free)}). Use fewer workers"
                         + (", or rollout.placement=colocated to share GPUs" if mode == "split" else ""))


def _place_engines(nodes: list[Node], order: list[int], free: dict[int, int], slots: list[int], count: int,
                   tp: int) -> tuple[tuple[int, ...], ...]:
    engines = []
    for i in range(count):
        fits = [n for n in order if free[n] >= tp]
        if not fits:
            raise PlacementError(f"rollout worker {i} needs {tp} GPUs on one node (tensor parallelism stays "
                                 f"within a node); free: {_free_text(nodes, free)}. Lower rollout.gpus_per_worker "
                                 f"or add nodes")
        node = min(fits, key=lambda n: free[n])  # best fit keeps whole nodes free for later engines
        free[node] -= tp
        engines.append(tuple(range(len(slots), len(slots) + tp)))
        slots += [node] * tp
    return tuple(engines)


def _place_ranks(order: list[int], free: dict[int, int], slots: list[int], count: int) -> tuple[int, ...]:
    ranks, node = [], None
    for _ in range(count):
        if node is None or not free[node]:  # fill the freest node before opening another: ranks stay together
            node = max(order, key=lambda n: free[n])
        free[node] -= 1
        ranks.append(len(slots))
        slots.append(node)
    return tuple(ranks)


def _check_colocated(rollout_workers: int, tp: int, trainer_workers: int, g: int) -> None:
    if not (tp and g):
        raise PlacementError("rollout.placement=colocated shares GPUs between rollout and trainer: set both "
                             "rollout.gpus_per_worker and trainer.gpus_per_worker")
    if rollout_workers * tp != trainer_workers:
        raise PlacementError(
            f"rollout.placement=colocated puts one trainer rank and one rollout TP worker on every GPU: need "
            f"rollout.num_workers × rollout.gpus_per_worker ({rollout_workers}×{tp}) == trainer.num_workers "
            f"({trainer_workers}); e.g. trainer.num_workers={rollout_workers * tp}")


def _finish(nodes: list[Node], mode: str, slots: list[int], rollout: tuple, trainer: tuple) -> Placement:
    cpus = [0.0] * len(slots)
    for bundles in rollout:
        cpus[bundles[0]] += 1.0  # the rollout actor (vLLM's own TP workers ask for none)
    for b in trainer:
        cpus[b] += 1.0
    per_node: dict[int, float] = {}
    for node, c in zip(slots, cpus):
        per_node[node] = per_node.get(node, 0.0) + c
    for node, c in per_node.items():
        if c > nodes[node].cpus:
            raise PlacementError(f"node {nodes[node].ip} has {nodes[node].cpus:g} CPUs for the {c:g} actors placed on "
                                 f"it; start Ray there with more --num-cpus")
    bundles = tuple({"GPU": 1.0, **({"CPU": c} if c else {}), f"node:{nodes[n].ip}": 0.001}
                    for n, c in zip(slots, cpus))
    share = COLOCATED_SHARE if mode == "colocated" else 1.0
    return Placement(mode, bundles, tuple(slots), rollout, trainer, share, share)


def _free_text(nodes: list[Node], free: dict[int, int]) -> str:
    return ", ".join(f"{nodes[n].ip}: {free[n]}" for n in free) or "no GPU nodes"


# -- Ray (thin) -----------------------------------------------------------------------------------
def cluster_nodes() -> list[Node]:
    """Alive Ray nodes that have GPUs."""
    import ray

    nodes = []
    for n in ray.nodes():
        res = n.get("Resources", {})
        if n.get("Alive") and res.get("GPU", 0) > 0:
            nodes.append(Node(n["NodeID"], n["NodeManagerAddress"], int(res["GPU"]), float(res.get("CPU", 0))))
    return nodes


def create_placement_group(placement: Placement, nodes: list[Node], timeout_s: float = 300.0):
    """Reserve the plan's bundles; a clear error (and no leaked reservation) when they never fit."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    pg = placement_group(list(placement.bundles), strategy="PACK")
    try:
        ray.get(pg.ready(), timeout=timeout_s)
    except ray.exceptions.GetTimeoutError:
        remove_placement_group(pg)
        raise PlacementError(f"the GPUs of this plan were not free within {timeout_s:g} s:\n"
                             f"{placement.describe(nodes)}\nCheck `ray status` for GPUs held by other jobs") from None
    return pg


def actor_options(pg, bundle: int, num_gpus: float, num_cpus: float = 1.0) -> dict:
    """`.options(...)` for an actor that runs in `bundle` of the run's placement group."""
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    return {"num_gpus": num_gpus, "num_cpus": num_cpus,
            "scheduling_strategy": PlacementGroupSchedulingStrategy(
                placement_group=pg, placement_group_bundle_index=bundle,
                placement_group_capture_child_tasks=False)}
