"""The command step: decode, route, idempotency, decide and dead-letter one batch of commands; no Kafka.

The shell (:mod:`processors.loop`) hands it a batch and writes what it returns in one transaction::

    process(commands)  per command: decode -> idempotency window -> execute(decide) -> events (explicit
                       partition, co-partitioned with the commands) or a dead letter
    flushed(offsets)   the events now have offsets, which the results name: results (command-results),
                       one snapshot per touched aggregate, and the dead-letter reports
    committed()        the new records replace the cached ones; aborted(): they are dropped

The cache only ever holds committed records, so an aborted batch leaves it as the last commit did. The
state of newly assigned partitions is loaded in :meth:`CommandStep.assigned` through the ``restore``
collaborator given at construction (the Kafka reads live there, in :mod:`processors.restore`).
"""

from __future__ import annotations

import logging
import os
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from esflow.domain.aggregates import AGGREGATES, Aggregate, Rejection, execute
from esflow.domain.messages import CommandEnvelope
from esflow.errors import (
    CodecError,
    ConfigError,
    ProcessorError,
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
from esflow.messaging.kafka import partition_for
from esflow.messaging.results import AppendedEvent, CommandResult, DeadLetterReport, answer_key, report_key
from esflow.settings import ProcessorSettings, TopicSettings
from processors.loop import Incoming, Outgoing
from processors.metrics import Metrics
from processors.state import HEADER_EVENTS_UNTIL, AggregateRecord, PartitionCache, ResultSlot, compact_entry

log = logging.getLogger("esflow.processor")

# Dead-letter headers: the reason and where the original came from (its own headers are kept too).

Restore = Callable[[PartitionCache, str, str], None]
"""Fills a partition's cache from ``(cache, snapshots topic, events topic)``: the step's only Kafka reads."""


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
    """Per event, its offset filled in by :meth:`CommandStep.flushed`."""
    first: int = 0
    """Index of its first event among the batch's records."""


@dataclass(slots=True)
class _Pending:
    """One command's answer (or dead-letter report), produced after the batch's events have offsets."""

    key: bytes
    """:func:`~esflow.messaging.results.answer_key` or, for a dead letter, its ``report_key``."""
    slot: ResultSlot
    result: CommandResult | _Accepted | DeadLetterReport | None
    """None for a duplicate: the slot already holds (or will hold) the stored result."""


class _Batch:
    """The staged working set of one transaction: new records, answers, dead letters and counts."""

    def __init__(self) -> None:
        self.records: dict[tuple[str, int, str], AggregateRecord] = {}
        self.pending: list[_Pending] = []
        self.out: list[Outgoing] = []
        self.events_until: dict[tuple[str, int], int] = {}
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


class CommandStep:
    """The command processor's step (a :class:`~processors.loop.FlushingStep`)."""

    def __init__(
        self,
        topics: Topics,
        settings: ProcessorSettings,
        codec: Codec,
        restore: Restore,
        *,
        metrics: Metrics | None = None,
        partition_counts: dict[str, int] | None = None,
    ) -> None:
        self.topics = topics
        self.settings = settings
        self.codec = codec
        self.restore = restore
        self.metrics = metrics or Metrics()
        self.partition_counts: dict[str, int] = dict(partition_counts or {})
        """Partitions per command topic (checked against murmur2 when ``verify_partitioning``)."""
        self._by_topic: dict[str, Aggregate[Any]] = {
            topics.commands(a): AGGREGATES[a] for a in topics.aggregate_types
        }
        self._caches: dict[tuple[str, int], PartitionCache] = {}
        self._event_ids = _EventIds()
        self._batch = _Batch()

    # ------------------------------------------------------------------------------ Step

    def assigned(self, partitions: Sequence[tuple[str, int]]) -> None:
        """Restore the aggregates of the new partitions."""
        self.metrics.restore_records.set(0)
        for topic, partition in partitions:
            aggregate = self._by_topic[topic]
            cache = PartitionCache(aggregate, partition)
            self.restore(
                cache,
                self.topics.snapshots(aggregate.aggregate_type),
                self.topics.events(aggregate.aggregate_type),
            )
            self._caches[(topic, partition)] = cache
        self._refresh_gauges()
        log.info("restored %d aggregates", sum(len(c) for c in self._caches.values()))

    def revoked(self, partitions: Sequence[tuple[str, int]]) -> None:
        """Forget the partitions' aggregates."""
        for key in partitions:
            self._caches.pop(key, None)
        self._refresh_gauges()

    def process(self, messages: Sequence[Incoming], now: float) -> Sequence[Outgoing]:
        """Events and dead letters of ``messages``, in order; answers wait for :meth:`flushed`."""
        batch = self._batch = _Batch()
        at = datetime.fromtimestamp(now, UTC)
        for message in messages:
            topic, partition, _ = _where(message)
            if (topic, partition) in self._caches:
                self._handle(message, batch, at)
        return batch.out

    def due(self, now: float) -> Sequence[Outgoing]:
        """Nothing: commands are not timed."""
        return ()

    def next_due(self) -> float | None:
        """Never."""
        return None

    def flushed(self, offsets: Sequence[int]) -> Sequence[Outgoing]:
        """Results, then one snapshot per touched aggregate, now that the events have ``offsets``."""
        batch = self._batch
        out: list[Outgoing] = []
        last_offsets: dict[tuple[str, int, str], int] = {}
        for pending in batch.pending:
            result = pending.result
            if type(result) is _Accepted:
                refs = result.refs
                for i, r in enumerate(refs):
                    refs[i] = AppendedEvent(
                        r.event_id,
                        r.type,
                        r.aggregate_version,
                        r.topic,
                        r.partition,
                        offsets[result.first + i],
                    )
                if refs:
                    last_offsets[result.key] = max(r.offset for r in refs)
                at = rc.datetime_json(result.processed_at)
                pending.slot.fill(
                    rc.accepted_json(
                        command_id=result.command_id,
                        aggregate_type=result.aggregate_type,
                        aggregate_id=result.aggregate_id,
                        version=result.version,
                        events=refs,
                        correlation_id=result.correlation_id,
                        processed_at=at,
                    ),
                    compact_entry(result.command_id, result.version, result.correlation_id, at, refs),
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
            out.append(Outgoing(self.topics.results, pending.key, pending.slot.data, headers))
        for key, last in last_offsets.items():
            rec = batch.records[key]
            batch.records[key] = AggregateRecord(rec.aggregate_id, rec.version, rec.state, last, rec.recent)
        for (topic, partition, _), record in batch.records.items():
            cache_key = (topic, partition)
            until = max(
                batch.events_until.get(cache_key, self._caches[cache_key].events_until),
                record.last_event_offset,
            )
            batch.events_until[cache_key] = until
        for (topic, partition, aggregate_id), record in batch.records.items():
            aggregate = self._by_topic[topic]
            out.append(
                Outgoing(
                    self.topics.snapshots(aggregate.aggregate_type),
                    aggregate_id.encode(),
                    record.to_snapshot(aggregate, self.topics.events(aggregate.aggregate_type), partition),
                    [(HEADER_EVENTS_UNTIL, str(batch.events_until[(topic, partition)]).encode())],
                    partition,
                )
            )
        return out

    def committed(self) -> None:
        """The batch's records replace the cached ones; its commands are counted."""
        batch, self._batch = self._batch, _Batch()
        for (topic, partition, _), record in batch.records.items():
            cache = self._caches.get((topic, partition))
            if cache is not None:
                cache.put(record)
        for key, until in batch.events_until.items():
            cache = self._caches.get(key)
            if cache is not None:
                cache.events_until = until
        for (aggregate_type, outcome, reason), n in batch.counts.items():
            self.metrics.count(aggregate_type, outcome, reason, n)
        for aggregate_type, n in batch.events.items():
            self.metrics.count_events(aggregate_type, n)
        if batch.records:
            self._refresh_gauges()

    def aborted(self) -> None:
        """Drop the batch: the cache still holds what the last commit left."""
        self._batch = _Batch()

    # ------------------------------------------------------------------------------ access

    def cache(self, topic: str, partition: int) -> PartitionCache | None:
        """The cache of one assigned partition (tests and tools)."""
        return self._caches.get((topic, partition))

    def _refresh_gauges(self) -> None:
        self.metrics.cached_aggregates.set(sum(len(c) for c in self._caches.values()))

    # ------------------------------------------------------------------------------ one command

    def _handle(self, message: Incoming, batch: _Batch, now: datetime) -> None:
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
            self._dead_letter(message, batch, aggregate, reason, exc.message, now)
            return
        meta = envelope.metadata
        aggregate_id = str(meta.aggregate_id)
        if meta.aggregate_type != aggregate.aggregate_type:
            self._dead_letter(
                message, batch, aggregate, rc.WRONG_TOPIC,
                f"a {meta.aggregate_type} command on {topic}", now, envelope=envelope,
            )  # fmt: skip
            return
        if message.key() != aggregate_id.encode():
            self._dead_letter(
                message, batch, aggregate, rc.WRONG_KEY,
                f"key {message.key()!r} is not the aggregate id {aggregate_id}", now, envelope=envelope,
            )  # fmt: skip
            return
        if self.settings.verify_partitioning:
            expected = partition_for(aggregate_id.encode(), self.partition_counts[topic])
            if expected != partition:
                self._dead_letter(
                    message, batch, aggregate, rc.WRONG_PARTITION,
                    f"murmur2 puts this key on partition {expected}, not {partition}", now, envelope=envelope,
                )  # fmt: skip
                return
        key = (topic, partition, aggregate_id)
        record = batch.records.get(key)
        if record is None:
            try:
                record = self._caches[(topic, partition)].get(aggregate_id)
            except RestoreError as exc:  # one unreadable snapshot must not stop the partition
                self._dead_letter(
                    message, batch, aggregate, rc.PROCESSING_ERROR, exc.message, now, envelope=envelope
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
            self._dead_letter(
                message, batch, aggregate, rc.PROCESSING_ERROR, repr(exc), now, envelope=envelope
            )
            return
        slot = ResultSlot()
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
        events_topic = self.topics.events(aggregate.aggregate_type)
        # Encode every event before emitting any: a command is appended whole or not at all.
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
                    message, batch, aggregate, rc.PROCESSING_ERROR, exc.message, now, envelope=envelope
                )
                return
        accepted.first = len(batch.out)
        key_bytes = aggregate_id.encode()
        for value, headers in encoded:
            batch.out.append(Outgoing(events_topic, key_bytes, value, headers, partition))
        batch.pending.append(_Pending(result_key, slot, accepted))
        batch.records[key] = AggregateRecord(
            aggregate_id=aggregate_id,
            version=record.version + len(decision),
            state=new_state,
            last_event_offset=record.last_event_offset,  # set once the events have offsets
            recent=record.recent,
        ).remember(command_id, slot, self.settings.idempotency_window)
        batch.counts[(aggregate.aggregate_type, "accepted", "")] += 1
        batch.events[aggregate.aggregate_type] += len(decision)

    def _dead_letter(
        self,
        message: Incoming,
        batch: _Batch,
        aggregate: Aggregate[Any],
        reason: str,
        error: str,
        now: datetime,
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
        log.warning("dead-lettering %s[%d]@%d: %s (%s)", topic, partition, offset, reason, error)
        batch.out.append(Outgoing(self.topics.dead_letter, message.key(), message.value(), headers))
        report = DeadLetterReport(
            reason=reason,
            message=error[:2000],
            topic=topic,
            partition=partition,
            offset=offset,
            aggregate_type=aggregate.aggregate_type,
            claimed_command_id=self._claimed_id(message, envelope),
            processed_at=now,
        )
        batch.pending.append(_Pending(report_key(topic, partition, offset), ResultSlot(), report))

    def _claimed_id(self, message: Incoming, envelope: CommandEnvelope | None) -> uuid.UUID | None:
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


def _where(message: Incoming) -> tuple[str, int, int]:
    """Topic, partition and offset of a consumed message (never None for a message without error)."""
    topic, partition, offset = message.topic(), message.partition(), message.offset()
    if topic is None or partition is None or offset is None:  # pragma: no cover - librdkafka contract
        raise ProcessorError("a consumed message without topic, partition or offset")
    return topic, partition, offset


def _headers(message: Incoming) -> list[tuple[str, bytes]]:
    """A message's headers as (name, bytes) pairs (a header without value becomes b"")."""
    out: list[tuple[str, bytes]] = []
    for item in message.headers() or ():
        name, value = item[0], item[1]
        if isinstance(name, str):
            out.append((name, value if isinstance(value, bytes) else (value or "").encode()))
    return out
