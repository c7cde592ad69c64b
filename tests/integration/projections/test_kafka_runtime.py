"""The Faust runtime on the real broker: read_committed, and resuming from the Postgres checkpoint."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

import sqlalchemy as sa
from confluent_kafka import Consumer, TopicPartition

from esflow.messaging.kafka import consumer_config
from ops.bench.projection_workload import Workload
from tests.e2e.projections.harness import AGGREGATES, Harness


def _event_ids(harness: Harness, table: str = "event_log") -> set[uuid.UUID]:
    with harness.engine.connect() as conn:
        return set(conn.execute(sa.text(f"SELECT event_id FROM {table}")).scalars())


def _read_all(harness: Harness, isolation: str) -> int:
    """Records a consumer with ``isolation`` sees on the event topics (to prove the aborted ones exist)."""
    consumer = Consumer(
        consumer_config(harness.kafka, f"probe-{uuid.uuid4().hex[:6]}", **{"isolation.level": isolation})
    )
    consumer.assign(
        [TopicPartition(harness.topic(a), p, 0) for a in AGGREGATES for p in range(harness.partitions)]
    )
    seen, idle = 0, 0
    while idle < 5:
        batch = consumer.consume(1000, 1.0)
        if not batch:
            idle += 1
        seen += sum(1 for m in batch if m.error() is None)
    consumer.close()
    return seen


def test_events_of_aborted_transactions_never_reach_the_read_models(harness: Harness) -> None:
    workload = Workload(seed=31)
    committed = harness.produce(workload.events(400))
    aborted = harness.produce(workload.events(300), abort=True)
    committed += harness.produce(workload.events(400))
    # The aborted records really are in the log: read_uncommitted sees them.
    assert _read_all(harness, "read_uncommitted") == len(committed) + len(aborted)
    assert _read_all(harness, "read_committed") == len(committed)

    harness.start("event_log")
    harness.start("orders")
    orders_committed = sum(1 for t, *_ in committed if t == harness.topic("order"))
    harness.wait_applied({"event_log": len(committed), "orders": orders_committed}, timeout=120)
    assert harness.stop("event_log") == [0] and harness.stop("orders") == [0]

    ids = _event_ids(harness)
    assert ids == {env.metadata.event_id for *_, env in committed}
    assert not ids & {env.metadata.event_id for *_, env in aborted}
    # Orders placed only inside the aborted transaction do not exist in the orders read model.
    aborted_orders = {
        env.metadata.aggregate_id for *_, env in aborted if env.event.type_name() == "OrderPlaced"
    } - {env.metadata.aggregate_id for *_, env in committed}
    with harness.engine.connect() as conn:
        present = set(conn.execute(sa.text("SELECT order_id FROM orders")).scalars())
    assert aborted_orders and not aborted_orders & present


def test_a_worker_resumes_from_the_postgres_checkpoint_not_from_kafka(harness: Harness) -> None:
    log = harness.produce(Workload(seed=41).events(600))
    harness.start("event_log")
    harness.wait_applied({"event_log": len(log)}, timeout=90)
    assert harness.stop("event_log") == [0]
    topic = harness.topic("order")

    # 1. Postgres behind Kafka (a batch Kafka acked but Postgres never committed): roll the read model
    #    and the checkpoint of one partition back; Kafka's committed offset stays at the end.
    with harness.db("event_log").begin() as conn:
        conn.execute(
            sa.text('DELETE FROM event_log WHERE topic = :t AND partition = 0 AND "offset" > 9'), {"t": topic}
        )
        conn.execute(
            sa.text(
                "UPDATE projection_checkpoints SET \"offset\" = 9 WHERE projection = 'event_log' "
                "AND topic = :t AND partition = 0"
            ),
            {"t": topic},
        )
        conn.execute(
            sa.text(
                "UPDATE projection_status SET events_applied = events_applied - (last_offset - 9), "
                "last_offset = 9 "
                "WHERE projection = 'event_log' AND topic = :t AND partition = 0"
            ),
            {"t": topic},
        )
    # 2. Kafka behind Postgres (offsets reset, or a commit lost): rewind the group to the beginning of
    #    another partition; Postgres says it is done, so nothing may be applied twice.
    group = f"{harness.group_prefix}-event_log-v1"
    rewind = Consumer(consumer_config(harness.kafka, group))
    rewind.commit(offsets=[TopicPartition(topic, 1, 0)], asynchronous=False)
    rewind.close()

    more = harness.produce(Workload(seed=42).events(100))
    harness.start("event_log")
    harness.wait_applied({"event_log": len(log) + len(more)}, timeout=90)
    assert harness.stop("event_log") == [0]
    with harness.engine.connect() as conn:
        count, distinct = conn.execute(
            sa.text("SELECT count(*), count(DISTINCT event_id) FROM event_log")
        ).one()
        halted = conn.execute(sa.text("SELECT count(*) FROM projection_status WHERE halted")).scalar_one()
    assert (count, distinct) == (len(log) + len(more), len(log) + len(more))
    assert halted == 0
    assert _event_ids(harness) == {env.metadata.event_id for *_, env in log + more}


def test_a_caught_up_worker_reports_no_lag_despite_the_transaction_markers(harness: Harness) -> None:
    # Committed transactions, as the command processor writes them: each ends with a marker that takes
    # an offset, so a caught-up partition's last event is two offsets below its high watermark.
    workload = Workload(seed=43)
    log = harness.produce(workload.events(300), transaction=True)
    log += harness.produce(workload.events(300), transaction=True)
    harness.start("event_log")
    harness.wait_applied({"event_log": len(log)}, timeout=90)
    with harness.db("event_log").connect() as conn:
        rows = conn.execute(sa.text("SELECT topic, partition, last_offset, lag FROM projection_status")).all()
    last: dict[tuple[str, int], int] = {}
    for topic, partition, offset, _ in log:
        last[(topic, partition)] = max(offset, last.get((topic, partition), -1))
    assert {(r.topic, r.partition): r.last_offset for r in rows} == last
    assert {r.lag for r in rows} == {0}
    cli = subprocess.run(
        [sys.executable, "-m", "esflow", "projection", "status", "event_log", "--json"],
        env=harness.env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    (live,) = [v for v in map(json.loads, cli.stdout.splitlines()) if v["state"] == "live"]
    assert live["lag"] == 0 and {p["lag"] for p in live["partitions"]} == {0}
    assert harness.stop("event_log") == [0]
