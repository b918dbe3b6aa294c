"""Generation ahead of training: trainer.async_mode `one_step_off` and `async` (docs/architecture.md,
"Overlapped training").

A producer thread in the driver generates and scores batch after batch on the rollout and reward workers while
the main thread trains on the trainer ranks. Batch b is the one step b trains on; the trainer then holds policy
version b-1, so a batch generated with version v is b-1-v versions stale. The producer starts batch b only once
version b-1-S is published (S = max_staleness; 1 for one_step_off), so no trained sample is more than S versions
old. Before each batch it loads weights into the rollout workers:

- `exact` (one_step_off): exactly version max(0, b-1-S), so which weights produced which batch does not depend on
  timing and a run is deterministic for a seed;
- otherwise (async): the newest published version, which may be fresher than the bound.

Which prompts batch b holds never depends on timing either: the producer alone draws from the prompt iterator,
in batch order, as the synchronous loop does. The main thread's other uses of the rollout workers (held-out
eval, a checkpoint's snapshot of the ready batches) run between two batches, inside `exclusive()`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

log = logging.getLogger("rlvr")

Collected = tuple[list, dict[str, float], dict[str, float]]
"""What Driver.collect returns: (samples, timing, metrics)."""

POLL_S = 5.0
"""How often a wait re-checks that the producer thread is still alive."""


class ProducerError(RuntimeError):
    """The producer thread ended without the batch the main thread waits for."""


class Lookahead:
    def __init__(self, *, collect: Callable[[int], Collected], load: Callable[[int, Any], None],
                 memory: Callable[[], dict[str, float]], next_batch: int, last_batch: int, max_staleness: int,
                 exact: bool, rollout_version: int, published: dict[int, Any], ready: list[Collected]):
        """`collect(b)` generates and scores batch b; `load(version, published)` puts those weights into every
        rollout worker; `memory()` reports the rollout workers' memory (measured while they are idle). Batches
        before `next_batch` are `ready` (restored from a checkpoint); the producer stops after `last_batch`."""
        self._collect, self._load, self._memory = collect, load, memory
        self.max_staleness, self.exact, self.last_batch = max_staleness, exact, last_batch
        self._cond = threading.Condition()
        self._busy = threading.Lock()  # the producer's whole batch, or the main thread's exclusive() section
        first = next_batch - len(ready)
        self.ready: dict[int, Collected] = {first + i: c for i, c in enumerate(ready)}
        self.next_batch = next_batch
        self.published = dict(published)  # version -> PublishedWeights the producer may still need
        self.latest = max(self.published, default=rollout_version)
        self.rollout_version = rollout_version
        self.rollout_memory: dict[str, float] = {}
        self.error: BaseException | None = None
        self.stopping = False
        self._thread = threading.Thread(target=self._run, name="rlvr-lookahead", daemon=True)

    # -- the producer ----------------------------------------------------------------------------
    def needed(self, batch: int) -> int:
        """The oldest policy version batch `batch` may be generated with."""
        return max(0, batch - 1 - self.max_staleness)

    def start(self) -> Lookahead:
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    while not self.stopping and self.next_batch <= self.last_batch and \
                            self.latest < self.needed(self.next_batch):
                        self._cond.wait()
                    if self.stopping or self.next_batch > self.last_batch:
                        return
                    batch = self.next_batch
                with self._busy:
                    if self.stopping:
                        return
                    t0 = time.perf_counter()
                    self._load_version(self.needed(batch) if self.exact else self.latest)
                    loaded = time.perf_counter() - t0
                    samples, timing, metrics = self._collect(batch)
                    timing["perf/load_weights_s"] = loaded
                    self.rollout_memory = self._memory()
                with self._cond:
                    self.ready[batch] = (samples, timing, metrics)
                    self.next_batch = batch + 1
                    self._cond.notify_all()
        except BaseException as e:  # noqa: BLE001 - handed to the main thread, which raises it
            with self._cond:
                self.error = e
                self._cond.notify_all()

    def _load_version(self, version: int) -> None:
        """The rollout workers hold `version` afterwards (caller holds _busy)."""
        with self._cond:
            if version == self.rollout_version:
                return
            weights = self.published.get(version)
            if weights is None:  # resumed from a checkpoint without that version (another async_mode wrote it)
                log.warning("weights of policy version %d are not available; generating with version %d",
                            version, self.rollout_version)
                return
        self._load(version, weights)
        with self._cond:
            self.rollout_version = version
            self._prune()

    def _prune(self) -> None:
        """Forget published weights no later batch can ask for (caller holds _cond); the rollout workers' own stay,
        for a replacement worker to load."""
        keep_from = self.needed(self.next_batch) if self.exact else self.latest
        for v in [v for v in self.published if v < keep_from and v != self.rollout_version]:
            del self.published[v]

    # -- the main thread ---------------------------------------------------------------------------
    def take(self, batch: int) -> Collected:
        """Batch `batch`, waiting for the producer to finish it; re-raises the producer's error."""
        with self._cond:
            while batch not in self.ready:
                self._raise_if_failed()
                if not self._thread.is_alive():
                    raise ProducerError(f"the rollout thread stopped before batch {batch} (it ends after batch "
                                        f"{self.last_batch})")
                self._cond.wait(POLL_S)
            return self.ready.pop(batch)

    def publish(self, version: int, weights: Any) -> None:
        """Version `version` of the weights is out (the trainer's PublishedWeights): batches waiting for it start."""
        with self._cond:
            self.published[version] = weights
            self.latest = version
            self._prune()
            self._cond.notify_all()

    def rollout_weights(self) -> tuple[int, Any]:
        """(version, PublishedWeights) the rollout workers hold; weights None for the starting ones (version 0, which
        a new worker loads from the model path itself)."""
        with self._cond:
            return self.rollout_version, self.published.get(self.rollout_version)

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """The rollout workers idle for the main thread: waits for the batch being generated, holds the next.

        In exact mode it first waits for every batch that needs weights older than the newest (at most the one
        started before this step trained), so a checkpoint taken inside holds every batch that an older version
        generates and its resume repeats the run exactly."""
        with self._cond:
            while self.exact and self.error is None and not self.stopping and self.next_batch <= self.last_batch \
                    and self.needed(self.next_batch) < self.latest:
                if not self._thread.is_alive():
                    break
                self._cond.wait(POLL_S)
        with self._busy:
            self._raise_if_failed()
            yield

    def load_latest(self) -> None:
        """Inside exclusive(): the rollout workers take the newest published weights (for a held-out eval)."""
        self._load_version(self.latest)

    def pending(self) -> list[Collected]:
        """The batches generated and not yet taken, in order (inside exclusive(), for a checkpoint)."""
        with self._cond:
            return [self.ready[b] for b in sorted(self.ready)]

    def stop(self, timeout_s: float) -> None:
        """No new batch starts; waits up to timeout_s for the one in progress (its calls have their own deadlines)."""
        with self._cond:
            self.stopping = True
            self._cond.notify_all()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                log.warning("the rollout thread did not finish its batch within %.0f s; leaving it", timeout_s)

    def _raise_if_failed(self) -> None:
        """The producer's own error (a worker replaced too often, every reward failing, ...), as the
        synchronous loop would have raised it."""
        if self.error is not None:
            raise self.error
