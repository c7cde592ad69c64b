"""The exactly-once command loop: consume a batch of commands, decide, and write everything in one txn.

One instance = one consumer (subscribed to ``commands.<aggregate>``, read_committed, no auto-commit) and
one transactional producer whose ``transactional.id`` is stable per instance (``<group>-<instance>``).
Per batch (the first command within ``batch_max_ms``, then up to ``batch_max_commands`` arriving within
``batch_linger_ms``)::

    begin_transaction
      per command: decode -> idempotency window -> execute(decide) -> produce events (explicit partition)
      flush                              # the events now have offsets, which the results name
      produce results (command-results), one snapshot per touched aggregate, dead letters
      send_offsets_to_transaction(offsets after the batch, consumer_group_metadata())
    commit_transaction                   # then, and only then, the new records replace the cached ones

Fencing follows KIP-447 (confluent-kafka-python ``examples/eos_transactions.py``): the group metadata
passed with the offsets carries the consumer's generation, so an instance that lost its partitions in a
rebalance (a zombie) has its ``send_offsets_to_transaction`` refused and can only abort. A restarted
instance with the same ``transactional.id`` fences its predecessor in ``init_transactions``, which also
aborts whatever the predecessor left open. On any abortable error the batch is aborted, the consumer is
rewound to the committed offsets and the cache is untouched (it only ever holds committed records).

Rebalance callbacks only run inside ``consume()``, between batches, when no transaction is open; the
assignment callback restores the state of the new partitions before the first of their commands is read.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

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
from esflow.domain.aggregates import AGGREGATES, Aggregate, Rejection, execute
from esflow.domain.messages import CommandEnvelope
from esflow.errors import (
    CodecError,
    ConfigError,
    ProcessorError,
    ProcessorFenced,
    RestoreError,
    SchemaValidationError,
    UnknownSchemaError,
)
from esflow.messaging import results as rc
from esflow.messaging import topics as topic_names
from esflow.messaging.codec import (
    HEADER_CONTENT_TYPE,
    HEADER_CORRELATION,
    HEADER_ID,
    HEADER_KIND,
    HEADER_TYPE,
    HEADER_VERSION,
    Codec,
)
from esflow.messaging.deadletters import (
    DLQ_ERROR,
    DLQ_OFFSET,
    DLQ_PARTITION,
    DLQ_PREFIX,
    DLQ_PROCESSOR,
    DLQ_REASON,
    DLQ_TOPIC,
)
from esflow.messaging.kafka import consumer_config, partition_for, transactional_producer_config
from esflow.messaging.results import AppendedEvent, CommandResult, DeadLetterReport, answer_key, report_key
from esflow.settings import KafkaSettings, ProcessorSettings, TopicSettings
from processors.metrics import Metrics
from processors.restore import restore_partition
from processors.state import HEADER_EVENTS_UNTIL, AggregateRecord, PartitionCache, ResultSlot, compact_entry

log = logging.getLogger("esflow.processor")


RENEWALS_MAX = 3
"""Producer replacements after fatal errors allowed within RENEWALS_WINDOW_S before the instance stops."""
RENEWALS_WINDOW_S = 600.0
SEND_OFFSETS_TIMEOUT_S = 30.0
"""The timeout handed to ``send_offsets_to_transaction``."""
SEND_OFFSETS_GRACE_S = 15.0
"""How long past that timeout the call may still block before the producer is replaced."""


@dataclass(frozen=True)
class Topics:
    """The topics one processor group reads and writes: names from :mod:`esflow.messaging.topics`."""

    settings: TopicSettings
    aggregate_types: tuple[str, ...]

    def commands(self, aggregate_type: str) -> str:
        """``commands.<aggregate>``."""
        return topic_names.command_topic(aggregate_type, self.settings)

    def events(self, aggregate_type: str) -> str:
        """``events.<aggregate>``, co-partitioned with the commands."""
        return topic_names.event_topic(aggregate_type, self.settings)

    def snapshots(self, aggregate_type: str) -> str:
        """``snapshots.<aggregate>``, compacted, co-partitioned with the commands."""
        return topic_names.snapshot_topic(aggregate_type, self.settings)

    @property
    def results(self) -> str:
        """``command-results``, compacted, keyed by answer or report key."""
        return topic_names.results_topic(self.settings)

    @property
    def dead_letter(self) -> str:
        """``commands.dead-letter``."""
        return topic_names.dead_letter_topic(self.settings)

    @property
    def command_topics(self) -> list[str]:
        """Every command topic the group subscribes to."""
        return [self.commands(a) for a in self.aggregate_types]

    @classmethod
    def from_settings(cls, topics: TopicSettings, processor: ProcessorSettings) -> Topics:
        """The names for the configured prefix and aggregate types."""
        unknown = [a for a in processor.aggregate_types if a not in AGGREGATES]
        if unknown or not processor.aggregate_types:
            raise ConfigError(
                f"unknown aggregate types {unknown} in ESFLOW_PROCESSOR_AGGREGATES",
                hint=f"choose among {', '.join(AGGREGATES)}",
            )
        return cls(topics, processor.aggregate_types)


@dataclass(slots=True)
class _Accepted:
    """What an accepted command's result says, serialised once its events have offsets."""

    command_id: str
    aggregate_type: str
    aggregate_id: str
    version: int
    correlation_id: str | None
    processed_at: datetime
    key: tuple[str, int, str]
    """The aggregate's batch key."""
    refs: list[AppendedEvent] = field(default_factory=list)
    """Per event, its offset filled in by the delivery report."""


