"""Driver side of fault handling: every remote call has a deadline, and a failure names the actor.

`Calls` tracks outstanding remote calls, each with the actor it runs on, the phase it belongs to and a
deadline (the `faults.*_timeout_s` keys). `next()` returns the next finished call, or an `ActorFailure`
when the actor died (SIGKILL, OOM kill, node lost) or its call ran past the deadline. In the second case
the message carries the stacks the actor dumped at its own deadline (rl/faults.py), read from
`<output_dir>/faults/<actor>.stacks`. An exception raised *inside* a call (a bug, bad input) is not a
fault: it propagates unchanged. What to do with a failure (replace a worker, rebuild the trainer group,
stop) is the driver's decision (launch/loop.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import RayActorError

from rl.faults import GuardSpec

STACK_GRACE_S = 5.0
"""How long after a call's deadline the driver waits before giving up on it: the actor's own watchdog fires
at the deadline measured from when the call started there, a little later than it was sent."""


class ActorFailure(RuntimeError):
    """An actor died, or a call on it did not finish within its deadline."""

    def __init__(self, actor: str, phase: str, cause: str, stacks: str = ""):
        self.actor, self.phase, self.cause, self.stacks = actor, phase, cause, stacks
        message = f"{actor} {cause} while {phase}"
        if stacks:
            message += f"\n--- stacks of {actor} at its deadline ---\n{stacks.rstrip()}"
        super().__init__(message)


def guard_spec(faults: Any, role: str, index: int, output_dir: str | Path, incarnation: int) -> GuardSpec:
    """The deadlines and the injected faults (first incarnation only) of one actor; `faults` is FaultsConfig."""
    timeouts = {
        "rollout": dict.fromkeys(("generate", "update_weights"), faults.rollout_timeout_s),
        "reward": {"score": faults.reward_timeout_s},
        "trainer": {**dict.fromkeys(("train_step", "sequence_kl", "publish_weights", "save_checkpoint",
                                     "load_checkpoint", "save_hf"), faults.trainer_timeout_s),
                    "setup": faults.start_timeout_s},
    }[role]
    inject = tuple(f for f in faults.faults() if f.role == role and f.index == index) if incarnation == 0 else ()
    return GuardSpec(f"{role}[{index}]", str(Path(output_dir) / "faults"), timeouts, inject)


def read_stacks(stack_dir: Path, actor: str) -> str:
    path = stack_dir / f"{actor}.stacks"
    try:
        text = path.read_text(errors="replace")
    except OSError:
        text = ""
    return text or "(no stack dump: the process did not answer; it may be stopped or swapped out)"


@dataclass
class _Call:
    actor: str
    phase: str
    timeout_s: float
    deadline: float
    tag: Any


class Calls:
    """Outstanding remote calls with deadlines; `next()` hands back whichever finishes (or fails) first."""

    def __init__(self, stack_dir: Path):
        self.stack_dir = stack_dir
        self._pending: dict[ray.ObjectRef, _Call] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, ref: ray.ObjectRef, actor: str, phase: str, timeout_s: float, tag: Any = None) -> None:
        self._pending[ref] = _Call(actor, phase, timeout_s, time.monotonic() + timeout_s + STACK_GRACE_S, tag)

    def next(self) -> tuple[Any, Any]:
        """(tag, value) of the next finished call; value is an ActorFailure when its actor died or overran."""
        while True:
            wait = max(0.0, min(c.deadline for c in self._pending.values()) - time.monotonic())
            ready, _ = ray.wait(list(self._pending), num_returns=1, timeout=wait)
            if ready:
                call = self._pending.pop(ready[0])
                try:
                    return call.tag, ray.get(ready[0])
                except RayActorError as e:
                    return call.tag, ActorFailure(call.actor, call.phase, f"died ({_reason(e)})")
            now = time.monotonic()
            for ref, call in list(self._pending.items()):
                if now >= call.deadline:
                    del self._pending[ref]
                    return call.tag, ActorFailure(call.actor, call.phase,
                                                  f"did not finish within {call.timeout_s:g} s",
                                                  read_stacks(self.stack_dir, call.actor))


def gather(stack_dir: Path, refs: list[ray.ObjectRef], actors: list[str], phase: str, timeout_s: float) -> list[Any]:
    """ray.get(refs) with a deadline; raises the first ActorFailure (a dead or overrunning actor) at once."""
    calls = Calls(stack_dir)
    for k, (ref, actor) in enumerate(zip(refs, actors, strict=True)):
        calls.add(ref, actor, phase, timeout_s, tag=k)
    values: list[Any] = [None] * len(refs)
    while calls:
        k, value = calls.next()
        if isinstance(value, ActorFailure):
            raise value
        values[k] = value
    return values


def _reason(e: RayActorError) -> str:
    """The short cause of an actor's death as Ray reports it (its first line)."""
    text = str(e).strip().splitlines()
    return next((line.strip() for line in text if line.strip()), type(e).__name__)[:300]
