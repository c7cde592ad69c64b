"""The bulk replayer on the real broker and Postgres: same rows as the live path, resumable, exact ends."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
import sqlalchemy as sa

from esflow.errors import ProjectionHalted
from esflow.messaging.codec import Codec
from esflow.messaging.kafka import read_to_end
from esflow.readmodel.applier import BatchApplier
from esflow.readmodel.migrations import create_schema
from esflow.readmodel.projection import TP, RawEvent
from esflow.readmodel.store import ProjectionStore, create_engine
from esflow.settings import ProjectionSettings
from ops.bench.projection_workload import Workload
from projections import registry
from projections.replay import Replayer, ReplayProgress, ReplayTimeout
from projections.runtime import event_topics
from tests.e2e.projections.harness import Harness

CODEC = Codec.from_settings()

# What each read model is compared on (event_log's recorded_at is the insert time: left out).
TABLES = {
    "orders": "SELECT * FROM orders ORDER BY order_id",
    "daily_revenue": "SELECT * FROM daily_revenue ORDER BY day, currency",
    "event_log": 'SELECT topic, partition, "offset", event_id, event_type, schema_version, aggregate_type, '
    "aggregate_id, aggregate_version, occurred_at, command_id, correlation_id, causation_id, payload "
    'FROM event_log ORDER BY topic, partition, "offset"',
}
BOOKKEEPING = {
    "checkpoints": 'SELECT projection, topic, partition, "offset" FROM projection_checkpoints '
    "ORDER BY topic, partition",
    "dead_letters": 'SELECT topic, partition, "offset", key, value, reason, error_type '
    'FROM projection_dead_letters ORDER BY topic, partition, "offset"',
    "status": "SELECT topic, partition, last_offset, events_applied, halted "
    "FROM projection_status ORDER BY topic, partition",
}


class Schemas:
    """Fresh version-like schemas (``<test schema>_<tag>``, dropped with the test's schema)."""

    def __init__(self, harness: Harness) -> None:
        self.harness = harness
        self.engines: list[sa.Engine] = []

    def new(self, projection: str, *, indexes: bool = False) -> ProjectionStore:
        schema = f"{self.harness.schema}_{uuid.uuid4().hex[:6]}"
        engine = create_engine(self.harness.pg, schema)
        self.engines.append(engine)
        with engine.begin() as conn:
            create_schema(conn, schema, [registry.get(projection).read_model.newest], indexes=indexes)
        return ProjectionStore(engine)

    def close(self) -> None:
        for engine in self.engines:
            engine.dispose()


@pytest.fixture
def schemas(harness: Harness) -> Iterator[Schemas]:
    made = Schemas(harness)
    yield made
    made.close()


def replayer(
    harness: Harness,
    projection: str,
    store: ProjectionStore,
    *,
    batch_size: int = 500,
    processes: int = 1,
    **settings: Any,
) -> Replayer:
    """A replayer; ``processes`` > 1 forks that many replay processes (a small replay would not)."""
    made = Replayer(
        registry.get(projection),
        registry.EnvelopeDecoder(CODEC),
        store,
        kafka=harness.kafka,
        topics=harness.topics,
        group_id=f"{harness.group_prefix}-replay-{projection}",
        settings=ProjectionSettings(retry_initial_s=0.05, **settings),
        batch_size=batch_size,
    )
    made._processes = processes
    return made


def live_path(harness: Harness, projection: str, store: ProjectionStore, batch: int = 97) -> None:
    """What a live worker writes: the committed records in log order, BatchApplier, small batches."""
    raws: list[RawEvent] = []
    for topic in event_topics(registry.get(projection), harness.topics):
        for msg in read_to_end(harness.kafka, topic):
            raws.append(
                RawEvent(topic, msg.partition() or 0, msg.offset() or 0, msg.key(), msg.value(), None)
            )
    applier = BatchApplier(
        store, registry.get(projection), registry.EnvelopeDecoder(CODEC), ProjectionSettings()
    )
    for i in range(0, len(raws), batch):
        applier.process(raws[i : i + batch])
    assert not applier.halted


def rows(store: ProjectionStore, sql: str) -> list[tuple[Any, ...]]:
    with store.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.text(sql)).all()]


def count(store: ProjectionStore, sql: str) -> int:
    with store.engine.connect() as conn:
        return int(conn.execute(sa.text(sql)).scalar_one())