@dataclass(slots=True)
class _Pending:
    """One command's answer (or dead-letter report), produced after the batch's events have offsets."""

    key: bytes
    """:func:`~esflow.messaging.results.answer_key` or, for a dead letter, its ``report_key``."""
    slot: ResultSlot
    result: CommandResult | _Accepted | DeadLetterReport | None
    """None for a duplicate: the slot already holds (or will hold) the stored result."""


class _Batch:
    """The working set of one transaction: new records, answers, dead letters, offsets and counts."""

    def __init__(self) -> None:
        self.records: dict[tuple[str, int, str], AggregateRecord] = {}
        self.pending: list[_Pending] = []
        self.offsets: dict[tuple[str, int], int] = {}
        self.events_until: dict[tuple[str, int], int] = {}
        self.size = 0
        self.delivery_error: KafkaError | None = None
        self.counts: Counter[tuple[str, str, str]] = Counter()
        """Commands by (aggregate type, outcome, reason), counted in the metrics once committed."""
        self.events: Counter[str] = Counter()
        """Appended events by aggregate type."""


class _EventIds:
    """Random (version 4) UUID strings, like ``str(uuid.uuid4())`` but drawn from ``os.urandom`` in blocks.

    ``uuid4()`` reads the OS random source once per call and the string form is built in Python: for
    every event that was a tenth of the processor's time.
    """

    __slots__ = ("_block", "_pos")

    BLOCK = 1024

    def __init__(self) -> None:
        self._block = b""
        self._pos = 0

    def next(self) -> str:
        """A fresh id."""
        pos = self._pos
        if pos == len(self._block):
            self._block = os.urandom(16 * self.BLOCK)
            pos = 0
        self._pos = pos + 16
        raw = self._block[pos : pos + 16]
        # RFC 4122: version 4 in the high nibble of byte 6, variant 10 in the top bits of byte 8.
        h = (
            raw[:6] + bytes(((raw[6] & 0x0F) | 0x40,)) + raw[7:8] + bytes(((raw[8] & 0x3F) | 0x80,)) + raw[9:]
        ).hex()
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


