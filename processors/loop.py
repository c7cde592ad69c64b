"""The transactional shell: consume, let a pure step decide, write its records and the offsets in one txn.

The shell owns every Kafka call; a :class:`Step` owns every decision and returns the records to write
(confluent-kafka-python ``examples/eos_transactions.py`` is the model). One instance = one consumer
(read_committed, no auto-commit) and one transactional producer whose ``transactional.id`` is stable per
instance. The commit protocol of one turn, in order:

1. poll the first message (at most ``batch_max_ms``, or until the step's :meth:`Step.next_due`), then
   linger for up to ``batch_max_messages - 1`` more: ``batch_linger_ms`` when the previous transaction
   began at least ``batch_interval_ms`` ago (idle: a lone message goes at once), else until
   ``batch_interval_ms`` after it began (under load: fewer, larger transactions);
2. ``step.process(messages, now)`` and ``step.due(now)``: the records to write (nothing to do: no txn);
3. ``begin_transaction``; produce them (``partition=None``: murmur2 by key);
4. a :class:`FlushingStep` only: ``flush``, then ``step.flushed(offsets)`` with the offset of every record
   of step 3, and produce what it returns (answers that name those offsets);
5. ``send_offsets_to_transaction`` (the positions after the batch, with the consumer's group metadata);
6. ``commit_transaction`` (a retriable failure is retried: aborting could undo a commit the broker made);
7. ``step.committed()``: the step promotes what it staged.

Any Kafka error in 3-6 aborts: ``step.aborted()`` drops the staged state, ``abort_transaction`` (or, after a
fatal error, a new producer whose ``init_transactions`` settles the old one) and the consumer is rewound
to the committed offsets. Fencing follows KIP-447: the group metadata sent with the offsets carries the
consumer's generation, so an instance that lost its partitions (a zombie) is refused and can only abort;
a restart with the same ``transactional.id`` fences its predecessor in ``init_transactions``.

Rebalance callbacks only run inside ``poll``/``consume``, between turns, when no transaction is open:
``step.assigned`` runs before the consumer is positioned at the committed offsets (a step loads its state
there, through a collaborator of its own), ``step.revoked`` when partitions go (also when they are lost).

Contract shared with the process managers (additions are documented here): :class:`Outgoing`,
:class:`Incoming`, :class:`Step`, :class:`TransactionalLoop`; added: :class:`FlushingStep` (step 4),
:class:`LoopOptions` (the tunables, by default from ``settings.processor``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol, runtime_checkable

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from esflow import gctune
from esflow.errors import ProcessorError, ProcessorFenced
from esflow.messaging.kafka import consumer_config, transactional_producer_config
from esflow.settings import KafkaSettings, ProcessorSettings, Settings
from processors.kafka_errors import offset_fetch_retriable, producer_fenced, send_offsets
from processors.metrics import Metrics

RENEWALS_MAX = 3
"""Producer replacements after fatal errors allowed within RENEWALS_WINDOW_S before the instance stops."""
RENEWALS_WINDOW_S = 600.0


class Outgoing(NamedTuple):
    """One record to produce inside the transaction."""

    topic: str
    key: bytes | None
    value: bytes | None
    """None: a tombstone."""
    headers: list[tuple[str, bytes]] | None = None
    partition: int | None = None
    """None: the partitioner's (murmur2) choice by key."""


class Incoming(Protocol):
    """A consumed record as a step sees it: confluent's ``Message`` satisfies it; tests pass plain objects."""

    def topic(self) -> str | None: ...  # noqa: D102 - confluent's accessors
    def partition(self) -> int | None: ...  # noqa: D102
    def offset(self) -> int | None: ...  # noqa: D102
    def key(self) -> bytes | None: ...  # noqa: D102
    def value(self) -> bytes | None: ...  # noqa: D102
    def headers(self) -> Any: ...  # noqa: D102
    def timestamp(self) -> tuple[int, int]: ...  # noqa: D102


