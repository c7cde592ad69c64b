"""The projection store against real Postgres: checkpoints, redelivery, dead letters, halts, migrations."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from psycopg import pq

from esflow.errors import MigrationError
from esflow.messaging.codec import Codec
from esflow.readmodel import tables
from esflow.readmodel.applier import BatchApplier
from esflow.readmodel.bulk import UpsertMethod
from esflow.readmodel.migrations import MIGRATIONS, Migration, create_schema, migrate
from esflow.readmodel.projection import RawEvent
from esflow.readmodel.store import ProjectionStore, create_engine
from esflow.settings import PostgresSettings, ProjectionSettings
from ops.bench.projection_workload import Workload
from projections import registry
from projections.event_log import EventLogProjection
from projections.orders import OrdersProjection
from projections.registry import EnvelopeDecoder

CODEC = Codec.from_settings()
TOPIC = "events.order"


@pytest.fixture
def engine(pg_settings: PostgresSettings, pg_schema: str) -> Iterator[sa.Engine]:
    engine = create_engine(pg_settings, pg_schema)
    with engine.begin() as conn:
        create_schema(conn, pg_schema, registry.newest_ddl())
    yield engine
    engine.dispose()


def _raws(count: int, partitions: int = 2, seed: int = 5) -> list[RawEvent]:
    """Order events spread over partitions by aggregate, offsets consecutive per partition."""
    events = [e for e in Workload(seed=seed).events(count * 3) if e.metadata.aggregate_type == "order"][
        :count
    ]
    next_offset = [0] * partitions
    out = []
    for env in events:
        p = env.metadata.aggregate_id.int % partitions
        out.append(RawEvent(TOPIC, p, next_offset[p], CODEC.key(env), CODEC.encode(env)))
        next_offset[p] += 1
    return out


def _applier(engine: sa.Engine, projection: object, **settings: object) -> BatchApplier:
    return BatchApplier(
        ProjectionStore(engine),
        projection,  # type: ignore[arg-type]
        EnvelopeDecoder(CODEC),
        ProjectionSettings(retry_initial_s=0.01, **settings),  # type: ignore[arg-type]
    )


def _count(engine: sa.Engine, sql: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text(sql)).scalar_one())


def test_the_read_model_ddl_matches_the_tables(engine: sa.Engine, pg_schema: str) -> None:
    inspector = sa.inspect(engine)
    declared = [table for model in registry.read_models() for table in model.tables]
    for table in [*tables.metadata.sorted_tables, *declared]:
        columns = {c["name"]: c for c in inspector.get_columns(table.name, schema=pg_schema)}
        assert set(columns) == {c.name for c in table.columns}, table.name
        for column in table.columns:
            assert columns[column.name]["nullable"] == column.nullable, (table.name, column.name)
            db_type = columns[column.name]["type"].compile(dialect=engine.dialect)
            assert db_type == column.type.compile(dialect=engine.dialect), (table.name, column.name)
        pk = inspector.get_pk_constraint(table.name, schema=pg_schema)["constrained_columns"]
        assert pk == [c.name for c in table.primary_key.columns], table.name


def test_base_migrations_are_recorded_and_idempotent(pg_settings: PostgresSettings, pg_schema: str) -> None:
    base = f"{pg_schema}_base"
    engine = create_engine(pg_settings, base)
    try:
        assert [m.version for m in migrate(engine, base)] == [m.version for m in MIGRATIONS]
        assert migrate(engine, base) == []  # already at the newest version
        with engine.connect() as conn:
            ledger = conn.execute(sa.text("SELECT version, name FROM esflow_migrations")).all()
        assert [tuple(r) for r in ledger] == [(m.version, m.name) for m in MIGRATIONS]
        newer = (
            *MIGRATIONS,
            Migration(MIGRATIONS[-1].version + 1, "future", ("CREATE TABLE future (x int)",)),
        )
        assert [m.name for m in migrate(engine, base, migrations=newer)] == ["future"]
        with pytest.raises(MigrationError, match="newer than this esflow"):
            migrate(engine, base)
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{base}" CASCADE'))
        engine.dispose()


def test_redelivered_batches_are_skipped(engine: sa.Engine) -> None:
    raws = _raws(300)
    applier = _applier(engine, EventLogProjection())
    first = applier.process(raws[:200])
    assert (first.applied, first.skipped) == (200, 0)
    # Overlapping redelivery (what Kafka does after a crash): the old part is skipped, the rest applied.
    again = applier.process(raws)
    assert (again.applied, again.skipped) == (100, 200)
    assert _count(engine, "SELECT count(*) FROM event_log") == 300
    assert _count(engine, "SELECT count(DISTINCT event_id) FROM event_log") == 300
    checkpoints = ProjectionStore(engine).checkpoints("event_log")
    last = {}
    for r in raws:
        last[r.tp] = r.offset
    assert checkpoints == last


@contextmanager
def _round_trips(engine: sa.Engine, tmp_path: Path) -> Iterator[list[list[str]]]:
    """Per connection checkout, the messages that make the client wait for Postgres (libpq's trace).

    A round trip ends in a simple ``Query``, an extended-protocol ``Sync`` or a ``CopyDone``.
    """
    checkouts: list[list[str]] = []
    files: list[tuple[Any, Path]] = []

    def out(dbapi_conn: Any, _record: Any, _proxy: Any) -> None:
        path = tmp_path / f"trace-{len(files)}.txt"
        handle = path.open("w")
        files.append((handle, path))
        dbapi_conn.pgconn.trace(handle.fileno())
        dbapi_conn.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE)

    def back(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.pgconn.untrace()

    sa.event.listen(engine, "checkout", out)
    sa.event.listen(engine, "checkin", back)
    try:
        yield checkouts
    finally:
        sa.event.remove(engine, "checkout", out)
        sa.event.remove(engine, "checkin", back)
        for handle, path in files:
            handle.close()
            waits = []
            for line in path.read_text().splitlines():
                parts = line.split("\t")
                if len(parts) > 2 and parts[0] == "F" and parts[2] in {"Query", "Sync", "CopyDone"}:
                    waits.append(parts[2] + (" " + parts[3].strip()[:50] if parts[2] == "Query" else ""))
            checkouts.append(waits)


def test_a_live_batch_is_few_round_trips(engine: sa.Engine, tmp_path: Path) -> None:
    """BEGIN goes with the checkpoint lock and the progress with COMMIT, one round trip each.

    The first batch of a partition also creates its checkpoint row (one more).
    """
    raws = _raws(90, partitions=3)
    by_partition = {p: [r for r in raws if r.partition == p] for p in range(3)}
    applier = _applier(engine, EventLogProjection())
    with _round_trips(engine, tmp_path) as first:
        applier.process(by_partition[0][:10])
    assert len(first) == 1 and len(first[0]) == 4, first  # begin+lock, insert+lock, rows, progress+commit
    assert first[0][0].startswith('Query "BEGIN ISOLATION LEVEL READ COMMITTED; SELECT')
    with _round_trips(engine, tmp_path) as live:
        applier.process(by_partition[0][10:])
    assert len(live) == 1 and len(live[0]) == 3, live  # begin+lock, rows, progress+commit
    # A partition seen for the first time beside one that has its row: created, then both locked.
    with _round_trips(engine, tmp_path) as mixed:
        applier.process(by_partition[1] + by_partition[2][:5])
    assert len(mixed[0]) == 4, mixed
    # A fold projection reads its rows first: four.
    orders = _applier(engine, OrdersProjection())
    orders.process(by_partition[0][:5])
    with _round_trips(engine, tmp_path) as folded:
        orders.process(by_partition[0][5:])
    assert len(folded[0]) == 4, folded
    applier.process(by_partition[2])  # the first five again (skipped), then the rest
    assert _count(engine, "SELECT count(*) FROM event_log") == 90
    assert ProjectionStore(engine).checkpoints("event_log") == {
        (TOPIC, p): by_partition[p][-1].offset for p in range(3)
    }


def test_bad_input_goes_to_dead_letters_and_processing_goes_on(engine: sa.Engine) -> None:
    raws = _raws(20, partitions=1)
    product_event = next(e for e in Workload(seed=1).events(10) if e.metadata.aggregate_type == "product")
    bad = [
        RawEvent(TOPIC, 0, 20, b"k", b"\xc3\x01" + bytes(8) + b"garbage"),
        RawEvent(TOPIC, 0, 21, b"k", None),
        # Decodes fine, but a product event does not belong on the order topic.
        RawEvent(TOPIC, 0, 22, CODEC.key(product_event), CODEC.encode(product_event)),
    ]
    applier = _applier(engine, OrdersProjection())
    result = applier.process([*raws, *bad])
    assert result.dead_lettered == 3
    assert not applier.halted
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text('SELECT "offset", error_type, value FROM projection_dead_letters ORDER BY "offset"')
        ).all()
    assert [(r.offset, r.error_type) for r in rows] == [
        (20, "UnknownSchemaError"),
        (21, "EmptyRecord"),
        (22, "MisroutedRecord"),
    ]
    assert rows[0].value == b"\xc3\x01" + bytes(8) + b"garbage"
    assert ProjectionStore(engine).checkpoints("orders")[(TOPIC, 0)] == 22


def test_halt_policy_stops_the_partition_at_the_bad_record(engine: sa.Engine) -> None:
    raws = _raws(60, partitions=2)
    p0 = [r for r in raws if r.partition == 0]
    p1 = [r for r in raws if r.partition == 1]
    bad_offset = p0[-1].offset + 1
    batch = [*p0, RawEvent(TOPIC, 0, bad_offset, b"k", b"not avro"), *p1]
    applier = _applier(engine, EventLogProjection(), on_bad_input="halt")
    result = applier.process(batch)
    assert set(applier.halted) == {(TOPIC, 0)}
    assert result.checkpoints == {(TOPIC, 0): p0[-1].offset, (TOPIC, 1): p1[-1].offset}
    assert _count(engine, "SELECT count(*) FROM projection_dead_letters") == 0
    assert _count(engine, "SELECT count(*) FROM event_log") == len(raws)
    with engine.connect() as conn:
        status = conn.execute(
            sa.text("SELECT partition, halted, error FROM projection_status ORDER BY 1")
        ).all()
    assert [(s.partition, s.halted) for s in status] == [(0, True), (1, False)]
    assert f"offset {bad_offset}" in status[0].error
    # Later batches of the halted partition are not applied (nor checkpointed); others go on.
    more = applier.process([RawEvent(TOPIC, 0, bad_offset + 1, b"k", raws[0].value)])
    assert more.applied == 0 and more.checkpoints == {}


def test_a_constraint_violation_halts_only_its_partition(engine: sa.Engine) -> None:
    raws = _raws(40, partitions=2)
    p1_last = max(r.offset for r in raws if r.partition == 1)
    # The same event twice in the log (a bug upstream): event_log's unique event_id refuses it.
    duplicate = next(r for r in raws if r.partition == 1)
    batch: Sequence[RawEvent] = [*raws, RawEvent(TOPIC, 1, p1_last + 1, duplicate.key, duplicate.value)]
    applier = _applier(engine, EventLogProjection())
    result = applier.process(batch)
    assert set(applier.halted) == {(TOPIC, 1)}
    assert "event_log_event_id_once" in applier.halted[(TOPIC, 1)]
    # Partition 0 committed; partition 1 committed nothing of this batch (one transaction per partition).
    assert result.checkpoints == {(TOPIC, 0): max(r.offset for r in raws if r.partition == 0)}
    assert _count(engine, "SELECT count(*) FROM event_log WHERE partition = 1") == 0
    with engine.connect() as conn:
        row = conn.execute(sa.text("SELECT halted, error FROM projection_status WHERE partition = 1")).one()
    assert row.halted and "UniqueViolation" in row.error


def test_two_workers_on_one_partition_never_apply_an_event_twice(engine: sa.Engine) -> None:
    """A zombie (revoked but still running) and the new owner apply the same batch at once."""
    import threading

    raws = _raws(400, partitions=1)
    appliers = [_applier(engine, EventLogProjection()) for _ in range(2)]
    results = []
    barrier = threading.Barrier(2)

    def run(a: BatchApplier) -> None:
        barrier.wait()
        results.append(a.process(raws))

    threads = [threading.Thread(target=run, args=(a,)) for a in appliers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted((r.applied, r.skipped) for r in results) == [(0, 400), (400, 0)]
    assert _count(engine, "SELECT count(*) FROM event_log") == 400


@contextmanager
def _store_in_schema(
    pg_settings: PostgresSettings, schema: str, method: UpsertMethod
) -> Iterator[ProjectionStore]:
    """A store writing by ``method`` into a fresh schema holding every read model, dropped afterwards."""
    engine = create_engine(pg_settings, schema)
    try:
        with engine.begin() as conn:
            create_schema(conn, schema, registry.newest_ddl())
        yield ProjectionStore(engine, method=method)
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        engine.dispose()


def test_upsert_methods_give_the_same_rows(pg_settings: PostgresSettings, pg_schema: str) -> None:
    raws = _raws(500, partitions=2, seed=21)
    tables = {}
    methods: tuple[UpsertMethod, ...] = ("copy", "unnest")
    for method in methods:
        with _store_in_schema(pg_settings, f"{pg_schema}_{method}", method) as store:
            BatchApplier(store, OrdersProjection(), EnvelopeDecoder(CODEC), ProjectionSettings()).process(
                raws[:250]
            )
            BatchApplier(store, OrdersProjection(), EnvelopeDecoder(CODEC), ProjectionSettings()).process(
                raws
            )
            with store.engine.connect() as conn:
                tables[method] = sorted(tuple(r) for r in conn.execute(sa.text("SELECT * FROM orders")).all())
    assert tables["copy"] and tables["copy"] == tables["unnest"]


@pytest.mark.parametrize("name", sorted(n for n in registry.PROJECTIONS if n != "process_instances"))
def test_every_projection_writes_the_same_rows_by_copy_and_by_unnest(
    pg_settings: PostgresSettings, pg_schema: str, name: str
) -> None:
    """A live batch goes by unnest (binary array parameters), a bulk one by COPY: the rows must not differ.

    Every column type of every read model passes both ways (process_instances reads process state
    topics, not events, and has tests of its own).
    """
    events = Workload(seed=33).events(1200)
    offsets: dict[str, int] = {}
    raws = []  # (event type, record)
    for env in events:
        topic = f"events.{env.metadata.aggregate_type}"
        raw = RawEvent(topic, 0, offsets.setdefault(topic, 0), CODEC.key(env), CODEC.encode(env))
        raws.append((env.event.type_name(), raw))
        offsets[topic] += 1
    dumps: dict[str, dict[str, list[tuple[Any, ...]]]] = {}
    projection = registry.get(name)
    methods: tuple[UpsertMethod, ...] = ("copy", "unnest")
    for method in methods:
        with _store_in_schema(pg_settings, f"{pg_schema}_{method}", method) as store:
            applier = BatchApplier(store, projection, EnvelopeDecoder(CODEC), ProjectionSettings())
            mine = [raw for type_name, raw in raws if projection.knows(type_name)]
            for start in range(0, len(mine), 150):  # under UNNEST_MAX_ROWS: unnest really is used
                applier.process(mine[start : start + 150])
            assert not applier.halted
            with store.engine.connect() as conn:
                # event_log's recorded_at is when the row was written (now()): not a projected value.
                dumps[method] = {
                    t.name: sorted(
                        tuple(str(v) for v in r)
                        for r in conn.execute(sa.select(*(c for c in t.c if c.name != "recorded_at"))).all()
                    )
                    for t in projection.read_model.tables
                }
    assert any(dumps["copy"].values()), f"{name} wrote no rows: the test would prove nothing"
    assert dumps["copy"] == dumps["unnest"]
