"""Reweighted replay of past informative samples (docs/algorithms.md, "Replay buffer"): the buffer, its sampling
priorities, and the bias-correction weights. Pure torch/Python, no Ray: the driver owns the buffer,
the trainer applies the weights.

    buffer = ReplayBuffer(capacity=8192, alpha=1.0, max_staleness=1)
    rng = torch.Generator().manual_seed(seed)                # the caller's; checkpoint it with rng_state()
    buffer.add(batch, step=step)                             # admits |advantage| > 0 only
    n_eff = sum(1 for s in batch if s.advantage)             # SSR's |D_eff|
    replayed, probs = buffer.sample(topup_count(len(batch), n_eff), rng, current_version=version)
    u = per_weights(probs, len(buffer), beta=0.4)            # optional PER correction, (n,)
    # trainer, per micro-batch, once old logprobs are known (decoupled PPO): the TIS weight on replayed rows,
    # LossConfig(tis_level="token", tis_scope="replayed") in rl.losses.importance_weights, times u

Sources:
- Selective Sample Replay, SSR (VL-Rethinker, arXiv 2504.08837, §3 and Algorithm 1): keep only samples
  with a non-zero advantage, replay them with probability ∝ |Â|^α, and top the batch up to N_batch.
- Prioritized experience replay, PER (Schaul et al., arXiv 1511.05952, §3.3-3.4): the priority exponent
  α and the importance weights u_j = (N·P(j))^(−β) / max u that undo the sampling bias.
- Decoupled PPO (Hilton et al., arXiv 2110.00641): the behaviour policy μ (here: the rollout engine at
  generation time) is separated from the proximal policy π_old; the stale data get the detached weight
  min(π_old/μ, C) and the PPO clip acts on π_θ/π_old only.

Decisions of ours (the paper is silent): draws are with replacement (multinomial); entries are
evicted by capacity (FIFO) and by staleness in policy versions; priorities carry an optional age decay λ.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor

from rl.types import Sample

STATE_FORMAT = 1
REJECT_REASONS = ("empty_response", "reward_error", "no_advantage", "zero_advantage", "truncated")


@dataclass(frozen=True)
class ReplayEntry:
    """One stored sample. `advantage` and `policy_version` are copied at insertion, so a caller that
    later mutates the Sample (the driver resets advantages each step) cannot change a priority."""

    sample: Sample
    advantage: float
    """Advantage at insertion (SSR replays it unchanged)."""
    policy_version: int
    """v_gen: version of the weights that generated the sample."""
    step: int
    """Training step at insertion."""


class ReplayBuffer:
    """Prioritised replay of informative samples (SSR, arXiv 2504.08837; PER, arXiv 1511.05952).

    Priority of entry j, with v_now the version of the policy being trained:

        p_j = (|Â_j| + δ)^α · λ^(v_now − v_gen),     P(j) = p_j / Σ_k p_k

    α = `alpha` (0 = uniform; 1 = SSR, ∝ |Â|), δ = `delta`, λ = `age_decay` (1 = no decay).

    - `add(samples, step)`: admits a sample only if its reward status is "ok", its advantage is finite and
      non-zero, its response is non-empty, and (with `drop_truncated`) it did not hit the length limit.
      The oldest entries are dropped beyond `capacity` (FIFO).
    - `evict_stale(current_version)`: drops entries with v_now − v_gen > `max_staleness`.
    - `sample(n, rng, current_version)`: evicts stale entries, then n multinomial draws WITH replacement
      (a buffer smaller than n repeats entries). Returns shallow copies of the stored Samples (advantage =
      the stored one; token lists are shared and must not be mutated) and P(j) of each draw.
    - `state_dict()` / `load_state_dict()`: entries and counters, exactly. The RNG is the caller's
      `torch.Generator`: checkpoint it with `rng_state(gen)`, restore with `set_rng_state(gen, state)`.
    """

    def __init__(self, capacity: int, alpha: float = 1.0, delta: float = 0.0, age_decay: float = 1.0,
                 max_staleness: int | None = None, drop_truncated: bool = False):
        _check_params(capacity, alpha, delta, age_decay, max_staleness)
        self.capacity = int(capacity)
        self.alpha, self.delta, self.age_decay = float(alpha), float(delta), float(age_decay)
        self.max_staleness = max_staleness
        self.drop_truncated = bool(drop_truncated)
        self._entries: list[ReplayEntry] = []  # oldest first
        self._counts: dict[str, int] = _zero_counts()

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def entries(self) -> tuple[ReplayEntry, ...]:
        """The stored entries, oldest first (read-only view)."""
        return tuple(self._entries)

    @property
    def counters(self) -> dict[str, int]:
        """Totals over the run: admitted, rejected/<reason>, evicted_capacity, evicted_stale, sampled,
        shortfall (draws asked of an empty buffer), adds (add() calls)."""
        return dict(self._counts)

    # -- admission and eviction ---------------------------------------------------------------------
    def add(self, samples: Iterable[Sample], step: int | None = None) -> int:
        """Admit the informative samples (see the class docstring); returns how many were admitted.
        `step` is the training step recorded with them (default: the number of earlier add() calls)."""
        step = self._counts["adds"] if step is None else int(step)
        admitted = []
        for s in samples:
            reason = self._rejection(s)
            if reason is not None:
                self._counts[f"rejected/{reason}"] += 1
                continue
            admitted.append(ReplayEntry(s, float(s.advantage), int(s.policy_version), step))
        self._entries.extend(admitted)
        overflow = len(self._entries) - self.capacity
        if overflow > 0:  # FIFO: the oldest insertions leave first
            del self._entries[:overflow]
            self._counts["evicted_capacity"] += overflow
        self._counts["admitted"] += len(admitted)
        self._counts["adds"] += 1
        return len(admitted)

    def _rejection(self, s: Sample) -> str | None:
        if not s.num_trained_tokens:
            return "empty_response"  # a zero-length row trains no token
        if s.reward_status != "ok":
            return "reward_error"  # its reward is not a measurement
        if s.advantage is None or not math.isfinite(s.advantage):
            return "no_advantage"  # masked out by the driver (errors, overlong filtering)
        if s.advantage == 0:
            return "zero_advantage"  # SSR: a zero advantage carries no gradient
        if self.drop_truncated and s.truncated:
            return "truncated"
        return None

    def evict_stale(self, current_version: int) -> int:
        """Drop entries generated more than `max_staleness` policy versions before `current_version`;
        returns how many. A no-op when max_staleness is None."""
        ages = self._ages(current_version)
        if self.max_staleness is None:
            return 0
        keep = [e for e, age in zip(self._entries, ages) if age <= self.max_staleness]
        evicted = len(self._entries) - len(keep)
        self._entries = keep
        self._counts["evicted_stale"] += evicted
        return evicted

    def _ages(self, current_version: int | None) -> list[int]:
        if current_version is None:
            if self.age_decay != 1.0 or self.max_staleness is not None:
                raise ValueError("ReplayBuffer: age_decay < 1 and max_staleness need current_version= (the version "
                                 "of the policy being trained, the driver's policy version)")
            return [0] * len(self._entries)
        ages = [int(current_version) - e.policy_version for e in self._entries]
        if ages and min(ages) < 0:
            newest = max(e.policy_version for e in self._entries)
            raise ValueError(f"ReplayBuffer: current_version={current_version} is older than a stored sample "
                             f"(policy_version={newest}); pass the version of the policy being trained now")
        return ages

    # -- priorities and sampling --------------------------------------------------------------------
    def priorities(self, current_version: int | None = None) -> Tensor:
        """p_j = (|Â_j| + δ)^α · λ^(v_now − v_gen), float64 (len,), unnormalised."""
        return self._log_priorities(current_version).exp()

    def probabilities(self, current_version: int | None = None) -> Tensor:
        """P(j) = p_j / Σ_k p_k, float64 (len,); computed in log space so a strong age decay cannot
        underflow every priority to 0."""
        return torch.softmax(self._log_priorities(current_version), dim=0)

    def _log_priorities(self, current_version: int | None) -> Tensor:
        ages = torch.tensor(self._ages(current_version), dtype=torch.float64)
        adv = torch.tensor([abs(e.advantage) for e in self._entries], dtype=torch.float64)
        # α = 0 gives exactly 1 (uniform), including for δ = 0 (|Â| > 0 by admission anyway)
        logp = self.alpha * torch.log(adv + self.delta) if self.alpha != 0 else torch.zeros_like(adv)
        if self.age_decay != 1.0:
            logp = logp + ages * math.log(self.age_decay)
        return logp

    def sample(self, n: int, rng: torch.Generator, current_version: int | None = None) -> tuple[list[Sample], Tensor]:
        """n draws with replacement from P (after evicting stale entries): (copies of the samples, P(j) (n,)
        float64). An empty buffer returns ([], empty) and counts the shortfall (train on the fresh batch)."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"ReplayBuffer.sample: n={n!r} must be an int >= 0 (use topup_count/ratio_count)")
        if not isinstance(rng, torch.Generator) or rng.device.type != "cpu":
            raise TypeError(f"ReplayBuffer.sample: rng must be a CPU torch.Generator, got {type(rng).__name__}; "
                            "create one with torch.Generator().manual_seed(seed) and checkpoint it with rng_state()")
        if current_version is not None:
            self.evict_stale(current_version)
        if n == 0 or not self._entries:
            self._counts["shortfall"] += n
            return [], torch.zeros(0, dtype=torch.float64)
        probs = self.probabilities(current_version)  # (len,)
        idx = torch.multinomial(probs, n, replacement=True, generator=rng)  # (n,)
        self._counts["sampled"] += n
        picked = [self._entries[i] for i in idx.tolist()]
        return [replace(e.sample, advantage=e.advantage) for e in picked], probs[idx]

    # -- checkpoint ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Entries (the Sample objects themselves, in tuples; launch/checkpoint.py saves them without pickle)
        and counters. Hyperparameters are not saved: they come from the config on resume."""
        return {"format": STATE_FORMAT,
                "entries": [(e.sample, e.advantage, e.policy_version, e.step) for e in self._entries],
                "counts": dict(self._counts)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore entries and counters; if the capacity shrank since the save, the oldest are evicted."""
        missing = {"format", "entries", "counts"} - set(state)
        if missing or state["format"] != STATE_FORMAT:
            raise ValueError(f"ReplayBuffer.load_state_dict: not a replay-buffer state of format {STATE_FORMAT} "
                             f"(missing {sorted(missing)}); pass the dict that ReplayBuffer.state_dict() returned")
        self._entries = [ReplayEntry(s, float(a), int(v), int(t)) for s, a, v, t in state["entries"]]
        self._counts = {**_zero_counts(), **{k: int(v) for k, v in state["counts"].items()}}
        overflow = len(self._entries) - self.capacity
        if overflow > 0:
            del self._entries[:overflow]
            self._counts["evicted_capacity"] += overflow


