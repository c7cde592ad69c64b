"""ProjectionWaiter waits on the batches' notifications, not on a poll: a commit wakes it at once."""

from __future__ import annotations

import threading
import time

from esflow.query.consistency import ConsistencyToken, ProjectionWaiter
from tests.integration.query.conftest import ReadModels


def test_a_committed_batch_wakes_a_waiting_waiter_long_before_the_fallback(read_models: ReadModels) -> None:
    read_models.feed_generated(50)  # the live versions have checkpoints
    with ProjectionWaiter(read_models.settings) as waiter:
        waiter.listen()
        # Nothing committed since it listens: the wait runs out.
        t0 = time.monotonic()
        assert not waiter.changed("orders", 0.3)
        assert time.monotonic() - t0 >= 0.3
        # Another projection's batch is not ours: still nothing for "orders".
        read_models.appliers["product_catalog"].process(
            [r for r in read_models.frame(read_models.workload.events(40)) if "product" in r.topic]
        )
        assert not waiter.changed("orders", 0.2)
        woke: list[float] = []

        def wait() -> None:
            start = time.monotonic()
            if waiter.changed("orders", 30.0):
                woke.append(time.monotonic() - start)

        thread = threading.Thread(target=wait)
        thread.start()
        token = read_models.feed_generated(50)
        thread.join(30)
        assert woke and woke[0] < 10, "the commit of an orders batch did not wake the waiter"
        # And the token of that batch is passed, without waiting.
        assert waiter.wait(token, "orders", timeout=5) < 1


def test_wait_returns_when_the_batch_that_passes_the_token_commits(read_models: ReadModels) -> None:
    read_models.feed_generated(50)
    events = read_models.workload.events(50)
    raws = read_models.frame(events)
    token = ConsistencyToken(tuple(sorted({(r.topic, r.partition, r.offset) for r in raws})))
    applier = read_models.appliers["orders"]
    with ProjectionWaiter(read_models.settings) as waiter:
        assert waiter.behind(token, "orders"), "not applied yet"
        done: list[float] = []

        def wait() -> None:
            # A fallback read no sooner than a minute: only the notification can end this in time.
            done.append(waiter.wait(token, "orders", timeout=60, poll_s=60))

        thread = threading.Thread(target=wait)
        thread.start()
        applier.process([r for r in raws if "order" in r.topic])
        thread.join(30)
        assert done and done[0] < 30
