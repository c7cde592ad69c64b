"""Projection throughput: events/s per worker into the read models, beside a plain COPY baseline.

Run against a running stack (``esflow stack up``; ESFLOW_KAFKA_BOOTSTRAP / ESFLOW_DATABASE_URL name it):

    .venv/bin/python -m ops.bench.projections [--events 50000] [--projection event_log]

(as a module: run as a script, this file would shadow the ``projections`` package).

Every figure is measured in this run, on fresh topics and a fresh schema (both removed afterwards):

- ``worker``: one real ``esflow projector run <projection>`` process (Faust, read_committed, batches of
  ``--batch`` events, one Postgres transaction with checkpoints per batch), timed from its first applied
  batch to its last, on a backlog of ``--events`` events already in Kafka;
- ``faust ceiling``: the same worker with a projection that writes nothing but checkpoints and a decoder
  that does nothing: what Faust's per-message pipeline allows on this machine;
- ``applier``: the same decode + apply + checkpoint path in-process, without Kafka or Faust, so the cost
  of the consumer can be read off;
- ``copy baseline``: a plain psycopg ``COPY`` of the very rows the projection writes (pre-built, no
  decoding) into the same table, in batches of the same size, one transaction each;
- ``upsert copy`` vs ``upsert unnest``: the ``orders`` projection (load, fold, upsert) in-process with
  each bulk method (the choice of ``esflow.readmodel.bulk``'s default).

Targets (issue 5): worker >= 20,000 events/s and >= 50% of the COPY baseline; (issue 16) the worker
>= 70% of the faust ceiling, whatever the projection.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic
from psycopg import sql

from esflow import gctune
from esflow.domain.messages import AGGREGATE_TYPES
from esflow.messaging.codec import Codec
from esflow.messaging.kafka import producer_config
from esflow.messaging.topics import event_topic, wait_until_visible
from esflow.readmodel import versions
from esflow.readmodel.applier import BatchApplier
from esflow.readmodel.bulk import UpsertMethod, copy_rows, upsert
from esflow.readmodel.migrations import ReadModelDDL, create_schema
from esflow.readmodel.model import ReadModel
from esflow.readmodel.projection import Decoded, RawEvent, prepare
from esflow.readmodel.store import ProjectionStore, create_engine
from esflow.settings import KafkaSettings, PostgresSettings, ProjectionSettings, TopicSettings, load_settings
from ops.bench.projection_workload import Workload
from projections import orders as orders_projection
from projections import registry, runtime
from projections.common import json_text
from projections.common import values as orders_projection_values
from projections.event_log import COLUMNS as EVENT_LOG_COLUMNS
from projections.event_log import EventLogProjection, event_log

TARGET_RATE = 20_000
TARGET_SHARE = 0.5
CEILING_SHARE = 0.7
AGGREGATES = AGGREGATE_TYPES


class NoopProjection:
    """Reads every event topic and writes nothing but checkpoints: the ceiling Faust itself allows."""

    name = "noop"
    version = 1
    read_model = ReadModel(name="noop", tables=(), ddl={1: ReadModelDDL(tables=())}, views=())
    aggregates = AGGREGATES

    def knows(self, type_name: str) -> bool:
        """Everything."""
        return True

    def apply(self, conn: sa.Connection, events: Sequence[Decoded[Any]], *, method: UpsertMethod) -> None:
        """Nothing."""


def _noop_decoder(raw: RawEvent) -> Decoded[None]:
    return Decoded(raw, "Noop", _EPOCH, None)


_EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


def run_noop_worker() -> None:
    """Child process of the no-op measurement: the real runtime with :class:`NoopProjection`."""
    import faust

    settings = load_settings()
    engine = create_engine(settings.postgres, settings.projections.db_schema)
    built = runtime.build(
        NoopProjection(),
        _noop_decoder,
        ProjectionStore(engine),
        kafka=settings.kafka,
        topics=settings.topics,
        settings=settings.projections,
    )
    gctune.tune_for_throughput()
    try:
        faust.Worker(built.app, loglevel="warning", quiet=True).execute_from_commandline()
    finally:
        built.remove_datadir()


def _raws(codec: Codec, envelopes: Sequence[Any], partitions: int) -> list[RawEvent]:
    """Records as the runtime would receive them (offsets consecutive per topic partition)."""
    offsets: dict[tuple[str, int], int] = {}
    out = []
    for env in envelopes:
        tp = (f"events.{env.metadata.aggregate_type}", env.metadata.aggregate_id.int % partitions)
        offset = offsets.get(tp, -1) + 1
        offsets[tp] = offset
        out.append(RawEvent(tp[0], tp[1], offset, codec.key(env), codec.encode(env)))
    return out


def _schema(engine_of: Any, pg: PostgresSettings, name: str) -> sa.Engine:
    engine: sa.Engine = engine_of(pg, name)
    with engine.begin() as conn:
        create_schema(conn, name, registry.newest_ddl())
    return engine


def _drop(engine: sa.Engine, name: str) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text(f"DROP SCHEMA IF EXISTS {sql.Identifier(name).as_string()} CASCADE"))
    engine.dispose()


def bench_applier(
    pg: PostgresSettings, raws: Sequence[RawEvent], projection: str, batch: int, method: UpsertMethod
) -> float:
    """Events/s of decode + apply + checkpoint in-process (no Kafka)."""
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    engine = _schema(create_engine, pg, schema)
    try:
        applier = BatchApplier(
            ProjectionStore(engine, method=method),
            registry.get(projection),
            registry.EnvelopeDecoder(Codec.from_settings()),
            ProjectionSettings(),
        )
        relevant = [r for r in raws if r.topic.split(".")[-1] in registry.get(projection).aggregates]
        started = time.perf_counter()
        for i in range(0, len(relevant), batch):
            applier.process(relevant[i : i + batch])
        return len(relevant) / (time.perf_counter() - started)
    finally:
        _drop(engine, schema)


def bench_upsert_methods(
    pg: PostgresSettings, envelopes: Sequence[Any], batch: int
) -> dict[str, tuple[float, float]]:
    """Rows/s of the bulk upsert alone (pre-built ``orders`` rows): (inserts, updates) per method."""
    latest: dict[Any, dict[str, Any]] = {}
    for env in envelopes:
        if env.metadata.aggregate_type == "order":
            key = env.metadata.aggregate_id
            latest[key] = orders_projection.fold(latest.get(key), env)
    rows = [
        orders_projection_values({**row, "lines": json_text(row["lines"])}, orders_projection.COLUMNS)
        for row in latest.values()
    ]
    out: dict[str, tuple[float, float]] = {}
    methods: tuple[UpsertMethod, ...] = ("copy", "unnest")
    for method in methods:
        schema = f"bench_{uuid.uuid4().hex[:8]}"
        engine = _schema(create_engine, pg, schema)
        try:
            rates = []
            for _ in ("insert", "update"):
                started = time.perf_counter()
                for i in range(0, len(rows), batch):
                    with engine.begin() as conn:
                        upsert(
                            conn,
                            orders_projection.orders,
                            orders_projection.COLUMNS,
                            rows[i : i + batch],
                            conflict=["order_id"],
                            update=orders_projection.COLUMNS[1:],
                            method=method,
                        )
                rates.append(len(rows) / (time.perf_counter() - started))
            out[method] = (rates[0], rates[1])
        finally:
            _drop(engine, schema)
    return out


def bench_copy_baseline(pg: PostgresSettings, raws: Sequence[RawEvent], batch: int) -> float:
    """Rows/s of a plain psycopg COPY of the event_log rows (pre-built) in batches, one transaction each."""
    projection = EventLogProjection()
    items = prepare(projection, registry.EnvelopeDecoder(Codec.from_settings()), raws)
    # The exact rows event_log writes, built outside the timed part.
    rows = projection.rows([i for i in items if isinstance(i, Decoded)])
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    engine = _schema(create_engine, pg, schema)
    try:
        started = time.perf_counter()
        for i in range(0, len(rows), batch):
            with engine.begin() as conn:
                copy_rows(conn, event_log, EVENT_LOG_COLUMNS, rows[i : i + batch])
        return len(rows) / (time.perf_counter() - started)
    finally:
        _drop(engine, schema)


def bench_worker(
    kafka: KafkaSettings,
    pg: PostgresSettings,
    envelopes: Sequence[Any],
    projection: str,
    batch: int,
    partitions: int,
) -> tuple[float, int]:
    """Events/s of one `esflow projector run` process over a backlog; returns (rate, events timed)."""
    prefix = f"bench{uuid.uuid4().hex[:6]}."
    topics = TopicSettings(prefix=prefix, partitions=partitions)
    names = [event_topic(a, topics) for a in AGGREGATES]
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap_servers})
    for fut in admin.create_topics([NewTopic(n, partitions, 1) for n in names]).values():
        fut.result(30)
    wait_until_visible(admin, names, 30)
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    if projection == "noop":
        # The no-op worker writes its checkpoints straight into the schema the settings name.
        engine = _schema(create_engine, pg, schema)
        dropped = [schema]
    else:
        # A real worker serves the live version of its projection: install one, as `db migrate` does.
        layout = versions.Layout(schema)
        base = create_engine(pg, schema)
        versions.install(base, layout, [registry.get(projection)])
        base.dispose()
        engine = create_engine(pg, layout.version_schema(projection, 1))
        dropped = [schema, layout.bi, layout.version_schema(projection, 1)]
    codec = Codec.from_settings()
    wanted = AGGREGATES if projection == "noop" else registry.get(projection).aggregates
    producer = Producer(producer_config(kafka, **{"linger.ms": 50, "batch.num.messages": 10000}))
    count = 0
    for env in envelopes:
        if env.metadata.aggregate_type not in wanted:
            continue
        topic = event_topic(env.metadata.aggregate_type, topics)
        while True:
            try:
                producer.produce(topic, key=codec.key(env), value=codec.encode(env, topic=topic))
                break
            except BufferError:
                producer.poll(0.1)
        count += 1
    producer.flush(120)
    env_vars = dict(os.environ)
    env_vars.update(
        ESFLOW_KAFKA_BOOTSTRAP=kafka.bootstrap_servers,
        ESFLOW_DATABASE_URL=pg.database_url,
        ESFLOW_TOPIC_PREFIX=prefix,
        ESFLOW_PROJECTION_DB_SCHEMA=schema,
        ESFLOW_PROJECTION_GROUP_PREFIX=f"g-{prefix.rstrip('.')}",
        ESFLOW_PROJECTION_BATCH_SIZE=str(batch),
        ESFLOW_LOG_LEVEL="warning",
    )
    log = Path(tempfile.gettempdir()) / f"{prefix}worker.log"
    command = (
        [sys.executable, "-m", "ops.bench.projections", "--noop-worker"]
        if projection == "noop"
        else [sys.executable, "-m", "esflow", "projector", "run", projection]
    )
    proc = subprocess.Popen(
        command,
        env=env_vars,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    query = sa.text("SELECT COALESCE(sum(events_applied), 0) FROM projection_status WHERE projection = :p")
    try:
        first: tuple[float, int] | None = None
        deadline = time.monotonic() + 600
        while True:
            with engine.connect() as conn:
                applied = int(conn.execute(query, {"p": projection}).scalar_one())
            now = time.perf_counter()
            if applied and first is None:
                first = (now, applied)
            if applied >= count:
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"worker failed or timed out (applied {applied}/{count}); log: {log}")
            time.sleep(0.05)
        assert first is not None
        timed = count - first[1]
        return timed / (now - first[0]), timed
    finally:
        proc.terminate()
        proc.wait(30)
        for name in dropped:
            _drop(engine, name)
        if projection != "noop":
            with engine.begin() as conn:
                role = sql.Identifier(versions.Layout(schema).reader_role).as_string()
                conn.execute(sa.text(f"DROP ROLE IF EXISTS {role}"))
        for fut in admin.delete_topics(names).values():
            try:
                fut.result(30)
            except Exception as exc:  # leftover topics only cost disk on a bench stack
                print(f"could not delete a bench topic: {exc}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Run every measurement and print one line per figure."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=ProjectionSettings().batch_size)
    parser.add_argument("--projection", default="event_log", choices=list(registry.PROJECTIONS))
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--noop-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.noop_worker:
        run_noop_worker()
        return 0
    # The in-process figures run with the collector settings of a worker process.
    gctune.tune_for_throughput()
    kafka, pg = KafkaSettings(), PostgresSettings()
    envelopes = Workload(seed=1).events(args.events)
    codec = Codec.from_settings()
    raws = _raws(codec, envelopes, args.partitions)

    print(f"{args.events} events, batches of {args.batch}, projection {args.projection}")
    baseline = bench_copy_baseline(pg, raws, args.batch)
    print(f"copy baseline (event_log rows, plain psycopg COPY): {baseline:>10,.0f} rows/s")
    applier = bench_applier(pg, raws, args.projection, args.batch, "copy")
    print(f"applier in-process ({args.projection}):            {applier:>10,.0f} events/s")
    for method, (inserts, updates) in bench_upsert_methods(pg, envelopes, args.batch).items():
        print(
            f"bulk upsert {method:<6} (orders rows only): "
            f"{inserts:>10,.0f} inserts/s {updates:>10,.0f} updates/s"
        )
    methods: tuple[UpsertMethod, ...] = ("copy", "unnest")
    for method in methods:
        rate = bench_applier(pg, raws, "orders", args.batch, method)
        print(f"upsert {method:<6} (orders, in-process):               {rate:>10,.0f} events/s")
    noop, _ = bench_worker(kafka, pg, envelopes, "noop", args.batch, args.partitions)
    print(f"faust ceiling (no-op projection, 1 process):      {noop:>10,.0f} events/s")
    worker, timed = bench_worker(kafka, pg, envelopes, args.projection, args.batch, args.partitions)
    print(f"worker ({args.projection}, 1 process, {timed} events timed): {worker:>10,.0f} events/s")
    # The baseline copies event_log's rows: a share of it means something for that projection only.
    share = (
        f"{worker / baseline:.0%} (target >= {TARGET_SHARE:.0%})"
        if args.projection == "event_log"
        else "n/a (the baseline copies event_log rows; --projection event_log)"
    )
    print(
        f"worker / copy baseline: {share}; "
        f"worker target >= {TARGET_RATE:,} events/s: {'met' if worker >= TARGET_RATE else 'NOT met'}"
    )
    print(
        f"worker / faust ceiling: {worker / noop:.0%} "
        f"(issue 16: the live tail >= {CEILING_SHARE:.0%} of Faust's no-op ceiling)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
