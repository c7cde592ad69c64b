"""Two workers of one projection split the partitions; kill one and the other takes over, exactly."""

from __future__ import annotations

import urllib.request

import sqlalchemy as sa
from confluent_kafka import KafkaException

from ops.bench.projection_workload import Workload
from ops.stack.proc import free_port
from projections.event_log import EventLogProjection
from tests.e2e.projections.harness import Harness
from tests.support.wait import eventually


def _assignments(harness: Harness, group: str) -> list[int]:
    """Partitions per live member of the group."""
    result = harness.admin.describe_consumer_groups([group])[group].result(timeout=10)
    return sorted(len(m.assignment.topic_partitions) for m in result.members)


def test_two_workers_split_partitions_and_the_survivor_takes_over(harness: Harness) -> None:
    harness.extra_env["ESFLOW_PROJECTION_SESSION_TIMEOUT_S"] = "6"
    port = free_port("127.0.0.1")
    group = f"{harness.group_prefix}-event_log-v1"
    first = harness.start("event_log")
    harness.start("event_log", ESFLOW_PROJECTION_METRICS_PORT=str(port))
    # Every event topic's partitions between two members (the count follows the aggregates served).
    total = len(EventLogProjection.aggregates) * harness.partitions
    split = [total // 2, total - total // 2]
    eventually(
        lambda: _assignments(harness, group) == split,
        timeout=60,
        interval=0.2,
        what="both workers to get partitions",
        # A new group's coordinator answers NOT_COORDINATOR while it loads: not yet, not a failure.
        retry_on=(KafkaException,),
    )
    workload = Workload(seed=51)
    log = harness.produce(workload.events(1500))
    harness.wait_applied({"event_log": len(log)}, timeout=90)

    harness.kill(first)
    log += harness.produce(workload.events(1500))
    harness.wait_applied({"event_log": len(log)}, timeout=90)
    assert _assignments(harness, group) == [total]

    with harness.engine.connect() as conn:
        count, distinct = conn.execute(
            sa.text("SELECT count(*), count(DISTINCT event_id) FROM event_log")
        ).one()
    assert count == distinct == len(log)
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    applied = [
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("esflow_projection_events_total{")
        and 'outcome="applied"' in line
        and 'projection="event_log"' in line
    ]
    assert applied and applied[0] > 0
    assert "esflow_projection_batch_seconds_bucket" in metrics
    assert "esflow_projection_lag_events{" in metrics
    assert harness.stop("event_log") == [0]