def on_topic(log: Sequence[tuple[str, int, int, Any]], topic: str) -> int:
    return sum(1 for t, *_ in log if t == topic)


@pytest.mark.parametrize(
    ("projection", "processes"),
    [("orders", 2), ("daily_revenue", 2), ("event_log", 1)],
)
def test_a_replay_writes_exactly_the_rows_of_the_live_path(
    harness: Harness, schemas: Schemas, projection: str, processes: int
) -> None:
    harness.produce(Workload(seed=61).events(1500))
    # Bad input too, so the dead letters are compared as well.
    harness.produce_raw("order", [b"\xc3\x01garbage", b""], partition=1)
    harness.produce(Workload(seed=62).events(300))
    live, replayed = schemas.new(projection, indexes=True), schemas.new(projection)
    live_path(harness, projection, live)

    seen: list[ReplayProgress] = []
    progress = replayer(harness, projection, replayed, batch_size=400, processes=processes).run(
        progress=seen.append
    )

    assert len(seen) == progress.batches > 1
    for sql in (TABLES[projection], *BOOKKEEPING.values()):
        assert rows(replayed, sql) == rows(live, sql), sql
    assert rows(replayed, TABLES[projection])  # not vacuously equal
    assert progress.dead_lettered == 2
    assert progress.total_lag == 0 and set(progress.lag.values()) == {0}
    assert progress.checkpoints == replayed.checkpoints(projection)


@pytest.mark.parametrize("processes", [1, 2])
def test_a_stopped_replay_resumes_from_the_postgres_checkpoints(
    harness: Harness, schemas: Schemas, processes: int
) -> None:
    log = harness.produce(Workload(seed=63).events(6000))
    store = schemas.new("event_log")
    stop = threading.Event()

    def stop_after_two(progress: ReplayProgress) -> None:
        if progress.batches == 2:
            stop.set()

    first = replayer(harness, "event_log", store, batch_size=300, processes=processes).run(
        progress=stop_after_two, stop=stop
    )
    # In-process, nothing runs after the batch that saw the stop. Replay processes learn of the stop
    # asynchronously (their progress reaches the parent through a queue), so on a busy machine they
    # may commit a few more batches: only "it stopped early" is deterministic there.
    assert first.batches == 2 if processes == 1 else first.batches >= 2
    assert count(store, "SELECT count(*) FROM event_log") == first.applied < len(log)
    assert first.checkpoints == store.checkpoints("event_log")

    second = replayer(harness, "event_log", store, batch_size=300, processes=processes).run()
    assert second.skipped == 0  # started right after the checkpoints: nothing read twice
    assert first.applied + second.applied == len(log)
    assert count(store, "SELECT count(*) FROM event_log") == len(log)
    assert count(store, "SELECT count(DISTINCT event_id) FROM event_log") == len(log)
    ends = {
        (harness.topic(a), p): high - 1
        for a in ("product", "order", "account")
        for p, high in harness.end_offsets(a).items()
        if high > 0
    }
    assert second.checkpoints == ends