class Processor:
    """One command-processor instance."""

    def __init__(
        self,
        kafka: KafkaSettings,
        topics: TopicSettings,
        settings: ProcessorSettings,
        codec: Codec,
        *,
        metrics: Metrics | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.kafka = kafka
        self.settings = settings
        self.codec = codec
        self.topics = Topics.from_settings(topics, settings)
        self.metrics = metrics or Metrics()
        self.clock = clock
        self._by_topic: dict[str, Aggregate[Any]] = {
            self.topics.commands(a): AGGREGATES[a] for a in self.topics.aggregate_types
        }
        self._caches: dict[tuple[str, int], PartitionCache] = {}
        self._partitions: dict[str, int] = {}
        self._event_ids = _EventIds()
        self._stop = threading.Event()
        self._consumer: Consumer | None = None
        self._producer: Producer | None = None
        self._last_lag = 0.0
        self.committed_batches = 0
        self.aborted_batches = 0
        self._renewals: list[float] = []
        """When the producer was last replaced after fatal errors (monotonic seconds)."""

    # ------------------------------------------------------------------------------ life cycle

    def stop(self) -> None:
        """Ask the loop to finish its current batch and leave (safe from signal handlers and threads)."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        """True once :meth:`stop` was called."""
        return self._stop.is_set()

    def start(self) -> None:
        """Check the topics, fence predecessors (``init_transactions``) and join the group."""
        self._partitions = self._check_topics()
        self._producer = self._new_producer()
        overrides: dict[str, Any] = {
            "client.id": f"esflow-processor-{self.settings.instance_id}",
            "session.timeout.ms": self.settings.session_timeout_ms,
            # Rebalances are announced in heartbeat responses: beat often so a leave is seen quickly.
            "heartbeat.interval.ms": max(300, min(1000, self.settings.session_timeout_ms // 4)),
            # Restores run inside the assignment callback and count against this interval.
            "max.poll.interval.ms": max(self.settings.max_poll_interval_ms, self.settings.session_timeout_ms),
            "enable.partition.eof": False,
            "partition.assignment.strategy": "range",
        }
        if self.settings.static_membership:
            overrides["group.instance.id"] = self.settings.transactional_id
        self._consumer = Consumer(consumer_config(self.kafka, self.settings.group_id, **overrides))
        self._consumer.subscribe(
            self.topics.command_topics,
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )

    def _new_producer(self) -> Producer:
        """The transactional producer, initialised: fences any predecessor and settles its transaction."""
        producer = Producer(
            transactional_producer_config(
                self.kafka,
                self.settings.transactional_id,
                **{
                    "client.id": f"esflow-processor-{self.settings.instance_id}",
                    "transaction.timeout.ms": self.settings.transaction_timeout_ms,
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
        """Leave the group and release the clients (no transaction is open between batches)."""
        if self._consumer is not None:
            try:
                self._consumer.close()
            except KafkaException as exc:  # closing after a fatal error; nothing left to save
                log.warning("consumer close failed: %s", exc)
            self._consumer = None
        if self._producer is not None:
            try:
                self._producer.flush(10)
            except KafkaException as exc:  # a producer in fatal state: nothing left to deliver
                log.warning("producer flush failed: %s", exc)
            self._producer = None
        self.metrics.ready = False

    def run(self) -> None:
        """Start, loop until :meth:`stop`, then close."""
        self.start()
        try:
            while not self._stop.is_set():
                self.run_once()
        finally:
            self.close()

    def run_once(self) -> int:
        """Consume one batch and process it in one transaction; returns the number of messages."""
        consumer = self._require_consumer()
        # consume(n, timeout) always blocks for the whole timeout unless n messages arrive, which would
        # add the full batch window to every command's latency. Wait for the first command instead, then
        # linger briefly for more: under load the fetched queue fills the batch at once.
        first = consumer.poll(self.settings.batch_max_ms / 1000)
        messages: list[Message] = []
        if first is not None:
            messages.append(first)
            if self.settings.batch_max_commands > 1:
                messages.extend(
                    consumer.consume(
                        num_messages=self.settings.batch_max_commands - 1,
                        timeout=self.settings.batch_linger_ms / 1000,
                    )
                )
        self.metrics.turn()
        if messages:
            self.process(messages)
        self._maybe_update_lag()
        return len(messages)

    # ------------------------------------------------------------------------------ the batch

    def process(self, messages: Sequence[Message]) -> None:
        """Handle ``messages`` in one Kafka transaction; abort and rewind on any Kafka error."""
        with gctune.paused():
            self._process(messages)

    def _process(self, messages: Sequence[Message]) -> None:
        producer = self._require_producer()
        consumer = self._require_consumer()
        started = time.perf_counter()
        batch = _Batch()
        try:
            producer.begin_transaction()
            for message in messages:
                err = message.error()
                if err is not None:
                    if err.code() != KafkaError._PARTITION_EOF:
                        log.warning("consume error: %s", err.str())
                    continue
                topic, partition, offset = _where(message)
                if (topic, partition) not in self._caches:  # pragma: no cover - queues are purged on revoke
                    log.warning("skipping %s[%d]@%d: partition not assigned", topic, partition, offset)
                    continue
                batch.offsets[(topic, partition)] = offset + 1
                batch.size += 1
                self._handle(message, batch)
            # Wait for the events' delivery reports: the results name their offsets.
            self._flush(producer)
            if batch.delivery_error is not None:
                raise KafkaException(batch.delivery_error)
            self._produce_answers(batch)
            offsets = [TopicPartition(t, p, o) for (t, p), o in batch.offsets.items()]
            self._send_offsets(producer, offsets, consumer.consumer_group_metadata())
            self._commit(producer)
        except KafkaException as exc:
            self._abort(exc)
            return
        for (topic, partition, _), record in batch.records.items():
            cache = self._caches.get((topic, partition))
            if cache is not None:
                cache.put(record)
        for key, until in batch.events_until.items():
            self._caches[key].events_until = until
        self.committed_batches += 1
        for (aggregate_type, outcome, reason), n in batch.counts.items():
            self.metrics.count(aggregate_type, outcome, reason, n)
        for aggregate_type, n in batch.events.items():
            self.metrics.count_events(aggregate_type, n)
        self.metrics.transactions.labels("committed").inc()
        self.metrics.transaction_seconds.observe(time.perf_counter() - started)
        self.metrics.batch_size.observe(batch.size)

    @staticmethod
    def _send_offsets(producer: Producer, offsets: list[TopicPartition], group: Any) -> None:
        """``send_offsets_to_transaction``, given up on (as a fatal error) if it outlives its own timeout.

        librdkafka 2.16 can block here for good: the TxnOffsetCommit goes through its coordinator-request
        state machine (rdkafka_coord.c), which sets a timeout it never checks and, when the cached group
        coordinator's node was killed, waits for a broker state change that does not come (cf. the open
        confluentinc/librdkafka#3847). On a 3-node cluster that was the processor answering nothing after
        a broker kill. The call therefore runs in a thread; if it is still blocked, the producer is left to
        that thread (destroying it mid-call is unsafe) and the fatal error makes :meth:`_abort` replace it.
        """
        failure: list[KafkaException] = []

        def call() -> None:
            try:
                producer.send_offsets_to_transaction(offsets, group, SEND_OFFSETS_TIMEOUT_S)
            except KafkaException as exc:
                failure.append(exc)

        worker = threading.Thread(target=call, name="esflow-send-offsets", daemon=True)
        worker.start()
        worker.join(SEND_OFFSETS_TIMEOUT_S + SEND_OFFSETS_GRACE_S)
        if worker.is_alive():
            raise KafkaException(
                KafkaError(
                    KafkaError._TIMED_OUT,
                    f"send_offsets_to_transaction still blocked after "
                    f"{SEND_OFFSETS_TIMEOUT_S + SEND_OFFSETS_GRACE_S:.0f} s",
                    fatal=True,
                )
            )
        if failure:
            raise failure[0]

    @staticmethod
    def _commit(producer: Producer) -> None:
        # A retriable failure (a timeout) leaves the outcome unknown: aborting then could undo a commit
        # the broker already made while the cache and offsets disagree. librdkafka's rule: call again.
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
                    # restore then reads whatever became of it.
                    raise ProcessorError(f"commit_transaction outcome unknown: {err.str()}") from exc
                log.warning("commit_transaction failed (%s); retrying", err.str())

    def _flush(self, producer: Producer) -> None:
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
            log.warning("aborting the batch (%s); rewinding to the committed offsets", err.str())
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
        aborted a transaction on timeout bumps the epoch, so the abort is answered as fenced (_FENCED).
        Both were seen on a 3-node cluster under broker kills. A new producer's init_transactions settles
        whatever is open; the consumer is then rewound like after any abort. Exactly-once does not rest on
        this choice (epochs and group generations still fence a zombie); only liveness does. An instance
        that really shares its transactional id with another would be fenced again and again: after
        RENEWALS_MAX renewals within RENEWALS_WINDOW_S it stops.
        """
        now = time.monotonic()
        self._renewals = [t for t in self._renewals if now - t < RENEWALS_WINDOW_S] + [now]
        if len(self._renewals) > RENEWALS_MAX:
            if producer_fenced(err):
                raise ProcessorFenced(
                    f"transactional producer {self.settings.transactional_id} was fenced: {err.str()}",
                    hint="another instance uses the same ESFLOW_PROCESSOR_INSTANCE_ID; this one stops",
                ) from exc
            raise ProcessorError(f"transactional producer keeps failing fatally: {err.str()}") from exc
        log.warning("transactional producer failed fatally (%s); replacing it", err.str())
        # The new producer's init_transactions fences the old one (aborting its transaction); the old one
        # is destroyed once nothing holds it (a blocked send_offsets call keeps it until it returns).
        self._producer = None
        self._producer = self._new_producer()

    def _rewind(self) -> None:
        """Seek every assigned partition back to its committed offset (the cache is already there)."""
        consumer = self._require_consumer()
        assignment = consumer.assignment()
        if not assignment:
            return
        for tp in self._committed(assignment, 60):
            try:
                consumer.seek(tp)
            except KafkaException as exc:
                # Not rewinding would skip the aborted commands: stop rather than lose them.
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
            log.warning("reading the committed offsets failed (%s); retrying", errors[0].str())
            time.sleep(0.2)  # the coordinator lookup librdkafka started needs a moment

    # ------------------------------------------------------------------------------ one command

    def _handle(self, message: Message, batch: _Batch) -> None:
        topic, partition, offset = _where(message)
        aggregate = self._by_topic[topic]
        value = message.value()
        try:
            envelope = self.codec.decode(
                value if value is not None else b"",
                kind="command",
                topic=topic,
                partition=partition,
                offset=offset,
            )
        except CodecError as exc:
            reason = (
                rc.UNKNOWN_COMMAND_TYPE
                if isinstance(exc, UnknownSchemaError)
                else rc.INVALID_COMMAND
                if isinstance(exc, SchemaValidationError)
                else rc.UNDECODABLE
            )
            self._dead_letter(message, batch, aggregate, reason, exc.message)
            return
        meta = envelope.metadata
        aggregate_id = str(meta.aggregate_id)
        if meta.aggregate_type != aggregate.aggregate_type:
            self._dead_letter(
                message, batch, aggregate, rc.WRONG_TOPIC,
                f"a {meta.aggregate_type} command on {topic}", envelope=envelope,
            )  # fmt: skip
            return
        if message.key() != aggregate_id.encode():
            self._dead_letter(
                message, batch, aggregate, rc.WRONG_KEY,
                f"key {message.key()!r} is not the aggregate id {aggregate_id}", envelope=envelope,
            )  # fmt: skip
            return
        if self.settings.verify_partitioning:
            expected = partition_for(aggregate_id.encode(), self._partitions[topic])
            if expected != partition:
                self._dead_letter(
                    message, batch, aggregate, rc.WRONG_PARTITION,
                    f"murmur2 puts this key on partition {expected}, not {partition}", envelope=envelope,
                )  # fmt: skip
                return
        key = (topic, partition, aggregate_id)
        record = batch.records.get(key)
        if record is None:
            try:
                record = self._caches[(topic, partition)].get(aggregate_id)
            except RestoreError as exc:  # one unreadable snapshot must not stop the partition
                self._dead_letter(
                    message, batch, aggregate, rc.PROCESSING_ERROR, exc.message, envelope=envelope
                )
                return
        command_id = str(meta.command_id)
        result_key = answer_key(aggregate.aggregate_type, aggregate_id, command_id)
        stored = record.find(command_id)
        if stored is not None:
            batch.pending.append(_Pending(result_key, stored, None))
            batch.counts[(aggregate.aggregate_type, "duplicate", "")] += 1
            return
        try:
            decision = execute(
                aggregate, record.state, record.version, envelope.command, meta.expected_version
            )
            if isinstance(decision, Rejection):
                new_state = record.state
            else:
                new_state = aggregate.fold(decision, record.state)
        except Exception as exc:  # a bug in decide/evolve must not stall the partition
            log.exception("processing %s failed", command_id)
            self._dead_letter(message, batch, aggregate, rc.PROCESSING_ERROR, repr(exc), envelope=envelope)
            return
        slot = ResultSlot()
        now = self.clock()
        if isinstance(decision, Rejection):
            result = CommandResult(
                command_id=meta.command_id,
                status="rejected",
                aggregate_type=aggregate.aggregate_type,
                aggregate_id=aggregate_id,
                version=record.version,
                reason=decision.code,
                message=decision.message,
                details=decision.details,
                correlation_id=meta.correlation_id,
                processed_at=now,
            )
            batch.pending.append(_Pending(result_key, slot, result))
            batch.records[key] = record.remember(command_id, slot, self.settings.idempotency_window)
            batch.counts[(aggregate.aggregate_type, "rejected", decision.code)] += 1
            return
        correlation_id = None if meta.correlation_id is None else str(meta.correlation_id)
        accepted = _Accepted(
            command_id=command_id,
            aggregate_type=aggregate.aggregate_type,
            aggregate_id=aggregate_id,
            version=record.version + len(decision),
            correlation_id=correlation_id,
            processed_at=now,
            key=key,
        )
        pending = _Pending(result_key, slot, accepted)
        events_topic = self.topics.events(aggregate.aggregate_type)
        producer = self._require_producer()
        # Encode every event before producing any: a command is appended whole or not at all.
        correlation = (correlation_id or "").encode()
        content_type = self.codec.framing.content_type.encode()
        encoded: list[tuple[bytes, list[tuple[str, bytes]]]] = []
        for i, event in enumerate(decision, start=1):
            event_id = self._event_ids.next()
            version = record.version + i
            # The record Codec.encode would build from an EventEnvelope (metadata + payload fields), built
            # directly: the envelope models would only be dumped again, at twice the cost of the encoding.
            # Ids go in as the strings the uuid logical type writes, each converted once per command.
            avro: dict[str, Any] = {
                "metadata": {
                    "event_id": event_id,
                    "aggregate_type": aggregate.aggregate_type,
                    "aggregate_id": aggregate_id,
                    "aggregate_version": version,
                    "occurred_at": now,
                    "command_id": command_id,
                    "correlation_id": correlation_id,
                    "causation_id": command_id,
                },
                **event.model_dump(),
            }
            type_name = event.type_name()
            accepted.refs.append(AppendedEvent(event_id, type_name, version, events_topic, partition, -1))
            headers = [
                (HEADER_TYPE, type_name.encode()),
                (HEADER_VERSION, str(event.schema_version).encode()),
                (HEADER_KIND, b"event"),
                (HEADER_ID, event_id.encode()),
                (HEADER_CORRELATION, correlation),
                (HEADER_CONTENT_TYPE, content_type),
            ]
            try:
                encoded.append((self.codec.encode_record(type_name, avro, topic=events_topic), headers))
            except CodecError as exc:
                self._dead_letter(
                    message, batch, aggregate, rc.PROCESSING_ERROR, exc.message, envelope=envelope
                )
                return
        for i, (value, headers) in enumerate(encoded):
            self._produce(
                producer,
                events_topic,
                value,
                aggregate_id.encode(),
                partition,
                headers,
                on_delivery=self._on_event_delivery(accepted.refs, i, batch),
            )
        batch.pending.append(pending)
        batch.records[key] = AggregateRecord(
            aggregate_id=aggregate_id,
            version=record.version + len(decision),
            state=new_state,
            last_event_offset=record.last_event_offset,  # set once the events have offsets
            recent=record.recent,
        ).remember(command_id, slot, self.settings.idempotency_window)
        batch.counts[(aggregate.aggregate_type, "accepted", "")] += 1
        batch.events[aggregate.aggregate_type] += len(decision)

    @staticmethod
    def _on_event_delivery(
        refs: list[AppendedEvent], i: int, batch: _Batch
    ) -> Callable[[KafkaError | None, Message], None]:
        def done(err: KafkaError | None, msg: Message) -> None:
            if err is not None:
                batch.delivery_error = err
            else:
                r = refs[i]
                offset = msg.offset() or 0  # a delivered record always has one
                refs[i] = AppendedEvent(r.event_id, r.type, r.aggregate_version, r.topic, r.partition, offset)

        return done

    def _produce_answers(self, batch: _Batch) -> None:
        """Results, then one snapshot per touched aggregate; all inside the open transaction."""
        producer = self._require_producer()
        last_offsets: dict[tuple[str, int, str], int] = {}
        for pending in batch.pending:
            result = pending.result
            if type(result) is _Accepted:
                if result.refs:
                    last_offsets[result.key] = max(r.offset for r in result.refs)
                at = rc.datetime_json(result.processed_at)
                pending.slot.fill(
                    rc.accepted_json(
                        command_id=result.command_id,
                        aggregate_type=result.aggregate_type,
                        aggregate_id=result.aggregate_id,
                        version=result.version,
                        events=result.refs,  # every offset is set by now
                        correlation_id=result.correlation_id,
                        processed_at=at,
                    ),
                    compact_entry(result.command_id, result.version, result.correlation_id, at, result.refs),
                )
                headers = rc.ACCEPTED_HEADERS
            elif isinstance(result, CommandResult | DeadLetterReport):
                pending.slot.fill(result.to_bytes())
                headers = result.headers()
            else:
                headers = [
                    ("content-type", rc.RESULT_CONTENT_TYPE.encode()),
                    (rc.HEADER_REPLAYED, b"1"),
                ]
            if pending.slot.data is None:  # pragma: no cover - slots are filled in batch order
                raise ProcessorError(f"result under {pending.key!r} missing")
            self._produce(producer, self.topics.results, pending.slot.data, pending.key, None, headers)
        for key, last in last_offsets.items():
            r = batch.records[key]
            batch.records[key] = AggregateRecord(r.aggregate_id, r.version, r.state, last, r.recent)
        for (topic, partition, _), record in batch.records.items():
            last = record.last_event_offset
            cache_key = (topic, partition)
            until = max(batch.events_until.get(cache_key, self._caches[cache_key].events_until), last)
            batch.events_until[cache_key] = until
        for (topic, partition, aggregate_id), record in batch.records.items():
            aggregate = self._by_topic[topic]
            self._produce(
                producer,
                self.topics.snapshots(aggregate.aggregate_type),
                record.to_snapshot(aggregate, self.topics.events(aggregate.aggregate_type), partition),
                aggregate_id.encode(),
                partition,
                [(HEADER_EVENTS_UNTIL, str(batch.events_until[(topic, partition)]).encode())],
            )

    def _dead_letter(
        self,
        message: Message,
        batch: _Batch,
        aggregate: Aggregate[Any],
        reason: str,
        error: str,
        *,
        envelope: CommandEnvelope | None = None,
    ) -> None:
        """Original bytes and headers to the dead-letter topic, and a report under the record's position.

        The report is keyed by where the record sits (:func:`report_key`), never by the command id it
        claims: the id of a record the processor refused is whatever its producer wrote, and answering under
        it would let any producer replace or hide the answer to someone else's command.
        """
        batch.counts[(aggregate.aggregate_type, "dead_letter", reason)] += 1
        topic, partition, offset = _where(message)
        # The record's own headers are kept, except any that pose as ours: a dead-letter reader must find
        # exactly one reason and one source position, the processor's.
        headers = [(n, v) for n, v in _headers(message) if not n.startswith(DLQ_PREFIX)]
        headers += [
            (DLQ_REASON, reason.encode()),
            (DLQ_ERROR, error[:2000].encode()),
            (DLQ_TOPIC, topic.encode()),
            (DLQ_PARTITION, str(partition).encode()),
            (DLQ_OFFSET, str(offset).encode()),
            (DLQ_PROCESSOR, self.settings.transactional_id.encode()),
        ]
        log.warning(
            "dead-lettering %s[%d]@%d: %s (%s)",
            topic,
            partition,
            offset,
            reason,
            error,
        )
        producer = self._require_producer()
        self._produce(producer, self.topics.dead_letter, message.value(), message.key(), None, headers)
        report = DeadLetterReport(
            reason=reason,
            message=error[:2000],
            topic=topic,
            partition=partition,
            offset=offset,
            aggregate_type=aggregate.aggregate_type,
            claimed_command_id=self._claimed_id(message, envelope),
            processed_at=self.clock(),
        )
        batch.pending.append(_Pending(report_key(topic, partition, offset), ResultSlot(), report))

    def _claimed_id(self, message: Message, envelope: CommandEnvelope | None) -> uuid.UUID | None:
        """The command id a refused record's body claims, if the body can be read that far (never headers)."""
        if envelope is not None:
            return envelope.metadata.command_id
        try:
            # The Avro body may be fine and only the model check failed: its metadata is then readable.
            record = self.codec.decode_record(message.value() or b"")
            cid = (record.record.get("metadata") or {}).get("command_id")
            return None if cid is None else uuid.UUID(str(cid))
        except (CodecError, ValueError, TypeError, AttributeError):
            return None

    @staticmethod
    def _produce(
        producer: Producer,
        topic: str,
        value: bytes | None,
        key: bytes | None,
        partition: int | None,
        headers: list[tuple[str, bytes]],
        on_delivery: Callable[[KafkaError | None, Message], None] | None = None,
    ) -> None:
        kwargs: dict[str, Any] = {"key": key, "headers": headers}
        if partition is not None:
            kwargs["partition"] = partition
        if on_delivery is not None:
            kwargs["on_delivery"] = on_delivery
        while True:
            try:
                producer.produce(topic, value, **kwargs)
                return
            except BufferError:
                producer.poll(0.05)  # the local queue is full: let deliveries drain it

    # ------------------------------------------------------------------------------ rebalance

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        started = time.perf_counter()
        self.metrics.ready = False
        self.metrics.restore_records.set(0)
        for tp in partitions:
            aggregate = self._by_topic[tp.topic]
            cache = PartitionCache(aggregate, tp.partition)
            restore_partition(
                self.kafka,
                self.codec,
                cache,
                snapshots_topic=self.topics.snapshots(aggregate.aggregate_type),
                events_topic=self.topics.events(aggregate.aggregate_type),
                window=self.settings.idempotency_window,
                timeout_s=self.settings.restore_timeout_s,
                progress=self.metrics.restore_records.inc,
            )
            self._caches[(tp.topic, tp.partition)] = cache
        # Start from explicit committed offsets instead of letting librdkafka fetch them: its own
        # OffsetFetch, answered NOT_COORDINATOR by a group coordinator that just moved (a node killed),
        # leaves the partitions unfetched for good (confluentinc/librdkafka#5586, 2.16 included), and
        # the processor then waits forever without an error. committed() reports that error, so retry it.
        if partitions:
            consumer.assign(self._committed(partitions, self.settings.restore_timeout_s))
        elapsed = time.perf_counter() - started
        self.metrics.restore_seconds.set(elapsed)
        self._refresh_gauges()
        self.metrics.ready = True
        log.info(
            "assigned %s; restored %d aggregates in %.2fs",
            sorted(f"{tp.topic}[{tp.partition}]" for tp in partitions),
            sum(len(c) for c in self._caches.values()),
            elapsed,
        )

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self._caches.pop((tp.topic, tp.partition), None)
        self._refresh_gauges()
        log.info("revoked %s", sorted(f"{tp.topic}[{tp.partition}]" for tp in partitions))

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._on_revoke(consumer, partitions)

    def _refresh_gauges(self) -> None:
        self.metrics.assigned_partitions.set(len(self._caches))
        self.metrics.cached_aggregates.set(sum(len(c) for c in self._caches.values()))

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
        for topic in self.topics.command_topics:
            self.metrics.lag.labels(topic).set(lag.get(topic, 0))
        self._refresh_gauges()

    # ------------------------------------------------------------------------------ helpers

    def cache(self, topic: str, partition: int) -> PartitionCache | None:
        """The cache of one assigned partition (tests and tools)."""
        return self._caches.get((topic, partition))

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
            raise ProcessorError("the processor is not started")
        return self._consumer

    def _require_producer(self) -> Producer:
        if self._producer is None:
            raise ProcessorError("the processor is not started")
        return self._producer

    def _check_topics(self) -> dict[str, int]:
        from confluent_kafka.admin import AdminClient

        from esflow.messaging.kafka import common_config

        admin = AdminClient(common_config(self.kafka))
        try:
            md = admin.list_topics(timeout=30)
        except KafkaException as exc:
            raise ProcessorError(f"cannot read topic metadata: {exc.args[0].str()}") from exc
        counts = {name: len(t.partitions) for name, t in md.topics.items() if t.error is None}
        needed = [self.topics.results, self.topics.dead_letter]
        for a in self.topics.aggregate_types:
            needed += [self.topics.commands(a), self.topics.events(a), self.topics.snapshots(a)]
        missing = [t for t in needed if t not in counts]
        if missing:
            raise ConfigError(f"missing topics: {', '.join(missing)}", hint="run `esflow topics apply`")
        for a in self.topics.aggregate_types:
            n = {
                counts[self.topics.commands(a)],
                counts[self.topics.events(a)],
                counts[self.topics.snapshots(a)],
            }
            if len(n) != 1:
                raise ConfigError(
                    f"{a}: commands, events and snapshots topics must be co-partitioned, have {sorted(n)}",
                    hint="the catalogue declares equal partition counts; migrate the odd topic",
                )
        return {self.topics.commands(a): counts[self.topics.commands(a)] for a in self.topics.aggregate_types}


# Fatal producer errors that say another producer with our transactional.id took over (or, as seen after a
# coordinator aborted our timed-out transaction, that the epoch was bumped without one).
_FENCED = frozenset({KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH})


def producer_fenced(err: KafkaError) -> bool:
    """True if a fatal producer error means another instance took over (see _FENCED)."""
    return err.code() in _FENCED


# Errors of an offset fetch that the next attempt can get past: the group coordinator moved or is loading
# the group, the request timed out, or a transaction still holds the offsets (KIP-447).
_OFFSET_FETCH_RETRIABLE = frozenset(
    {
        KafkaError.NOT_COORDINATOR,
        KafkaError.COORDINATOR_NOT_AVAILABLE,
        KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
        KafkaError.UNSTABLE_OFFSET_COMMIT,
        KafkaError.REQUEST_TIMED_OUT,
        KafkaError._WAIT_COORD,
        KafkaError._TRANSPORT,
        KafkaError._TIMED_OUT,
    }
)


def offset_fetch_retriable(err: KafkaError) -> bool:
    """True if reading committed offsets failed with ``err`` only for now (see _OFFSET_FETCH_RETRIABLE)."""
    return err.code() in _OFFSET_FETCH_RETRIABLE or err.retriable()


def _where(message: Message) -> tuple[str, int, int]:
    """Topic, partition and offset of a consumed message (never None for a message without error)."""
    topic, partition, offset = message.topic(), message.partition(), message.offset()
    if topic is None or partition is None or offset is None:  # pragma: no cover - librdkafka contract
        raise ProcessorError("a consumed message without topic, partition or offset")
    return topic, partition, offset


def _headers(message: Message) -> list[tuple[str, bytes]]:
    """A message's headers as (name, bytes) pairs (a header without value becomes b"")."""
    out: list[tuple[str, bytes]] = []
    for item in message.headers() or ():
        name, value = item[0], item[1]
        if isinstance(name, str):
            out.append((name, value if isinstance(value, bytes) else (value or "").encode()))
    return out
