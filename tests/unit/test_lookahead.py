"""launch/lookahead.py: the producer thread of the overlapped modes, with a fake collect/load (the rollout and
trainer sides are tests/integration/test_async.py's): which weights generate which batch, the staleness bound,
errors reaching the main thread, checkpoints of the generated-ahead batches, and stopping."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from launch.lookahead import Lookahead, ProducerError

pytestmark = pytest.mark.timeout(60)


class FakeRollout:
    """collect(b) records the weights version the rollout workers held and how many versions had been published."""

    def __init__(self, delay_s: float = 0.0, fail_at: int | None = None):
        self.version, self.delay_s, self.fail_at = 0, delay_s, fail_at
        self.generated_with: dict[int, int] = {}
        self.latest_at_start: dict[int, int] = {}
        self.busy = threading.Event()
        self.lookahead: Lookahead | None = None

    def collect(self, batch: int):
        if batch == self.fail_at:
            raise ValueError(f"reward worker died on batch {batch}")
        self.busy.set()
        self.latest_at_start[batch] = self.lookahead.latest
        self.generated_with[batch] = self.version
        time.sleep(self.delay_s)
        self.busy.clear()
        return [f"sample-{batch}"], {"perf/generate_s": self.delay_s}, {"batch": batch}

    def load(self, version: int, weights) -> None:
        assert weights == f"w{version}", (version, weights)
        self.version = version


def start(rollout: FakeRollout, *, last: int = 6, staleness: int = 1, exact: bool = True, next_batch: int = 1,
          ready=(), published=None, version: int = 0) -> Lookahead:
    la = Lookahead(collect=rollout.collect, load=rollout.load, memory=lambda: {"perf/rollout_rss_mb": 1.0},
                   next_batch=next_batch, last_batch=last, max_staleness=staleness, exact=exact,
                   rollout_version=version, published=published or {}, ready=list(ready))
    rollout.lookahead = la
    return la.start()


def train(la: Lookahead, first: int, last: int, train_s: float = 0.0) -> list:
    """The main thread: step b takes batch b, trains (train_s), publishes version b."""
    taken = []
    for b in range(first, last + 1):
        taken.append(la.take(b))
        time.sleep(train_s)
        la.publish(b, f"w{b}")
    return taken


def test_one_step_off_generates_batch_b_with_version_b_minus_2_whatever_the_timing():
    for delay, train_s in [(0.0, 0.02), (0.02, 0.0)]:  # a fast producer, then a fast trainer
        rollout = FakeRollout(delay_s=delay)
        la = start(rollout, last=6)
        taken = train(la, 1, 6, train_s)
        la.stop(5)
        assert rollout.generated_with == {1: 0, 2: 0, 3: 1, 4: 2, 5: 3, 6: 4}
        assert [t[2]["batch"] for t in taken] == [1, 2, 3, 4, 5, 6]  # batch order is the step order
        assert all(t[1]["perf/load_weights_s"] >= 0 for t in taken)


@pytest.mark.parametrize("staleness", [1, 2, 3])
def test_async_never_starts_a_batch_more_than_max_staleness_versions_behind(staleness):
    rollout = FakeRollout(delay_s=0.002)
    la = start(rollout, last=10, staleness=staleness, exact=False)
    train(la, 1, 10, train_s=0.02)  # a slow trainer: the producer runs ahead as far as the bound lets it
    la.stop(5)
    for b, v in rollout.generated_with.items():
        assert max(0, b - 1 - staleness) <= v <= b - 1, (b, v)  # within the bound, never from the future
        assert rollout.latest_at_start[b] >= max(0, b - 1 - staleness)
    # async loads the newest weights: with the trainer the bottleneck, batches wait for the bound and use it
    assert max(b - 1 - v for b, v in rollout.generated_with.items()) == staleness


def test_the_producers_error_is_raised_in_the_main_thread_at_the_batch_it_failed():
    rollout = FakeRollout(fail_at=3)
    la = start(rollout, last=6)
    train(la, 1, 2)
    with pytest.raises(ValueError, match="reward worker died on batch 3"):
        la.take(3)
    la.stop(5)


def test_taking_a_batch_the_producer_will_never_make_raises_instead_of_waiting():
    la = start(FakeRollout(), last=2)
    train(la, 1, 2)
    with pytest.raises(ProducerError, match="before batch 3"):
        la.take(3)


def test_exclusive_holds_the_producer_and_in_exact_mode_checkpoints_every_batch_older_weights_generate():
    rollout = FakeRollout(delay_s=0.05)
    la = start(rollout, last=8)
    train(la, 1, 2)  # batch 3 (version 1) may be in flight, batch 4 needs version 2 = the newest
    with la.exclusive():
        assert not rollout.busy.is_set()
        pending = la.pending()
        n = len(rollout.generated_with)
        time.sleep(0.1)
        assert len(rollout.generated_with) == n  # nothing generated while the main thread holds the workers
    # the checkpoint holds batch 3 at least: it is the last batch version 1 generates, and version 1 is gone
    assert [p[2]["batch"] for p in pending][:1] == [3]
    la.stop(5)


def test_resume_takes_the_checkpointed_batches_first_then_generates_from_the_restored_weights():
    rollout = FakeRollout()
    rollout.version = 2
    ready = [(["restored-3"], {}, {"batch": 3}), (["restored-4"], {}, {"batch": 4})]
    la = start(rollout, last=6, next_batch=5, ready=ready, published={2: "w2"}, version=2)
    taken = train(la, 3, 6)
    la.stop(5)
    assert [t[0] for t in taken[:2]] == [["restored-3"], ["restored-4"]]
    assert rollout.generated_with == {5: 3, 6: 4}  # batch b with version b-2, as in the uninterrupted run


def test_a_version_that_was_not_kept_warns_and_keeps_the_current_weights(caplog):
    # a sync run's checkpoint at step 3 resumed as one_step_off: batch 4 asks for version 2, which only ran there
    rollout = FakeRollout()
    rollout.version = 3
    with caplog.at_level(logging.WARNING, logger="rlvr"):
        la = start(rollout, last=5, next_batch=4, published={3: "w3"}, version=3)
        train(la, 4, 5)
    la.stop(5)
    assert rollout.generated_with == {4: 3, 5: 3}
    assert "weights of policy version 2 are not available; generating with version 3" in caplog.text


def test_load_latest_gives_the_rollout_workers_the_newest_published_weights():
    rollout = FakeRollout()
    la = start(rollout, last=6)
    train(la, 1, 3)
    with la.exclusive():
        la.load_latest()
        assert rollout.version == 3
        assert la.rollout_weights() == (3, "w3")
    la.stop(5)


def test_stop_returns_while_the_producer_waits_for_weights():
    la = start(FakeRollout(), last=10)
    la.take(1)
    la.take(2)  # batch 3 waits for version 1, which never comes
    t0 = time.perf_counter()
    la.stop(5)
    assert time.perf_counter() - t0 < 5
    assert not la._thread.is_alive()