def _zero_counts() -> dict[str, int]:
    names = ["admitted", *(f"rejected/{r}" for r in REJECT_REASONS), "evicted_capacity", "evicted_stale",
             "sampled", "shortfall", "adds"]
    return dict.fromkeys(names, 0)


def _check_params(capacity: int, alpha: float, delta: float, age_decay: float, max_staleness: int | None) -> None:
    where = "ReplayBuffer (config algorithm.replay)"
    if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
        raise ValueError(f"{where}: capacity={capacity!r} must be an int >= 1, e.g. a few training batches "
                         "(SSR keeps one episode: 1024 prompts x 8 answers = 8192)")
    if not math.isfinite(alpha) or alpha < 0:
        raise ValueError(f"{where}: alpha={alpha!r} must be >= 0 (0 = uniform, 1 = SSR: P ∝ |advantage|)")
    if not math.isfinite(delta) or delta < 0:
        raise ValueError(f"{where}: delta={delta!r} must be >= 0 (0 = SSR; a small delta flattens priorities)")
    if not 0.0 < age_decay <= 1.0:
        raise ValueError(f"{where}: age_decay={age_decay!r} must be in (0, 1] (1 = no decay; 0.5 halves the "
                         "priority per policy version of age); use max_staleness to drop old samples outright")
    if max_staleness is not None and (isinstance(max_staleness, bool) or not isinstance(max_staleness, int)
                                      or max_staleness < 0):
        raise ValueError(f"{where}: max_staleness={max_staleness!r} must be an int >= 0 policy versions "
                         "(0 = current policy only, 1 = SSR parity with a sync every step) or None (no limit)")


