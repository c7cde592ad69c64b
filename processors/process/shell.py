"""Interim transactional shell for the process runtime, with the contract of ``processors.loop``.

The shared design puts one transactional loop under both the command processor and the process
managers (the module ``processors.loop``, being written on branch ``loop``). Until it is merged, the
process runtime runs on this small one with the same names (:class:`Outgoing`, :class:`Incoming`,
:class:`Step`, :class:`TransactionalLoop`): consume, begin, ``step.process`` + ``step.due``, produce,
send offsets, commit; on an abortable error abort, ``step.aborted()`` and rewind to the committed
offsets. It lacks the processor's send-offsets watchdog and producer renewal: a fatal producer error
stops it (a restart's ``init_transactions`` settles what was open). Delete it once ``processors.loop``
is in.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Any, NamedTuple, Protocol

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Producer, TopicPartition

from esflow.errors import ProcessorError
from esflow.messaging.kafka import consumer_config, transactional_producer_config
from esflow.settings import Settings
from processors.processor import offset_fetch_retriable

log = logging.getLogger("esflow.process.shell")


class Outgoing(NamedTuple):
    """One record to produce inside the transaction (value None: a tombstone; partition None: murmur2)."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] | None = None
    partition: int | None = None


class Incoming(Protocol):
    """What the step reads of a consumed message (confluent's Message satisfies it)."""

    def topic(self) -> str | None: ...  # noqa: D102
    def partition(self) -> int | None: ...  # noqa: D102
    def offset(self) -> int | None: ...  # noqa: D102
    def key(self) -> bytes | None: ...  # noqa: D102
    def value(self) -> bytes | None: ...  # noqa: D102
    def headers(self) -> Any: ...  # noqa: D102
    def timestamp(self) -> tuple[int, int]: ...  # noqa: D102


class Step(Protocol):
    """The pure part a shell runs (see the module docstring of :mod:`processors.process.manager`)."""

    def assigned(self, partitions: Sequence[tuple[str, int]]) -> None: ...  # noqa: D102
    def revoked(self, partitions: Sequence[tuple[str, int]]) -> None: ...  # noqa: D102
    def process(self, messages: Sequence[Incoming], now: float) -> Sequence[Outgoing]: ...  # noqa: D102
    def due(self, now: float) -> Sequence[Outgoing]: ...  # noqa: D102
    def next_due(self) -> float | None: ...  # noqa: D102
    def committed(self) -> None: ...  # noqa: D102
    def aborted(self) -> None: ...  # noqa: D102


