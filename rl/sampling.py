"""DAPO sampling pieces (arXiv 2503.14476): soft overlong punishment and dynamic sampling.

    rewards = scores + overlong_penalty(lengths, max_response_length=1024, overlong_buffer=256)
    keep = informative_groups(acc, group_ids)              # bool (N,)

    sampler = DynamicSampler(metric=lambda s: s.reward_metrics["acc"], max_rounds=10)
    while not sampler.ready(train_prompts):                # raises after max_rounds short rounds
        sampler.add(generate_and_score_groups())           # list of groups, a group = list of items
    groups = sampler.take(train_prompts)                   # exactly train_prompts groups
    log(sampler.metrics)

Pure Python/torch, no Ray: the driver calls these between generation and training. Items are opaque
(any picklable object, e.g. `rl.types.Sample`); the caller supplies the metric per item.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor


def overlong_penalty(
    lengths: Tensor, max_response_length: int, overlong_buffer: int, penalty_factor: float = 1.0
) -> Tensor:
    """Soft overlong punishment, DAPO (arXiv 2503.14476) §3.4 eq. (13), float (N,), added to the reward:

        0                                      if |y| <= L_max − L_cache
        ((L_max − L_cache) − |y|) / L_cache    if L_max − L_cache < |y| <= L_max
        −1                                     if |y| > L_max            (paper; verl has no floor)

    all times `penalty_factor` (verl `overlong_penalty_factor`). L_max = max_response_length,
    L_cache = overlong_buffer. Example (L_max, L_cache) = (10, 4): |y| = 6 -> 0, 7 -> −0.25, 10 -> −1.
    """
    if not 0 < overlong_buffer <= max_response_length:
        raise ValueError(
            f"overlong_buffer={overlong_buffer} must be in (0, max_response_length={max_response_length}]; "
            "DAPO uses 4096 of 20480 (a fifth)"
        )
    if penalty_factor < 0:
        raise ValueError(f"penalty_factor={penalty_factor} must be >= 0")
    lengths = torch.as_tensor(lengths, dtype=torch.float64)
    expected = max_response_length - overlong_buffer
    pen = ((expected - lengths) / overlong_buffer).clamp(min=-1.0, max=0.0)  # floor: the paper's −1 beyond L_max
    return (pen * penalty_factor).to(torch.float32)


def informative_groups(metric: Tensor, group_ids: Tensor) -> Tensor:
    """bool (N,): True where the sample's group has a non-constant metric (std > 0, ddof 0) — DAPO
    dynamic sampling's "0 < #correct < G" (eq. 11) for a 0/1 accuracy.

    Tested as max > min within the group, which is std > 0 without float round-off (np.std of three
    equal 0.1s is ~1e-17, not 0). Groups of size 1 are kept, as verl's recipe does (`len == 1` keeps
    the uid): with G=1 there is no group statistic to filter on.
    """
    metric = torch.as_tensor(metric, dtype=torch.float64)
    group_ids = torch.as_tensor(group_ids)
    if metric.shape != group_ids.shape or metric.dim() != 1:
        raise ValueError(f"informative_groups: metric {tuple(metric.shape)} and group_ids "
                         f"{tuple(group_ids.shape)} must be the same 1-D shape")
    if metric.numel() == 0:
        return torch.zeros(0, dtype=torch.bool)
    _, idx = torch.unique(group_ids, return_inverse=True)
    n = int(idx.max()) + 1
    hi = torch.full((n,), -torch.inf, dtype=torch.float64).scatter_reduce(0, idx, metric, "amax")
    lo = torch.full((n,), torch.inf, dtype=torch.float64).scatter_reduce(0, idx, metric, "amin")
    size = torch.zeros(n, dtype=torch.long).index_add_(0, idx, torch.ones_like(idx))
    return ((hi > lo) | (size == 1))[idx]


class DynamicSampler:
    """DAPO dynamic sampling (arXiv 2503.14476 §3.2, Algorithm 1; verl recipe/dapo `filter_groups`).

    Keeps only informative groups (metric not constant within the group, see `informative_groups`)
    and accumulates them over generation rounds until `train_prompts` groups are available.

    - `add(groups)`: one generation round; a group is a non-empty list of items.
    - `ready(train_prompts)`: enough groups? Raises RuntimeError once `max_rounds` rounds of this
      step still left it short (verl `max_num_gen_batches`; None = unlimited). With `allow_short=True`
      it is True then instead: the step ends short and something else fills it (the replay buffer, rl/replay.py).
    - `take(train_prompts)`: exactly `train_prompts` groups, oldest first (fewer, possibly none, only
      with `allow_short=True` after `max_rounds`; rollout/ds_short_groups counts them). The surplus is discarded
      and counted (the paper's and verl's behaviour), or with `carry_surplus` carried into the next step: it is
      then one policy version old, and only an importance weight against its behaviour logprobs (TIS) makes
      its gradient unbiased, so the config requires TIS for that.
    - `metrics`: the last completed step's rollout/ds_* numbers.
    - `state_dict()` / `load_state_dict()`: the carried groups and counters (checkpoint/resume).
    """

    def __init__(self, metric: Callable[[Any], float], *, max_rounds: int | None = 10, carry_surplus: bool = False):
        if max_rounds is not None and max_rounds < 1:
            raise ValueError(f"max_rounds={max_rounds} must be >= 1, or None for no limit")
        self.metric = metric
        self.max_rounds = max_rounds
        self.carry_surplus = carry_surplus
        self._kept: list[list[Any]] = []  # informative groups, oldest first
        self._carried_in = 0  # groups carried into the current step
        self._rounds = 0  # generation rounds in the current step
        self._seen = 0  # groups generated in the current step
        self._zero_var = 0  # of which constant metric (dropped)
        self._discarded_total = 0  # surplus groups thrown away over the whole run
        self.metrics: dict[str, float] = {}

    @property
    def num_groups(self) -> int:
        """Informative groups currently held."""
        return len(self._kept)

    def add(self, groups: Sequence[Sequence[Any]]) -> int:
        """Record one generation round; keeps the informative groups and returns how many."""
        if not groups:
            raise ValueError("DynamicSampler.add: got no groups; a generation round must produce at least one group")
        metric, gid = [], []
        for g, group in enumerate(groups):
            if len(group) == 0:
                raise ValueError(f"DynamicSampler.add: group {g} is empty; every group needs >= 1 item")
            for item in group:
                metric.append(float(self.metric(item)))
                gid.append(g)
        keep_item = informative_groups(torch.tensor(metric, dtype=torch.float64), torch.tensor(gid)).tolist()
        first = 0  # every item of a group shares the verdict: read it at the group's first item
        kept = []
        for group in groups:
            if keep_item[first]:
                kept.append(list(group))
            first += len(group)
        self._kept.extend(kept)
        self._rounds += 1
        self._seen += len(groups)
        self._zero_var += len(groups) - len(kept)
        return len(kept)

    def ready(self, train_prompts: int, *, allow_short: bool = False) -> bool:
        """True when `train_prompts` informative groups are held, or when `max_rounds` is exhausted and
        `allow_short`; RuntimeError if `max_rounds` is exhausted otherwise."""
        if train_prompts < 1:
            raise ValueError(f"train_prompts={train_prompts} must be >= 1")
        if len(self._kept) >= train_prompts:
            return True
        if self.max_rounds is not None and self._rounds >= self.max_rounds:
            if allow_short:
                return True
            raise RuntimeError(
                f"dynamic sampling: after {self._rounds} generation rounds only {len(self._kept)} of "
                f"{train_prompts} prompt groups are informative ({self._zero_var} of {self._seen} groups had "
                "the same accuracy for every answer). The data is too hard or too easy for the current model: "
                "raise algorithm.dynamic_sampling.max_rounds, lower trainer.train_prompts, raise "
                "rollout.group_size, or use a dataset of matching difficulty"
            )
        return False

    def take(self, train_prompts: int, *, allow_short: bool = False) -> list[list[Any]]:
        """Exactly `train_prompts` groups (oldest first), or with `allow_short` after `max_rounds` what is
        held; the surplus is carried or discarded."""
        if not self.ready(train_prompts, allow_short=allow_short):
            raise RuntimeError(f"DynamicSampler.take({train_prompts}): only {len(self._kept)} groups held; "
                               "call add() until ready() is True")
        batch, surplus = self._kept[:train_prompts], self._kept[train_prompts:]
        discarded = 0 if self.carry_surplus else len(surplus)
        self._discarded_total += discarded
        seen = max(self._seen, 1)
        self.metrics = {
            "rollout/ds_rounds": float(self._rounds),
            "rollout/ds_kept_frac": (self._seen - self._zero_var) / seen if self._seen else 1.0,
            "rollout/ds_zero_var_frac": self._zero_var / seen if self._seen else 0.0,
            "rollout/ds_groups_generated": float(self._seen),
            "rollout/ds_carried_in": float(self._carried_in),
            "rollout/ds_surplus": float(len(surplus)),
            "rollout/ds_discarded_total": float(self._discarded_total),
            "rollout/ds_short_groups": float(train_prompts - len(batch)),
        }
        self._kept = surplus if self.carry_surplus else []
        self._carried_in = len(self._kept)
        self._rounds = self._seen = self._zero_var = 0
        return batch

    def state_dict(self) -> dict[str, Any]:
        """Carried groups (the items themselves: plain values or Samples, which launch/checkpoint.py saves
        without pickle) and counters."""
        return {
            "kept": [list(g) for g in self._kept], "carried_in": self._carried_in, "rounds": self._rounds,
            "seen": self._seen, "zero_var": self._zero_var, "discarded_total": self._discarded_total,
            "metrics": dict(self.metrics),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._kept = [list(g) for g in state["kept"]]
        self._carried_in = int(state["carried_in"])
        self._rounds = int(state["rounds"])
        self._seen = int(state["seen"])
        self._zero_var = int(state["zero_var"])
        self._discarded_total = int(state["discarded_total"])
        self.metrics = dict(state["metrics"])