# --------------------------------------------------------------------------- how many to replay


def topup_count(n_batch: int, n_effective: int) -> int:
    """SSR Algorithm 1: n_buf = max(0, N_batch − |D_eff|), the draws that keep the batch size constant
    (N_batch = 8 with 5 effective samples -> 3)."""
    if n_batch < 0 or n_effective < 0:
        raise ValueError(f"topup_count: n_batch={n_batch} and n_effective={n_effective} must be >= 0")
    return max(0, n_batch - n_effective)


def ratio_count(n_effective: int, ratio: float) -> int:
    """Draws that make replayed samples a fraction `ratio` of the trained batch (ExGRPO-style mixing,
    arXiv 2510.02245, ρ = 0.5): round(n_eff · ratio / (1 − ratio)). 4 fresh at ratio 0.5 -> 4."""
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"ratio_count: ratio={ratio} must be in [0, 1) (ExGRPO uses 0.5)")
    if n_effective < 0:
        raise ValueError(f"ratio_count: n_effective={n_effective} must be >= 0")
    return round(n_effective * ratio / (1.0 - ratio))


# --------------------------------------------------------------------------- bias corrections


def per_weights(probs: Tensor, buffer_size: int, beta: float) -> Tensor:
    """PER importance weights (arXiv 1511.05952 §3.4): u_j = (N·P(j))^(−β) / max_j u_j, float64 like probs.

    `probs` are the P(j) of the drawn samples (ReplayBuffer.sample's second output), N = `buffer_size`.
    Normalised by the max over the given draws, so weights only scale updates down (to normalise over the
    whole buffer instead, pass buffer.probabilities(v) and index the result). β = 1 undoes the
    prioritisation exactly (Σ_j P(j)·u_j·f_j ∝ the uniform mean); β = 0 gives ones. PER anneals β to 1.
    """
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"per_weights: beta={beta} must be in [0, 1] "
                         "(0 = no correction, 1 = full; PER anneals 0.4 -> 1)")
    if buffer_size < 1:
        raise ValueError(f"per_weights: buffer_size={buffer_size} must be >= 1 (the size the draws came from)")
    probs = torch.as_tensor(probs)
    if probs.numel() == 0:
        return probs.clone()
    if not bool((probs > 0).all()) or not bool((probs <= 1).all()):
        raise ValueError("per_weights: probs must be the sampling probabilities P(j) in (0, 1] of the drawn samples")
    u = (buffer_size * probs).pow(-beta)
    return u / u.max()


