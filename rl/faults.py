"""Actor side of fault handling: stack dumps when a call overruns its deadline, and fault injection.

Every long-running actor (rollout, reward, trainer) holds a `Guard`. Around each guarded remote call it
- arms `faulthandler.dump_traceback_later` at the call's deadline, writing every thread's stack to
  `<output_dir>/faults/<actor>.stacks`. faulthandler's watchdog is a C thread, so the dump is written even
  while the main thread is stuck in C (a collective, a CUDA sync) holding the GIL. The driver, which gave up
  on the call at the same deadline, reads the file into its error message (launch/supervisor.py);
- counts the call and, when `faults.inject` names it, injects a fault into this very process with a real
  signal: chaos testing of the recovery paths, used by tests/integration/test_faults.py.

Injection spec: `ROLE:INDEX:METHOD:CALL:ACTION`, e.g. `trainer:1:train_step:3:kill` SIGKILLs trainer rank 1
at the start of its third `train_step`. ROLE is rollout, reward or trainer; ACTION is
- `kill`: SIGKILL (what the kernel's OOM killer sends),
- `hang`: sleep inside the call (a deadlock: the stack dump shows where),
- `stop`: SIGSTOP (a frozen process that answers nothing, not even a stack dump).
A fault fires in the first incarnation of an actor only, so that its replacement recovers.
"""

from __future__ import annotations

import faulthandler
import functools
import json
import os
import signal
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

ROLES = ("rollout", "reward", "trainer")
ACTIONS = ("kill", "hang", "stop")
F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Fault:
    role: str
    index: int
    method: str
    call: int
    action: str

    @classmethod
    def parse(cls, spec: str) -> Fault:
        parts = spec.split(":")
        usage = "write ROLE:INDEX:METHOD:CALL:ACTION, e.g. trainer:1:train_step:3:kill"
        if len(parts) != 5 or not parts[1].isdigit() or not parts[3].isdigit() or int(parts[3]) < 1:
            raise ValueError(f"faults.inject entry {spec!r}: {usage}")
        role, index, method, call, action = parts
        if role not in ROLES:
            raise ValueError(f"faults.inject entry {spec!r}: role {role!r} is not one of {', '.join(ROLES)}")
        if action not in ACTIONS:
            raise ValueError(f"faults.inject entry {spec!r}: action {action!r} is not one of {', '.join(ACTIONS)}")
        return cls(role, int(index), method, int(call), action)


@dataclass(frozen=True)
class GuardSpec:
    """What one actor needs to guard its calls; built by the driver, sent to the actor."""

    name: str
    """The actor as messages name it, e.g. `trainer[1]`."""
    stack_dir: str | None
    """Where overrun calls dump their stacks (None: no dumps)."""
    timeouts: Mapping[str, float] = field(default_factory=dict)
    """Deadline in seconds per method name; methods not listed are not armed."""
    inject: tuple[Fault, ...] = ()
    """Faults to inject into this actor (its own entries only)."""

    @property
    def stack_path(self) -> Path | None:
        return None if self.stack_dir is None else Path(self.stack_dir) / f"{self.name}.stacks"


class Guard:
    def __init__(self, spec: GuardSpec | None):
        self.spec = spec
        self.calls: Counter[str] = Counter()
        self._dump_file = None

    def enter(self, method: str) -> None:
        if self.spec is None:
            return
        self.calls[method] += 1
        timeout = self.spec.timeouts.get(method)
        if timeout is not None and self.spec.stack_path is not None:
            self._arm(timeout)
        for f in self.spec.inject:
            if f.method == method and f.call == self.calls[method]:
                self._record(f)
                _inject(f.action)

    def exit(self) -> None:
        if self._dump_file is not None:
            faulthandler.cancel_dump_traceback_later()
            self._dump_file.close()
            self._dump_file = None

    def _record(self, fault: Fault) -> None:
        """When the fault fired, in `<stack_dir>/injected.jsonl` (benchmarks/faults.py times recovery from it)."""
        if self.spec.stack_dir is None:
            return
        Path(self.spec.stack_dir).mkdir(parents=True, exist_ok=True)
        with (Path(self.spec.stack_dir) / "injected.jsonl").open("a") as f:
            f.write(json.dumps({"actor": self.spec.name, **asdict(fault), "time": time.time()}) + "\n")

    def _arm(self, timeout: float) -> None:
        path = self.spec.stack_path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._dump_file = path.open("w")  # truncated: the file only ever holds the call that overran
        faulthandler.dump_traceback_later(timeout, repeat=False, file=self._dump_file, exit=False)


def _inject(action: str) -> None:
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "stop":
        os.kill(os.getpid(), signal.SIGSTOP)
    else:  # hang
        while True:
            time.sleep(3600)


def guarded(method: F) -> F:
    """Decorate an actor method so that `self.guard` (a Guard) watches it."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        guard: Guard = self.guard
        guard.enter(method.__name__)
        try:
            return method(self, *args, **kwargs)
        finally:
            guard.exit()

    return wrapper  # type: ignore[return-value]
