"""Restore one partition's aggregates: the compacted snapshot partition, then the event tail after it.

Both reads are read_committed and stop at the end of the partition as that isolation level sees it
(librdkafka's partition EOF is the last stable offset), so an aborted or still-open transaction never
leaks into the state. Snapshots are kept as raw bytes (decoded on first use), which makes restoring a
million aggregates a matter of reading the partition. The event tail is folded record by record; it is
empty unless the snapshot topic lags the events (it never does when both come from this processor,
whose transactions write them together) or was lost, in which case every event is folded and the
idempotency window is rebuilt from the events' command ids (rejected commands cannot be rebuilt: they
appended nothing).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from esflow.errors import CodecError, RestoreError
from esflow.messaging.codec import Codec
from esflow.messaging.kafka import common_config, watermarks
from esflow.messaging.results import CommandResult, EventRef
from esflow.settings import KafkaSettings
from processors.state import HEADER_EVENTS_UNTIL, AggregateRecord, PartitionCache, ResultSlot


def _consumer(kafka: KafkaSettings) -> Consumer:
    return Consumer(
        {
            **common_config(kafka),
            "client.id": "esflow-processor-restore",
            # Never subscribes or commits: the group id is only a librdkafka requirement.
            "group.id": f"esflow-restore-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
            # The end of a partition is found by a fetch that comes back empty: do not let it idle.
            "fetch.wait.max.ms": 10,
            "fetch.max.bytes": 64 * 1024 * 1024,
            "max.partition.fetch.bytes": 16 * 1024 * 1024,
        }
    )


def _read(
    consumer: Consumer,
    topic: str,
    partition: int,
    start: int,
    deadline: float,
    handle: Callable[[Any], None],
) -> int:
    """Feed every committed record from ``start`` to the end to ``handle``; returns how many."""
    low, high = watermarks(consumer, topic, partition, timeout_s=max(1.0, deadline - time.monotonic()))
    start = max(start, low)
    if start >= high:
        return 0
    consumer.assign([TopicPartition(topic, partition, start)])
    count = 0
    try:
        while True:
            if time.monotonic() > deadline:
                raise RestoreError(f"restoring {topic}[{partition}] took too long ({count} records read)")
            # A batch consume waits for its whole count or the timeout: keep the timeout short.
            for msg in consumer.consume(num_messages=10000, timeout=0.05):
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        return count
                    raise RestoreError(f"reading {topic}[{partition}]: {err.str()}")
                handle(msg)
                count += 1
                if (msg.offset() or 0) >= high - 1:
                    return count  # the last record: no need to wait for the end-of-partition event
    finally:
        consumer.unassign()


def restore_partition(
    kafka: KafkaSettings,
    codec: Codec,
    cache: PartitionCache,
    *,
    snapshots_topic: str,
    events_topic: str,
    window: int,
    timeout_s: float,
    progress: Callable[[float], None] | None = None,
) -> tuple[int, int]:
    """Fill ``cache``; returns (snapshots read, events folded)."""
    deadline = time.monotonic() + timeout_s
    partition = cache.partition
    aggregate = cache.aggregate
    consumer = _consumer(kafka)

    def on_snapshot(msg: Any) -> None:
        key = msg.key()
        if key is None:
            return
        cache.load_raw(key.decode(), msg.value())
        for name, value in msg.headers() or ():
            if name == HEADER_EVENTS_UNTIL:
                cache.events_until = max(cache.events_until, int(value))
        if progress is not None:
            progress(1)

    def on_event(msg: Any) -> None:
        try:
            env = codec.decode(
                msg.value() or b"", kind="event", topic=msg.topic(), partition=partition, offset=msg.offset()
            )
        except CodecError as exc:
            raise RestoreError(f"cannot fold the event log: {exc.message}") from exc
        meta = env.metadata
        aggregate_id = str(meta.aggregate_id)
        record = cache.get(aggregate_id)
        version = meta.aggregate_version
        if version <= record.version:  # already in the snapshot
            return
        if version != record.version + 1:
            raise RestoreError(
                f"{events_topic}[{partition}]@{msg.offset()}: {aggregate.aggregate_type} {aggregate_id} "
                f"jumps from version {record.version} to {version}"
            )
        state = aggregate.evolve(record.state, env.event)
        command_id = str(meta.command_id)
        ref = EventRef(
            event_id=meta.event_id,
            type=env.event.type_name(),
            aggregate_version=version,
            topic=events_topic,
            partition=partition,
            offset=msg.offset(),
        )
        recent = record.recent
        if recent and recent[-1][0] == command_id and recent[-1][1].data is not None:
            # Several events of one command: extend the result rebuilt for its first event.
            previous = CommandResult.from_bytes(recent[-1][1].data)
            result = previous.model_copy(update={"version": version, "events": (*previous.events, ref)})
            recent = recent[:-1]
        else:
            result = CommandResult(
                command_id=meta.command_id,
                status="accepted",
                aggregate_type=aggregate.aggregate_type,
                aggregate_id=aggregate_id,
                version=version,
                events=(ref,),
                correlation_id=meta.correlation_id,
                processed_at=meta.occurred_at,
            )
        record = AggregateRecord(aggregate_id, version, state, msg.offset(), recent)
        cache.put(record.remember(command_id, ResultSlot(result.to_bytes()), window))
        cache.events_until = max(cache.events_until, msg.offset())
        if progress is not None:
            progress(1)

    try:
        snapshots = _read(consumer, snapshots_topic, partition, 0, deadline, on_snapshot)
        events = _read(consumer, events_topic, partition, cache.events_until + 1, deadline, on_event)
    except KafkaException as exc:
        raise RestoreError(f"restoring {snapshots_topic}[{partition}]: {exc.args[0].str()}") from exc
    finally:
        consumer.close()
    return snapshots, events