# --------------------------------------------------------------------------- metrics and RNG


def replay_metrics(buffer: ReplayBuffer, replayed: Sequence[Sample], *, n_batch: int, current_version: int,
                   n_requested: int | None = None) -> dict[str, float]:
    """Driver-side replay metrics for one step.

    replay/size (entries after sampling), replay/fraction = replayed / n_batch (the trained batch, replayed
    rows included), replay/mean_staleness = mean(v_now − v_gen) over the draws, replay/shortfall =
    n_requested − drawn, replay/admitted_total, replay/evicted_total. The trainer reports the importance
    weights of replayed rows as actor/tis_* (rl.losses.importance_weights, tis_scope=replayed).
    """
    counts = buffer.counters
    staleness = [current_version - s.policy_version for s in replayed]
    out = {
        "replay/size": float(len(buffer)),
        "replay/fraction": len(replayed) / n_batch if n_batch > 0 else 0.0,
        "replay/mean_staleness": sum(staleness) / len(staleness) if staleness else 0.0,
        "replay/admitted_total": float(counts["admitted"]),
        "replay/evicted_total": float(counts["evicted_capacity"] + counts["evicted_stale"]),
    }
    if n_requested is not None:
        out["replay/shortfall"] = float(n_requested - len(replayed))
    return out


def rng_state(gen: torch.Generator) -> Tensor:
    """The generator's state (a uint8 tensor) for the driver's checkpoint, next to buffer.state_dict()."""
    return gen.get_state()


def set_rng_state(gen: torch.Generator, state: Tensor) -> None:
    """Restore a state saved by `rng_state`; later draws then equal those of an uninterrupted run."""
    if not isinstance(state, Tensor) or state.dtype != torch.uint8:
        raise TypeError(f"set_rng_state: expected the uint8 tensor that rng_state() returned, got "
                        f"{type(state).__name__}{'' if not isinstance(state, Tensor) else ' ' + str(state.dtype)}")
    gen.set_state(state)