class TransactionalLoop:
    """Consume, run the step, produce its records and the offsets in one transaction per batch."""

    def __init__(
        self,
        settings: Settings,
        step: Step,
        *,
        topics: Sequence[str],
        group_id: str,
        transactional_id: str,
        batch_max: int = 500,
        poll_max_s: float = 0.1,
    ) -> None:
        self.settings = settings
        self.step = step
        self.topics = list(topics)
        self.group_id = group_id
        self.transactional_id = transactional_id
        self.batch_max = batch_max
        self.poll_max_s = poll_max_s
        self._stop = threading.Event()
        self._consumer: Consumer | None = None
        self._producer: Producer | None = None
        self.committed_batches = 0
        self.aborted_batches = 0

    def start(self) -> None:
        """Fence predecessors (``init_transactions``) and join the group."""
        p = self.settings.processor
        self._producer = Producer(
            transactional_producer_config(
                self.settings.kafka,
                self.transactional_id,
                **{"transaction.timeout.ms": p.transaction_timeout_ms, "linger.ms": 2},
            )
        )
        try:
            self._producer.init_transactions(60)
        except KafkaException as exc:
            raise ProcessorError(f"init_transactions failed: {exc.args[0].str()}") from exc
        self._consumer = Consumer(
            consumer_config(
                self.settings.kafka,
                self.group_id,
                **{
                    "session.timeout.ms": p.session_timeout_ms,
                    "heartbeat.interval.ms": max(300, min(1000, p.session_timeout_ms // 4)),
                    "max.poll.interval.ms": max(p.max_poll_interval_ms, p.session_timeout_ms),
                    "partition.assignment.strategy": "range",
                },
            )
        )
        self._consumer.subscribe(self.topics, on_assign=self._on_assign, on_revoke=self._on_revoke,
                                 on_lost=self._on_revoke)  # fmt: skip

    def stop(self) -> None:
        """Finish the open batch and leave (safe from signal handlers)."""
        self._stop.set()

    def close(self) -> None:
        """Leave the group and release the clients."""
        if self._consumer is not None:
            try:
                self._consumer.close()
            except KafkaException as exc:
                log.warning("consumer close failed: %s", exc)
            self._consumer = None
        if self._producer is not None:
            self._producer.flush(10)
            self._producer = None

    def run(self) -> None:
        """Start, loop until :meth:`stop`, close."""
        self.start()
        try:
            while not self._stop.is_set():
                self.run_once()
        finally:
            self.close()

    def run_once(self) -> int:
        """One batch (or one turn of due work) in one transaction; returns the messages consumed."""
        consumer, producer = self._require()
        wait = self.poll_max_s
        due = self.step.next_due()
        if due is not None:
            wait = max(0.0, min(wait, due - time.time()))
        # consume(n, timeout) blocks for its whole timeout unless n messages come: wait for the first
        # one, then take what else is already fetched (as the command processor does).
        first = consumer.poll(wait)
        fetched = [first] if first is not None else []
        if first is not None and self.batch_max > 1:
            fetched += consumer.consume(self.batch_max - 1, 0.002)
        messages = [m for m in fetched if m.error() is None]
        now = time.time()
        offsets: dict[tuple[str, int], int] = {}
        for m in messages:
            offsets[(m.topic() or "", m.partition() or 0)] = (m.offset() or 0) + 1
        try:
            out = [*self.step.process(messages, now), *self.step.due(now)]
        except Exception:
            self.step.aborted()
            raise
        if not out and not messages:
            return 0
        try:
            producer.begin_transaction()
            for record in out:
                self._produce(producer, record)
            if producer.flush(60):
                raise KafkaException(KafkaError(KafkaError._TIMED_OUT, "records not delivered in 60 s"))
            if offsets:
                tps = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
                producer.send_offsets_to_transaction(tps, consumer.consumer_group_metadata(), 30)
            producer.commit_transaction(60)
        except KafkaException as exc:
            self._abort(exc)
            return len(messages)
        self.step.committed()
        self.committed_batches += 1
        return len(messages)

    def _produce(self, producer: Producer, record: Outgoing) -> None:
        kwargs: dict[str, Any] = {"key": record.key, "headers": record.headers or []}
        if record.partition is not None:
            kwargs["partition"] = record.partition
        while True:
            try:
                producer.produce(record.topic, record.value, **kwargs)
                return
            except BufferError:
                producer.poll(0.05)

    def _abort(self, exc: KafkaException) -> None:
        err: KafkaError = exc.args[0]
        self.aborted_batches += 1
        self.step.aborted()
        if err.fatal():
            raise ProcessorError(f"transactional producer failed fatally: {err.str()}") from exc
        log.warning("aborting the batch (%s); rewinding to the committed offsets", err.str())
        consumer, producer = self._require()
        producer.abort_transaction(60)
        assignment = consumer.assignment()
        for tp in self._committed(assignment):
            consumer.seek(tp)

    def _committed(self, partitions: Sequence[TopicPartition]) -> list[TopicPartition]:
        """The committed offsets; waits out a previous owner's open transaction (KIP-447, require_stable)."""
        consumer, _ = self._require()
        if not partitions:
            return []
        deadline = time.monotonic() + 120
        while True:
            try:
                found = consumer.committed(
                    [TopicPartition(tp.topic, tp.partition) for tp in partitions], timeout=30
                )
                errors = [tp.error for tp in found if tp.error is not None]
            except KafkaException as exc:
                errors = [exc.args[0]]
            if not errors:
                break
            if time.monotonic() > deadline or not all(offset_fetch_retriable(e) for e in errors):
                raise ProcessorError(f"cannot read the committed offsets: {errors[0].str()}")
            time.sleep(0.2)
        for tp in found:
            if tp.offset < 0:
                tp.offset = OFFSET_BEGINNING
        return list(found)

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Offsets first: their fetch waits until a previous owner's transaction is settled, so the state
        # read next holds everything that transaction committed.
        offsets = self._committed(partitions)
        self.step.assigned([(tp.topic, tp.partition) for tp in partitions])
        if partitions:
            consumer.assign(offsets)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.step.revoked([(tp.topic, tp.partition) for tp in partitions])

    def _require(self) -> tuple[Consumer, Producer]:
        if self._consumer is None or self._producer is None:
            raise ProcessorError("the loop is not started")
        return self._consumer, self._producer