class Step(Protocol):
    """The pure part of a transactional loop: no Kafka calls in it (see the module docstring)."""

    def assigned(self, partitions: Sequence[tuple[str, int]]) -> None:
        """After assignment, before the first message of those partitions: load their state."""

    def revoked(self, partitions: Sequence[tuple[str, int]]) -> None:
        """The partitions are gone (revoked or lost): forget their state."""

    def process(self, messages: Sequence[Incoming], now: float) -> Sequence[Outgoing]:
        """The records one batch of input makes (``now``: epoch seconds); stage state, do not promote it."""

    def due(self, now: float) -> Sequence[Outgoing]:
        """Time-driven records (timers, scheduled commands), asked every turn, also without input."""

    def next_due(self) -> float | None:
        """When :meth:`due` next has something (epoch seconds); the shell polls at most until then."""

    def committed(self) -> None:
        """The transaction committed: promote the staged state."""

    def aborted(self) -> None:
        """The transaction aborted: drop the staged state (the shell rewinds to the committed offsets)."""


@runtime_checkable
class FlushingStep(Step, Protocol):
    """A step whose answers name the offsets its records got (the command processor's results)."""

    def flushed(self, offsets: Sequence[int]) -> Sequence[Outgoing]:
        """More records for the same transaction, once the turn's first records were delivered.

        ``offsets[i]`` is where the i-th record of this turn's :meth:`Step.process` then :meth:`Step.due`
        output landed.
        """


@dataclass(frozen=True)
class LoopOptions:
    """The shell's tunables (the processor's settings name them)."""

    batch_max_messages: int = 1000
    batch_max_ms: int = 100
    batch_linger_ms: int = 5
    batch_interval_ms: int = 50
    """Under load, transactions begin at most this often (0: only ``batch_linger_ms``)."""
    transaction_timeout_ms: int = 60000
    session_timeout_ms: int = 10000
    max_poll_interval_ms: int = 300000
    static_membership: bool = False
    assign_timeout_s: float = 300.0
    """Longest wait for the committed offsets of new partitions."""

    @classmethod
    def from_processor(cls, p: ProcessorSettings) -> LoopOptions:
        """The processor settings' values."""
        return cls(
            batch_max_messages=p.batch_max_commands,
            batch_max_ms=p.batch_max_ms,
            batch_linger_ms=p.batch_linger_ms,
            batch_interval_ms=p.batch_interval_ms,
            transaction_timeout_ms=p.transaction_timeout_ms,
            session_timeout_ms=p.session_timeout_ms,
            max_poll_interval_ms=p.max_poll_interval_ms,
            static_membership=p.static_membership,
            assign_timeout_s=p.restore_timeout_s,
        )


