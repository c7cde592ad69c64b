"""How the loop gathers a batch: poll() the first message, then consume() more, across a rebalance.

A fresh-clone CI run with BATCH_INTERVAL_MS=50 answered a command twice: the batch's first message
came from poll(), a rebalance inside the following consume() revoked and assigned its partition again
at the committed offset, and consume() returned that message a second time. librdkafka purges the
outdated messages of its own batch at a rebalance, not one poll() already handed out.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from confluent_kafka import TopicPartition

from esflow.settings import Settings
from processors.loop import Incoming, LoopOptions, Outgoing, TransactionalLoop


class _Message:
    def __init__(self, topic: str, partition: int, offset: int) -> None:
        self._where = (topic, partition, offset)

    def error(self) -> None:
        return None

    def topic(self) -> str:
        return self._where[0]

    def partition(self) -> int:
        return self._where[1]

    def offset(self) -> int:
        return self._where[2]


class _Consumer:
    """poll() hands out one message, consume() the rest; either may run a rebalance first."""

    def __init__(self, first: _Message, rest: list[_Message]) -> None:
        self.first, self.rest = first, rest
        self.rebalance_in: str | None = None
        self.on_rebalance: Callable[[], None] = lambda: None
        self.assigned: list[TopicPartition] = []

    def poll(self, timeout: float) -> _Message:
        if self.rebalance_in == "poll":
            self.on_rebalance()
        return self.first

    def consume(self, num_messages: int, timeout: float) -> list[_Message]:
        if self.rebalance_in == "consume":
            self.on_rebalance()
        return self.rest

    def committed(self, partitions: list[TopicPartition], timeout: float) -> list[TopicPartition]:
        return [TopicPartition(tp.topic, tp.partition, 5) for tp in partitions]

    def assign(self, partitions: list[TopicPartition]) -> None:
        self.assigned = partitions

    def assignment(self) -> list[TopicPartition]:  # the lag gauge's
        return []

    def position(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        return []


class _Step:
    def __init__(self) -> None:
        self.revoked_pairs: list[tuple[str, int]] = []

    def assigned(self, partitions: Sequence[tuple[str, int]]) -> None:
        pass

    def revoked(self, partitions: Sequence[tuple[str, int]]) -> None:
        self.revoked_pairs.extend(partitions)

    def process(self, messages: Sequence[Incoming], now: float) -> Sequence[Outgoing]:
        return []

    def due(self, now: float) -> Sequence[Outgoing]:
        return []

    def next_due(self) -> float | None:
        return None

    def committed(self) -> None:
        pass

    def aborted(self) -> None:
        pass


def _turn(
    first: _Message, rest: list[_Message], rebalance_in: str | None = None, moved: Sequence[int] = (0, 1)
) -> tuple[list[tuple[str, int, int]], _Consumer]:
    """One run_once; a rebalance revokes the ``moved`` partitions and assigns them again at offset 5."""
    consumer = _Consumer(first, rest)
    loop = TransactionalLoop(
        Settings(), _Step(), topics=["c"], group_id="g", transactional_id="t", options=LoopOptions()
    )

    def rebalance() -> None:
        tps = [TopicPartition("c", p) for p in moved]
        loop._on_revoke(consumer, tps)  # type: ignore[arg-type]
        loop._on_assign(consumer, tps)  # type: ignore[arg-type]

    consumer.rebalance_in, consumer.on_rebalance = rebalance_in, rebalance
    loop._consumer = consumer  # type: ignore[assignment]
    loop._assigned = {("c", 0), ("c", 1)}
    gathered: list[tuple[str, int, int]] = []

    def process(messages: Sequence[Any]) -> None:
        gathered.extend((m.topic(), m.partition(), m.offset()) for m in messages)

    loop.process = process  # type: ignore[method-assign]
    loop.run_once()
    return gathered, consumer


def test_without_a_rebalance_the_polled_message_leads_the_batch() -> None:
    gathered, _ = _turn(_Message("c", 0, 5), [_Message("c", 0, 6), _Message("c", 1, 9)])
    assert gathered == [("c", 0, 5), ("c", 0, 6), ("c", 1, 9)]


def test_a_rebalance_inside_consume_drops_the_polled_message_it_made_stale() -> None:
    # Eager ("range") protocol: everything is revoked, then assigned again at the committed offsets, so
    # consume() returns the polled message a second time.
    gathered, consumer = _turn(
        _Message("c", 0, 5), [_Message("c", 0, 5), _Message("c", 0, 6)], rebalance_in="consume"
    )
    assert gathered == [("c", 0, 5), ("c", 0, 6)]  # once each
    assert [(tp.topic, tp.partition, tp.offset) for tp in consumer.assigned] == [("c", 0, 5), ("c", 1, 5)]


def test_a_rebalance_that_left_its_partition_alone_keeps_the_polled_message() -> None:
    gathered, _ = _turn(_Message("c", 0, 7), [_Message("c", 0, 8)], rebalance_in="consume", moved=[1])
    assert gathered == [("c", 0, 7), ("c", 0, 8)]


def test_a_rebalance_inside_poll_came_before_the_message_it_returned() -> None:
    gathered, _ = _turn(_Message("c", 0, 5), [_Message("c", 0, 6)], rebalance_in="poll")
    assert gathered == [("c", 0, 5), ("c", 0, 6)]
