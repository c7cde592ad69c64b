"""The agent loop in-process (Faust's agent.test_context, no broker): batches, order, one at a time."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Mapping, Sequence

from esflow.messaging.codec import Codec
from esflow.readmodel.projection import TP, RawEvent
from esflow.readmodel.store import BatchResult
from esflow.settings import KafkaSettings, ProjectionSettings, TopicSettings
from projections import registry, runtime


def test_batches_reach_the_applier_in_order_and_one_at_a_time() -> None:
    batch_size = 50
    built = runtime.build(
        registry.get("event_log"),
        registry.EnvelopeDecoder(Codec.from_settings()),
        None,  # type: ignore[arg-type]  # the applier below replaces the store
        kafka=KafkaSettings(bootstrap="127.0.0.1:1"),
        topics=TopicSettings(prefix="unit."),
        settings=ProjectionSettings(batch_size=batch_size, batch_linger_s=0.005),
    )
    seen: list[list[int]] = []
    active = 0
    overlap = False
    lock = threading.Lock()

    def process(raws: Sequence[RawEvent], *, lag: Mapping[TP, int] | None = None) -> BatchResult:
        nonlocal active, overlap
        with lock:
            active += 1
            overlap = overlap or active > 1
        time.sleep(0.01)  # a Postgres round trip, long enough for Faust to fill the next batch
        seen.append([r.offset for r in raws])
        with lock:
            active -= 1
        return BatchResult(applied=len(raws))

    built.applier.process = process  # type: ignore[method-assign]
    total = 420

    async def scenario() -> None:
        async with built.agent.test_context() as agent:
            for i in range(total):
                await agent.put(b"value", key=b"key", wait=False)
                if i % 100 == 0:
                    await asyncio.sleep(0)
            deadline = time.monotonic() + 30
            while sum(len(b) for b in seen) < total and time.monotonic() < deadline:
                await asyncio.sleep(0.05)

    try:
        asyncio.run(scenario())
    finally:
        built.remove_datadir()
    assert built.datadir.parent.is_dir() and not built.datadir.exists()
    offsets = [o for batch in seen for o in batch]
    assert offsets == list(range(total))
    assert all(0 < len(batch) <= batch_size for batch in seen)
    assert len(seen) >= total // batch_size
    assert not overlap, "two batches were applied at once"


def test_events_that_arrive_while_a_batch_applies_form_the_next_batch() -> None:
    """The batch grows with the load: no tick cuts what arrived during one apply into several batches."""
    built = runtime.build(
        registry.get("event_log"),
        registry.EnvelopeDecoder(Codec.from_settings()),
        None,  # type: ignore[arg-type]  # the applier below replaces the store
        kafka=KafkaSettings(bootstrap="127.0.0.1:1"),
        topics=TopicSettings(prefix="unit."),
        settings=ProjectionSettings(batch_size=100, batch_linger_s=0.005),
    )
    seen: list[list[int]] = []
    release = threading.Event()
    first_started = threading.Event()

    def process(raws: Sequence[RawEvent], *, lag: Mapping[TP, int] | None = None) -> BatchResult:
        if not seen:
            first_started.set()
            release.wait(30)  # a slow Postgres transaction
        seen.append([r.offset for r in raws])
        return BatchResult(applied=len(raws))

    built.applier.process = process  # type: ignore[method-assign]

    async def scenario() -> None:
        async with built.agent.test_context() as agent:
            await agent.put(b"value", key=b"key", wait=False)
            while not first_started.is_set():
                await asyncio.sleep(0.01)
            # Three trickles, each far apart compared with the linger, while batch 1 is applied.
            for _ in range(3):
                for _ in range(4):
                    await agent.put(b"value", key=b"key", wait=False)
                await asyncio.sleep(0.1)
            release.set()
            deadline = time.monotonic() + 30
            while sum(len(b) for b in seen) < 13 and time.monotonic() < deadline:
                await asyncio.sleep(0.02)

    try:
        asyncio.run(scenario())
    finally:
        release.set()
        built.remove_datadir()
    assert seen == [[0], list(range(1, 13))]


def test_a_full_batch_is_not_held_back_beyond_its_size() -> None:
    """While one batch applies, the next fills only up to BATCH_SIZE; the rest waits its turn, in order."""
    built = runtime.build(
        registry.get("event_log"),
        registry.EnvelopeDecoder(Codec.from_settings()),
        None,  # type: ignore[arg-type]  # the applier below replaces the store
        kafka=KafkaSettings(bootstrap="127.0.0.1:1"),
        topics=TopicSettings(prefix="unit."),
        settings=ProjectionSettings(batch_size=5, batch_linger_s=0.005),
    )
    seen: list[list[int]] = []
    release = threading.Event()

    def process(raws: Sequence[RawEvent], *, lag: Mapping[TP, int] | None = None) -> BatchResult:
        if not seen:
            release.wait(30)
        seen.append([r.offset for r in raws])
        return BatchResult(applied=len(raws))

    built.applier.process = process  # type: ignore[method-assign]

    async def scenario() -> None:
        async with built.agent.test_context() as agent:
            for _ in range(23):
                await agent.put(b"value", key=b"key", wait=False)
            await asyncio.sleep(0.1)
            release.set()
            deadline = time.monotonic() + 30
            while sum(len(b) for b in seen) < 23 and time.monotonic() < deadline:
                await asyncio.sleep(0.02)

    try:
        asyncio.run(scenario())
    finally:
        release.set()
        built.remove_datadir()
    assert [o for batch in seen for o in batch] == list(range(23))
    assert all(0 < len(batch) <= 5 for batch in seen)
