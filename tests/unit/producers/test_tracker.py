"""loadgen's ProjectionTracker settles a result exactly when the checkpoints pass all of its positions."""

from __future__ import annotations

import threading
import time

from esflow.settings import Settings
from producers.loadgen import ProjectionTracker
from tests.support.wait import eventually


class FakeWaiter:
    """The projection's checkpoints, moved by the test, which notifies like a committed batch."""

    def __init__(self) -> None:
        self.topics = {"ev.order", "ev.account"}
        self.have: dict[tuple[str, int], int] = {}
        self.lock = threading.Lock()
        self.committed = threading.Event()
        self.listening = False

    def listen(self) -> None:
        self.listening = True

    def commit(self, **moved: int) -> None:
        with self.lock:
            for where, offset in moved.items():
                topic, partition = where.rsplit("_", 1)
                self.have[(topic.replace("_", "."), int(partition))] = offset
        self.committed.set()

    def changed(self, _projection: str, timeout: float) -> bool:
        seen = self.committed.wait(timeout)
        self.committed.clear()
        return seen

    def checkpoints(self, _projection: str) -> tuple[set[str], dict[tuple[str, int], int]]:
        assert self.listening, "the tracker reads only once it listens (else it could miss a commit)"
        with self.lock:
            return self.topics, dict(self.have)

    def close(self) -> None:
        pass


def test_results_settle_when_every_position_is_reached_and_not_before() -> None:
    fake = FakeWaiter()
    tracker = ProjectionTracker(Settings(), "orders", fallback_s=0.2, waiter=fake)  # type: ignore[arg-type]
    try:
        t0 = time.monotonic()
        tracker.follow([("ev.order", 0, 10)], t0)
        tracker.follow([("ev.order", 0, 5), ("ev.account", 1, 7)], t0)
        tracker.follow([("ev.order", 1, 3), ("other.topic", 0, 99)], t0)  # a topic it does not read
        tracker.follow([("ev.order", 0, 12)], t0)
        assert tracker.pending == 4
        fake.commit(ev_order_0=10, ev_order_1=3)
        eventually(lambda: tracker.pending == 2, timeout=10, what="two results visible")
        # The second waits for its account position; the fourth for offset 12.
        fake.commit(ev_account_1=7)
        eventually(lambda: tracker.pending == 1, timeout=10, what="the second visible")
        assert len(tracker.latencies_ms) == 3
        fake.commit(ev_order_0=12)
        assert tracker.drain(10) == 0
        assert len(tracker.latencies_ms) == 4
    finally:
        tracker.close()


def test_a_result_with_no_event_the_projection_reads_is_counted_apart_not_as_a_latency() -> None:
    fake = FakeWaiter()
    tracker = ProjectionTracker(Settings(), "orders", fallback_s=0.2, waiter=fake)  # type: ignore[arg-type]
    try:
        t0 = time.monotonic()
        tracker.follow([("other.topic", 0, 99)], t0)  # e.g. a deposit, followed into orders
        tracker.follow([("other.topic", 1, 5), ("ev.order", 0, 3)], t0)
        # Nothing the projection reads is pending for the first: it settles at the next check, unmeasured.
        eventually(lambda: tracker.pending == 1, timeout=10, what="the unread result settled")
        assert tracker.unread == 1
        assert tracker.latencies_ms == []
        fake.commit(ev_order_0=3)
        assert tracker.drain(10) == 0
        assert tracker.unread == 1
        assert len(tracker.latencies_ms) == 1
    finally:
        tracker.close()
