"""Rebuild replay throughput: events/s of the bulk replayer into fresh version schemas, beside decoding alone.

Run against a running stack (``esflow stack up``; ESFLOW_KAFKA_BOOTSTRAP / ESFLOW_DATABASE_URL name it):

    .venv/bin/python -m ops.bench.rebuild [--events 1000000] [--reuse] [--batch 50000] [--processes N]

(as a module: run as a script, this file would shadow the ``projections`` package).

It produces a log of ``--events`` order events (``ops.bench.projection_workload.Workload``, uncompressed,
idempotent producer, ``--partitions`` partitions) on a fresh topic, removed at the end. With ``--reuse``
the topic has a fixed name (``bench-rebuild-<events>-<partitions>.events.order``) and is kept, so a
rerun skips the producing (about a minute per million events); it is produced again when its record
count is not the expected one. Then, in the same run:

- ``decode baseline``: one consumer reading the whole topic (read_committed, ``consume(n)`` batches) and
  decoding every record with the codec, no database: the ceiling for any projection in one process;
- ``replay <projection>``: :class:`projections.replay.Replayer` from offset 0 into a fresh schema created
  as a rebuild creates it (``create_schema(..., indexes=False)``), until caught up, then
  ``create_indexes``; the rate is events / (replay + index build), the two times are shown apart, with
  the number of replay processes (one per CPU for a log this size; ``--processes 1`` shows what one
  process does);
- ``vs baseline`` and ``vs target``: the rate over the decode baseline and over 50,000 events/s. The
  baseline is one process, so a replay split over several can beat it.

The schemas are dropped afterwards. Figures vary run to run on a shared 2-core machine; the README
quotes ranges over several runs.
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from psycopg import sql

from esflow.domain.messages import EventEnvelope
from esflow.messaging.codec import Codec
from esflow.messaging.kafka import consumer_config, producer_config, watermarks
from esflow.messaging.topics import event_topic, wait_until_visible
from esflow.readmodel.migrations import create_indexes, create_schema
from esflow.readmodel.store import ProjectionStore, create_engine
from esflow.settings import KafkaSettings, PostgresSettings, ProjectionSettings, TopicSettings, load_settings
from ops.bench.projection_workload import Workload
from projections import registry
from projections.replay import Replayer, ReplayProgress

TARGET_RATE = 50_000
PROJECTIONS = ("orders", "daily_revenue")
_CHUNK = 50_000


@dataclass
class Figure:
    """One row of the table."""

    name: str
    events: int
    seconds: float
    detail: str = ""

    @property
    def rate(self) -> float:
        """Events per second."""
        return self.events / self.seconds if self.seconds > 0 else 0.0


def order_events(count: int, seed: int = 1) -> Iterator[EventEnvelope]:
    """``count`` order events of the workload (its product and account events left out), lazily."""
    workload = Workload(seed=seed)
    left = count
    while left > 0:
        for env in workload.events(_CHUNK):
            if env.metadata.aggregate_type == "order":
                yield env
                left -= 1
                if left == 0:
                    return


def _records(kafka: KafkaSettings, topic: str, partitions: int) -> int | None:
    """Records in ``topic`` (sum of high watermarks: no transactions, no retention), None if absent."""
    consumer = Consumer(consumer_config(kafka, f"bench-probe-{uuid.uuid4().hex[:6]}"))
    try:
        meta = consumer.list_topics(topic, timeout=30).topics.get(topic)
        if meta is None or meta.error is not None or len(meta.partitions) != partitions:
            return None
        return sum(watermarks(consumer, topic, p)[1] for p in range(partitions))
    finally:
        consumer.close()


def produce(kafka: KafkaSettings, topic: str, count: int) -> float:
    """Publish ``count`` order events to ``topic`` (uncompressed, as the processor does); returns seconds."""
    codec = Codec.from_settings()
    producer = Producer(
        producer_config(kafka, **{"linger.ms": 50, "batch.num.messages": 10_000, "compression.type": "none"})
    )
    started = time.perf_counter()
    failed: list[str] = []

    def delivered(err: Any, _msg: Any) -> None:
        if err is not None:
            failed.append(str(err))

    for i, env in enumerate(order_events(count)):
        value = codec.encode(env, topic=topic)
        while True:
            try:
                producer.produce(topic, key=codec.key(env), value=value, on_delivery=delivered)
                break
            except BufferError:
                producer.poll(0.1)
        if i % 10_000 == 0:
            producer.poll(0)
            if i:
                print(f"\r  produced {i:,}/{count:,}", end="", file=sys.stderr, flush=True)
    producer.flush(300)
    print(file=sys.stderr)
    if failed:
        raise SystemExit(f"{len(failed)} records were not delivered, e.g. {failed[0]}")
    return time.perf_counter() - started


def prepare_topic(kafka: KafkaSettings, topics: TopicSettings, events: int, *, reuse: bool) -> str:
    """The order topic holding ``events`` events, produced now unless a reusable one already does."""
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap_servers})
    topic = event_topic("order", topics)
    if reuse:
        have = _records(kafka, topic, topics.partitions)
        if have == events:
            print(f"reusing {topic} ({events:,} events)")
            return topic
        if have is not None:
            print(f"{topic} holds {have:,} records, not {events:,}: producing it again")
            admin.delete_topics([topic], operation_timeout=30)[topic].result(30)
            deadline = time.monotonic() + 60
            while _records(kafka, topic, topics.partitions) is not None and time.monotonic() < deadline:
                time.sleep(0.5)
    admin.create_topics([NewTopic(topic, topics.partitions, 1)])[topic].result(30)
    wait_until_visible(admin, [topic], 30)
    seconds = produce(kafka, topic, events)
    print(f"produced {events:,} order events to {topic} in {seconds:.0f}s")
    return topic


def bench_decode(kafka: KafkaSettings, topic: str, partitions: int, batch: int) -> Figure:
    """Consume the whole topic and decode every record with the codec; no database."""
    codec = Codec.from_settings()
    consumer = Consumer(
        consumer_config(
            kafka,
            f"bench-decode-{uuid.uuid4().hex[:6]}",
            **{"enable.partition.eof": True, "max.partition.fetch.bytes": 8 * 1024 * 1024},
        )
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])  # OFFSET_BEGINNING: +0.5 s
    pending = set(range(partitions))
    count = 0
    started = time.perf_counter()
    try:
        while pending:
            first = consumer.poll(1.0)
            if first is None:
                continue
            for msg in [first, *consumer.consume(batch - 1, 0.05)]:
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        pending.discard(msg.partition())
                        continue
                    raise SystemExit(f"consumer error: {err.str()}")
                value, partition, offset = msg.value() or b"", msg.partition(), msg.offset()
                codec.decode(value, kind="event", topic=topic, partition=partition, offset=offset)
                count += 1
        return Figure("decode baseline (consume + codec)", count, time.perf_counter() - started)
    finally:
        consumer.close()


def bench_replay(
    kafka: KafkaSettings,
    pg: PostgresSettings,
    topics: TopicSettings,
    projection: str,
    batch: int,
    processes: int | None = None,
) -> Figure:
    """Replay ``projection`` into a fresh schema, indexes deferred and built at the end (timed)."""
    proj = registry.get(projection)
    schema = f"bench_rebuild_{uuid.uuid4().hex[:8]}"
    engine = create_engine(pg, schema)
    try:
        with engine.begin() as conn:
            create_schema(conn, schema, [proj.read_model.ddl_at(proj.version)], indexes=False)
        replayer = Replayer(
            proj,
            registry.EnvelopeDecoder(Codec.from_settings()),
            ProjectionStore(engine),
            kafka=kafka,
            topics=topics,
            group_id=f"bench-rebuild-{schema}",
            settings=ProjectionSettings(),
            batch_size=batch,
        )
        replayer._processes = processes
        shown = [0.0]

        def progress(p: ReplayProgress) -> None:
            if time.monotonic() - shown[0] > 2.0:
                shown[0] = time.monotonic()
                done = p.applied + p.skipped + p.dead_lettered
                print(
                    f"\r  {projection}: {done:,} events, {p.events_per_s:,.0f}/s, {p.total_lag:,} left   ",
                    end="",
                    file=sys.stderr,
                    flush=True,
                )

        started = time.perf_counter()
        result = replayer.run(lag_threshold=0, progress=progress)
        replayed = time.perf_counter()
        with engine.begin() as conn:
            indexes = create_indexes(conn, schema, [proj.read_model.ddl_at(proj.version)])
        finished = time.perf_counter()
        print(file=sys.stderr)
        events = result.applied + result.skipped + result.dead_lettered
        detail = (
            f"replay {replayed - started:.1f}s + {indexes} index(es) {finished - replayed:.1f}s, "
            f"{result.batches} batches, {replayer._used_processes} process(es)"
        )
        if result.dead_lettered or result.skipped:
            detail += f", {result.dead_lettered} dead letters, {result.skipped} skipped"
        return Figure(f"replay {projection}", events, finished - started, detail)
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(f"DROP SCHEMA IF EXISTS {sql.Identifier(schema).as_string()} CASCADE"))
        engine.dispose()


def main(argv: list[str] | None = None) -> int:
    """Produce (or reuse) the log, then print the decode baseline and the replay rates."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--batch", type=int, default=ProjectionSettings().rebuild_batch_size)
    parser.add_argument("--reuse", action="store_true", help="keep the topic (fixed name) for the next run")
    parser.add_argument("--projection", action="append", choices=PROJECTIONS, help="default: all of them")
    parser.add_argument(
        "--processes", type=int, default=None, help="replay processes (default: the replayer's choice)"
    )
    args = parser.parse_args(argv)
    settings = load_settings()
    kafka, pg = settings.kafka, settings.postgres
    prefix = (
        f"bench-rebuild-{args.events}-{args.partitions}."
        if args.reuse
        else f"bench-rebuild-{uuid.uuid4().hex[:6]}."
    )
    topics = TopicSettings(prefix=prefix, partitions=args.partitions)
    total_started = time.perf_counter()
    topic = prepare_topic(kafka, topics, args.events, reuse=args.reuse)
    try:
        figures = [bench_decode(kafka, topic, args.partitions, args.batch)]
        for projection in args.projection or PROJECTIONS:
            figures.append(bench_replay(kafka, pg, topics, projection, args.batch, args.processes))
    finally:
        if not args.reuse:
            admin = AdminClient({"bootstrap.servers": kafka.bootstrap_servers})
            for fut in admin.delete_topics([topic], operation_timeout=30).values():
                try:
                    fut.result(30)
                except Exception as exc:  # a leftover topic only costs disk on a bench stack
                    print(f"could not delete {topic}: {exc}", file=sys.stderr)
    baseline = figures[0].rate
    print(
        f"\n{args.events:,} order events, {args.partitions} partitions, batches of {args.batch:,}; "
        f"target {TARGET_RATE:,} events/s"
    )
    print(
        f"{'figure':<36} {'events':>10} {'seconds':>8} {'events/s':>10} {'vs baseline':>11} {'vs target':>9}"
    )
    for f in figures:
        print(
            f"{f.name:<36} {f.events:>10,} {f.seconds:>8.1f} {f.rate:>10,.0f} "
            f"{f.rate / baseline:>11.0%} {f.rate / TARGET_RATE:>9.0%}"
            + (f"  ({f.detail})" if f.detail else "")
        )
    print(f"total time (producing included): {time.perf_counter() - total_started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