class TransactionalLoop:
    """Consume, begin, produce the step's records, send offsets, commit; abort and rewind; rebalance."""

    def __init__(
        self,
        settings: Settings,
        step: Step,
        *,
        topics: Sequence[str],
        group_id: str,
        transactional_id: str,
        options: LoopOptions | None = None,
        metrics: Metrics | None = None,
        logger: logging.Logger | None = None,
        client_id: str | None = None,
    ) -> None:
        self.kafka: KafkaSettings = settings.kafka
        self.step = step
        self.subscribed = list(topics)
        self.group_id = group_id
        self.transactional_id = transactional_id
        self.options = options or LoopOptions.from_processor(settings.processor)
        self.metrics = metrics or Metrics()
        self.log = logger or logging.getLogger("esflow.loop")
        self.client_id = client_id or f"esflow-{transactional_id}"
        self._flushing: FlushingStep | None = step if isinstance(step, FlushingStep) else None
        self._assigned: set[tuple[str, int]] = set()
        self._moved: set[tuple[str, int]] = set()
        """Partitions a rebalance revoked or assigned since the current batch's first message was polled."""
        self._stop = threading.Event()
        self._consumer: Consumer | None = None
        self._producer: Producer | None = None
        self._began_at: float | None = None
        """When the last transaction began (time.monotonic): what batch_interval_ms counts from."""
        self._last_lag = 0.0
        self.committed_batches = 0
        self.aborted_batches = 0
        self._renewals: list[float] = []
        """When the producer was last replaced after fatal errors (monotonic seconds)."""

    # ------------------------------------------------------------------------------ life cycle

    def stop(self) -> None:
        """Ask the loop to finish its current turn and leave (safe from signal handlers and threads)."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        """True once :meth:`stop` was called."""
        return self._stop.is_set()

    def start(self) -> None:
        """Fence predecessors (``init_transactions``) and join the group."""
        self._producer = self._new_producer()
        o = self.options
        overrides: dict[str, Any] = {
            "client.id": self.client_id,
            "session.timeout.ms": o.session_timeout_ms,
            # Rebalances are announced in heartbeat responses: beat often so a leave is seen quickly.
            "heartbeat.interval.ms": max(300, min(1000, o.session_timeout_ms // 4)),
            # Steps load their state inside the assignment callback, which counts against this interval.
            "max.poll.interval.ms": max(o.max_poll_interval_ms, o.session_timeout_ms),
            "enable.partition.eof": False,
            "partition.assignment.strategy": "range",
        }
        if o.static_membership:
            overrides["group.instance.id"] = self.transactional_id
        self._consumer = Consumer(consumer_config(self.kafka, self.group_id, **overrides))
        self._consumer.subscribe(
            self.subscribed, on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
        )

    def _new_producer(self) -> Producer:
        """The transactional producer, initialised: fences any predecessor and settles its transaction."""
        producer = Producer(
            transactional_producer_config(
                self.kafka,
                self.transactional_id,
                **{
                    "client.id": self.client_id,
                    "transaction.timeout.ms": self.options.transaction_timeout_ms,
                    "linger.ms": 2,
                    # No compression: aiokafka (the projections) needs extra packages to read lz4/zstd
                    # batches, and measured throughput did not improve with lz4.
                    "batch.num.messages": 10000,
                    "queue.buffering.max.messages": 500000,
                },
            )
        )
        try:
            producer.init_transactions(60)
        except KafkaException as exc:
            raise ProcessorError(f"init_transactions failed: {exc.args[0].str()}") from exc
        return producer

    def close(self) -> None:
        """Leave the group and release the clients (no transaction is open between turns)."""
        if self._consumer is not None:
            try:
                self._consumer.close()
            except KafkaException as exc:  # closing after a fatal error; nothing left to save
                self.log.warning("consumer close failed: %s", exc)
            self._consumer = None
        if self._producer is not None:
            try:
                self._producer.flush(10)
            except KafkaException as exc:  # a producer in fatal state: nothing left to deliver
                self.log.warning("producer flush failed: %s", exc)
            self._producer = None
        self.metrics.ready = False

    def run(self, between_turns: Callable[[int], None] | None = None) -> None:
        """Start, turn until :meth:`stop`, then close; ``between_turns(messages)`` after each turn."""
        self.start()
        try:
            while not self._stop.is_set():
                handled = self.run_once()
                if between_turns is not None:
                    between_turns(handled)
        finally:
            self.close()

    def run_once(self) -> int:
        """One turn: consume a batch (or none) and write what the step makes in one txn; returns messages."""
        consumer = self._require_consumer()
        o = self.options
        wait = o.batch_max_ms / 1000
        due_at = self.step.next_due()
        if due_at is not None:
            wait = min(wait, max(0.0, due_at - time.time()))
        # consume(n, timeout) always blocks for the whole timeout unless n messages arrive, which would
        # add the full batch window to every message's latency. Wait for the first one instead, then
        # linger for more: briefly when idle; under load until batch_interval_ms after the previous
        # transaction began. Each transaction costs the broker (markers on every partition it wrote,
        # the coordinator's log) and every consumer downstream a fetch and a batch of its own, whatever
        # its size: at 200 commands/s, 50 ms instead of 5 ms took the whole box from 170 % to 124 %
        # CPU at the same p99.
        first = consumer.poll(wait)
        messages: list[Message] = []
        if first is not None:
            messages.append(first)
            if o.batch_max_messages > 1:
                self._moved.clear()
                linger = o.batch_linger_ms / 1000
                if self._began_at is not None:
                    linger = max(linger, self._began_at + o.batch_interval_ms / 1000 - time.monotonic())
                messages.extend(consumer.consume(num_messages=o.batch_max_messages - 1, timeout=linger))
                if (first.topic(), first.partition()) in self._moved:
                    # A rebalance ran inside consume(): its partition was revoked (and perhaps assigned
                    # again, positioned at the committed offset, so this very message comes again, even
                    # in the same batch). librdkafka purges the outdated messages of its own batch at
                    # the rebalance (librdkafka#4117) but cannot reach one poll() already returned:
                    # processed, it answered a command twice (tests/e2e/processor/test_rebalance.py).
                    self.log.info("dropping %s[%s]@%s: its partition moved", *_where(first))
                    messages.pop(0)
        self.metrics.turn()
        self.process(messages)
        self._maybe_update_lag()
        return len(messages)

    # ------------------------------------------------------------------------------ the transaction

    def process(self, messages: Sequence[Message]) -> None:
        """Handle ``messages`` (and whatever is due) in one Kafka transaction; abort and rewind on error."""
        with gctune.paused():
            self._process(messages)

    def _process(self, messages: Sequence[Message]) -> None:
        started = time.perf_counter()
        batch: list[Message] = []
        offsets: dict[tuple[str, int], int] = {}
        for message in messages:
            err = message.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    self.log.warning("consume error: %s", err.str())
                continue
            topic, partition, offset = message.topic(), message.partition(), message.offset()
            if topic is None or partition is None or offset is None:  # pragma: no cover - librdkafka
                continue
            if (topic, partition) not in self._assigned:  # pragma: no cover - queues are purged on revoke
                self.log.warning("skipping %s[%d]@%d: partition not assigned", topic, partition, offset)
                continue
            offsets[(topic, partition)] = offset + 1
            batch.append(message)
        now = time.time()
        out = list(self.step.process(batch, now)) if batch else []
        out.extend(self.step.due(now))
        if not out and not offsets:
            return
        producer = self._require_producer()
        consumer = self._require_consumer()
        try:
            producer.begin_transaction()
            self._began_at = time.monotonic()
            if self._flushing is not None:
                landed = [-1] * len(out)
                failed: list[KafkaError] = []
                for i, record in enumerate(out):
                    self._produce(producer, record, _delivery(landed, i, failed))
                # The step's answers name these offsets: wait for the delivery reports.
                self._flush(producer)
                if failed:
                    raise KafkaException(failed[0])
                for record in self._flushing.flushed(landed):
                    self._produce(producer, record)
            else:
                for record in out:
                    self._produce(producer, record)
            if offsets:
                positions = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
                send_offsets(producer, positions, consumer.consumer_group_metadata())
            self._commit(producer)
        except KafkaException as exc:
            self.step.aborted()
            self._abort(exc)
            return
        self.step.committed()
        self.committed_batches += 1
        self.metrics.transactions.labels("committed").inc()
        self.metrics.transaction_seconds.observe(time.perf_counter() - started)
        self.metrics.batch_size.observe(len(batch))

    @staticmethod
    def _produce(
        producer: Producer,
        record: Outgoing,
        on_delivery: Callable[[KafkaError | None, Message], None] | None = None,
    ) -> None:
        kwargs: dict[str, Any] = {"key": record.key}
        if record.headers is not None:
            kwargs["headers"] = record.headers
        if record.partition is not None:
            kwargs["partition"] = record.partition
        if on_delivery is not None:
            kwargs["on_delivery"] = on_delivery
        while True:
            try:
                producer.produce(record.topic, record.value, **kwargs)
                return
            except BufferError:
                producer.poll(0.05)  # the local queue is full: let deliveries drain it

    def _commit(self, producer: Producer) -> None:
        # A retriable failure (a timeout) leaves the outcome unknown: aborting then could undo a commit
        # the broker already made while the step's state and the offsets disagree. librdkafka's rule: call
        # again.
        for attempt in range(5):
            try:
                producer.commit_transaction(60)
                return
            except KafkaException as exc:
                err: KafkaError = exc.args[0]
                if not err.retriable() or err.txn_requires_abort():
                    raise
                if attempt == 4:
                    # Still unknown: stop. A restart's init_transactions settles the transaction and the
                    # step's state is then loaded from whatever became of it.
                    raise ProcessorError(f"commit_transaction outcome unknown: {err.str()}") from exc
                self.log.warning("commit_transaction failed (%s); retrying", err.str())

    @staticmethod
    def _flush(producer: Producer) -> None:
        left = producer.flush(60)
        if left:
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT, f"{left} messages not delivered in 60 s"))

    def _abort(self, exc: KafkaException) -> None:
        err: KafkaError = exc.args[0]
        producer = self._require_producer()
        self.aborted_batches += 1
        self.metrics.transactions.labels("aborted").inc()
        if err.fatal():
            self._renew_producer(err, exc)
        else:
            self.log.warning("aborting the batch (%s); rewinding to the committed offsets", err.str())
            try:
                producer.abort_transaction(60)
            except KafkaException as abort_exc:
                abort_err: KafkaError = abort_exc.args[0]
                if not abort_err.fatal():
                    raise ProcessorError(f"abort_transaction failed: {abort_err.str()}") from exc
                self._renew_producer(abort_err, exc)
        self._rewind()
        # A broker-side refusal can repeat; do not spin on it.
        time.sleep(min(1.0, 0.05 * self.aborted_batches))

    def _renew_producer(self, err: KafkaError, exc: KafkaException) -> None:
        """Replace a producer whose transaction failed fatally, unless that keeps happening.

        Fatal is not always another instance: after a transaction coordinator fails over, the new one may
        answer the abort of a transaction it never saw with INVALID_TXN_STATE, and a coordinator that
        aborted a transaction on timeout bumps the epoch, so the abort is answered as fenced
        (``producer_fenced``). Both were seen on a 3-node cluster under broker kills. A new producer's
        init_transactions settles whatever is open; the consumer is then rewound like after any abort.
        Exactly-once does not rest on this choice (epochs and group generations still fence a zombie);
        only liveness does. An instance that really shares its transactional id with another would be
        fenced again and again: after RENEWALS_MAX renewals within RENEWALS_WINDOW_S it stops.
        """
        now = time.monotonic()
        self._renewals = [t for t in self._renewals if now - t < RENEWALS_WINDOW_S] + [now]
        if len(self._renewals) > RENEWALS_MAX:
            if producer_fenced(err):
                raise ProcessorFenced(
                    f"transactional producer {self.transactional_id} was fenced: {err.str()}",
                    hint="another instance uses the same ESFLOW_PROCESSOR_INSTANCE_ID; this one stops",
                ) from exc
            raise ProcessorError(f"transactional producer keeps failing fatally: {err.str()}") from exc
        self.log.warning("transactional producer failed fatally (%s); replacing it", err.str())
        # The new producer's init_transactions fences the old one (aborting its transaction); the old one
        # is destroyed once nothing holds it (a blocked send_offsets call keeps it until it returns).
        self._producer = None
        self._producer = self._new_producer()

    def _rewind(self) -> None:
        """Seek every assigned partition back to its committed offset (the step's state is already there)."""
        consumer = self._require_consumer()
        assignment = consumer.assignment()
        if not assignment:
            return
        for tp in self._committed(assignment, 60):
            try:
                consumer.seek(tp)
            except KafkaException as exc:
                # Not rewinding would skip the aborted messages: stop rather than lose them.
                raise ProcessorError(
                    f"cannot rewind {tp.topic}[{tp.partition}]: {exc.args[0].str()}"
                ) from exc

    def _committed(self, partitions: Sequence[TopicPartition], timeout_s: float) -> list[TopicPartition]:
        """The group's committed offsets for ``partitions`` (the beginning where none).

        Waits out a moving group coordinator or a previous owner's open transaction, up to ``timeout_s``.
        """
        consumer = self._require_consumer()
        deadline = time.monotonic() + timeout_s
        while True:
            wanted = [TopicPartition(tp.topic, tp.partition) for tp in partitions]
            try:
                found = consumer.committed(wanted, timeout=max(1.0, deadline - time.monotonic()))
                errors = [tp.error for tp in found if tp.error is not None]
            except KafkaException as exc:
                errors = [exc.args[0]]
            if not errors:
                for tp in found:
                    if tp.offset < 0:
                        tp.offset = OFFSET_BEGINNING
                return found
            if not all(offset_fetch_retriable(e) for e in errors) or time.monotonic() >= deadline:
                raise ProcessorError(f"cannot read the committed offsets: {errors[0].str()}")
            self.log.warning("reading the committed offsets failed (%s); retrying", errors[0].str())
            time.sleep(0.2)  # the coordinator lookup librdkafka started needs a moment

    # ------------------------------------------------------------------------------ rebalance

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        started = time.perf_counter()
        self.metrics.ready = False
        pairs = [(tp.topic, tp.partition) for tp in partitions]
        self._moved.update(pairs)
        # Start from explicit committed offsets instead of letting librdkafka fetch them: its own
        # OffsetFetch, answered NOT_COORDINATOR by a group coordinator that just moved (a node killed),
        # leaves the partitions unfetched for good (confluentinc/librdkafka#5586, 2.16 included), and
        # the loop then waits forever without an error. committed() reports that error, so retry it.
        # Fetched before the step loads its state: the fetch waits out a previous owner's transaction
        # that holds offsets of these partitions (KIP-447), whose state records the load must then see.
        positions = self._committed(partitions, self.options.assign_timeout_s) if partitions else []
        self.step.assigned(pairs)
        self._assigned.update(pairs)
        if positions:
            consumer.assign(positions)
        elapsed = time.perf_counter() - started
        self.metrics.restore_seconds.set(elapsed)
        self.metrics.assigned_partitions.set(len(self._assigned))
        self.metrics.ready = True
        self.log.info("assigned %s in %.2fs", sorted(f"{t}[{p}]" for t, p in pairs), elapsed)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        pairs = [(tp.topic, tp.partition) for tp in partitions]
        self._moved.update(pairs)
        self.step.revoked(pairs)
        self._assigned.difference_update(pairs)
        self.metrics.assigned_partitions.set(len(self._assigned))
        self.log.info("revoked %s", sorted(f"{t}[{p}]" for t, p in pairs))

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._on_revoke(consumer, partitions)

    def _maybe_update_lag(self) -> None:
        now = time.monotonic()
        if now - self._last_lag < 5 or self._consumer is None:
            return
        self._last_lag = now
        lag: dict[str, int] = {}
        try:
            assignment = self._consumer.assignment()
            for tp in self._consumer.position(assignment):
                _low, high = self._consumer.get_watermark_offsets(tp, cached=True)
                if tp.offset >= 0 and high >= 0:
                    lag[tp.topic] = lag.get(tp.topic, 0) + max(0, high - tp.offset)
        except KafkaException:
            return
        for topic in self.subscribed:
            self.metrics.lag.labels(topic).set(lag.get(topic, 0))

    # ------------------------------------------------------------------------------ access

    @property
    def consumer(self) -> Consumer:
        """The group consumer (tests drive it step by step)."""
        return self._require_consumer()

    @property
    def producer(self) -> Producer:
        """The transactional producer."""
        return self._require_producer()

    def _require_consumer(self) -> Consumer:
        if self._consumer is None:
            raise ProcessorError("the loop is not started")
        return self._consumer

    def _require_producer(self) -> Producer:
        if self._producer is None:
            raise ProcessorError("the loop is not started")
        return self._producer


def _delivery(
    landed: list[int], i: int, failed: list[KafkaError]
) -> Callable[[KafkaError | None, Message], None]:
    """The delivery report of the i-th record: its offset into ``landed``, or its error into ``failed``."""

    def done(err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            failed.append(err)
        else:
            landed[i] = msg.offset() or 0  # a delivered record always has one

    return done


def _where(message: Message) -> tuple[str | None, int | None, int | None]:
    return message.topic(), message.partition(), message.offset()