@pytest.mark.parametrize("processes", [1, 2])
def test_targets_mode_stops_once_every_target_is_reached(
    harness: Harness, schemas: Schemas, processes: int
) -> None:
    log = harness.produce(Workload(seed=64).events(2000))
    topic = harness.topic("order")
    ends = harness.end_offsets("order")
    targets: dict[TP, int] = {(topic, p): high // 3 for p, high in ends.items()}
    store = schemas.new("orders")

    progress = replayer(harness, "orders", store, batch_size=100, processes=processes).run(
        targets=targets, timeout_s=60
    )

    reached = store.checkpoints("orders")
    assert all(reached[tp] >= offset for tp, offset in targets.items()), (reached, targets)
    assert progress.applied < on_topic(log, topic)  # stopped before the end
    assert progress.total_lag > 0

    # A target past the end of the log is never reached: the time limit says so.
    beyond = {(topic, 0): ends[0] + 10}
    with pytest.raises(ReplayTimeout, match="target offsets"):
        replayer(harness, "orders", store, processes=processes).run(targets=beyond, timeout_s=1.5)
    assert store.checkpoints("orders")[(topic, 0)] == ends[0] - 1


def test_events_of_aborted_transactions_are_never_replayed(harness: Harness, schemas: Schemas) -> None:
    workload = Workload(seed=65)
    committed = harness.produce(workload.events(600))
    aborted = harness.produce(workload.events(400), abort=True)
    committed += harness.produce(workload.events(600))
    # The last records of the log are an aborted transaction and its marker: the end a
    # read_committed consumer reaches is below the high watermark, and the replay still finishes.
    aborted += harness.produce(workload.events(200), abort=True)
    store = schemas.new("event_log")

    progress = replayer(harness, "event_log", store, processes=2).run(timeout_s=60)

    assert progress.applied == len(committed) and progress.total_lag == 0
    with store.engine.connect() as conn:
        ids = set(conn.execute(sa.text("SELECT event_id FROM event_log")).scalars())
    assert ids == {env.metadata.event_id for *_, env in committed}
    assert not ids & {env.metadata.event_id for *_, env in aborted}


def test_an_undecodable_record_is_dead_lettered_and_the_replay_goes_on(
    harness: Harness, schemas: Schemas
) -> None:
    log = harness.produce(Workload(seed=66).events(600))
    bad = harness.produce_raw("order", [b"not avro at all"], partition=2)
    log += harness.produce(Workload(seed=67).events(600))
    topic = harness.topic("order")
    store = schemas.new("orders")

    progress = replayer(harness, "orders", store, batch_size=300).run(timeout_s=60)

    assert progress.dead_lettered == 1
    assert progress.applied == on_topic(log, topic)
    assert rows(store, 'SELECT topic, partition, "offset", error_type FROM projection_dead_letters') == [
        (topic, 2, bad[0], "FramingError")
    ]
    assert store.checkpoints("orders")[(topic, 2)] > bad[0]  # went on past it
    assert count(store, "SELECT count(*) FROM orders") == len(
        {env.metadata.aggregate_id for t, *_, env in log if t == topic}
    )


def test_bad_input_under_the_halt_policy_stops_the_replay(harness: Harness, schemas: Schemas) -> None:
    harness.produce(Workload(seed=68).events(600))
    bad = harness.produce_raw("order", [b"\x00\x01"], partition=1)
    harness.produce(Workload(seed=69).events(600))
    topic = harness.topic("order")
    store = schemas.new("orders")

    with pytest.raises(ProjectionHalted, match=rf"{topic}\[1\]: bad input at offset {bad[0]}"):
        replayer(harness, "orders", store, processes=2, on_bad_input="halt").run(timeout_s=60)

    # Everything before the bad record is applied, nothing after it; the rebuild stops there.
    assert store.checkpoints("orders")[(topic, 1)] == bad[0] - 1
    with store.engine.connect() as conn:
        halted = conn.execute(sa.text("SELECT topic, partition FROM projection_status WHERE halted")).all()
    assert [tuple(r) for r in halted] == [(topic, 1)]


def test_the_lag_written_to_projection_status_counts_events_not_transaction_markers(
    harness: Harness, schemas: Schemas
) -> None:
    # One committed transaction, as the command processor writes: its commit marker takes the last
    # offset of every partition, and is not an event left to apply.
    log = harness.produce(Workload(seed=66).events(2000), transaction=True)
    topic = harness.topic("order")
    last: dict[TP, int] = {}
    for t, p, offset, _ in log:
        if t == topic:
            last[(t, p)] = max(offset, last.get((t, p), -1))
    store = schemas.new("orders")

    replayer(harness, "orders", store, batch_size=100).run(
        targets={tp: offset // 3 for tp, offset in last.items()}, timeout_s=60
    )

    def status() -> dict[TP, tuple[int, int | None]]:
        with store.engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT topic, partition, last_offset, lag FROM projection_status"))
            return {(t, p): (o, lag) for t, p, o, lag in rows}

    behind = status()
    assert set(behind) == set(last)
    left = {tp: sum(1 for t, p, o, _ in log if (t, p) == tp and o > behind[tp][0]) for tp in behind}
    assert any(left.values())  # the replay stopped short of the end somewhere
    assert {tp: lag for tp, (_, lag) in behind.items()} == left

    replayer(harness, "orders", store, batch_size=100).run(timeout_s=60)
    caught_up = status()
    assert {tp: o for tp, (o, _) in caught_up.items()} == last
    assert {lag for _, lag in caught_up.values()} == {0}
