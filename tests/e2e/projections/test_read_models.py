"""e2e: events in through the real broker, rows out of every read model, equal to a fold of the log."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from datetime import datetime

import pytest
import sqlalchemy as sa

from esflow.messaging.topics import PROCESSES, process_source, source_topic
from ops.bench.projection_workload import Workload
from projections.registry import PROJECTIONS
from tests.e2e.projections.expected import comparable, fold, read_tables
from tests.e2e.projections.harness import AGGREGATES, Entry, Harness
from tests.support.instances import instance_records

TOPICS_OF = {
    "orders": ("order",),
    "order_items": ("order",),
    "customer_order_stats": ("order",),
    "daily_revenue": ("order",),
    "product_catalog": ("product",),
    "account_balances": ("account",),
    "event_log": AGGREGATES,
    "process_instances": tuple(process_source(p) for p in PROCESSES),
}
"""The sources each projection reads (an aggregate's events, or a process's instance states)."""


def _count(log: Sequence[Entry], harness: Harness, sources: tuple[str, ...]) -> int:
    topics = {source_topic(s, harness.topics) for s in sources}
    return sum(1 for topic, *_ in log if topic in topics)


def test_every_read_model_equals_the_fold_of_the_log(harness: Harness) -> None:
    assert set(TOPICS_OF) == set(PROJECTIONS)
    records = instance_records(seed=13, instances=400)
    log: list[Entry] = [*harness.produce(Workload(seed=11).events(3000))]
    log += harness.produce_instances(records[:900])
    for name in PROJECTIONS:
        harness.start(name)
    # More events while the workers run: the first batch was a backlog, this one is a live stream.
    log += harness.produce(Workload(seed=12).events(1000))
    log += harness.produce_instances(records[900:], transaction=False)
    harness.wait_applied({name: _count(log, harness, TOPICS_OF[name]) for name in PROJECTIONS}, timeout=180)
    codes = {name: harness.stop(name) for name in list(PROJECTIONS)}
    assert all(c == [0] for c in codes.values()), f"graceful stop failed: {codes}\n{harness.log_text()}"

    expected = fold(sorted(log, key=lambda e: (e[0], e[1], e[2])))
    actual, expected = comparable(read_tables(harness.engine, harness.bi), expected)
    for name in expected:
        assert len(expected[name]) > 0, name
        missing = expected[name].keys() - actual[name].keys()
        extra = actual[name].keys() - expected[name].keys()
        assert not missing and not extra, f"{name}: {len(missing)} missing, {len(extra)} extra rows"
        wrong = [k for k in expected[name] if actual[name][k] != expected[name][k]]
        assert not wrong, (
            f"{name}: {len(wrong)} rows differ, e.g. {actual[name][wrong[0]]} != {expected[name][wrong[0]]}"
        )


@pytest.mark.parametrize("name", ["event_log"])
def test_status_table_says_how_fresh_each_partition_is(harness: Harness, name: str) -> None:
    log = harness.produce(Workload(seed=3).events(300))
    harness.start(name)
    harness.wait_applied({name: len(log)}, timeout=90)
    harness.stop(name)
    with harness.engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT topic, partition, last_offset, last_event_at, lag, halted FROM projection_status")
        ).all()
    last: dict[tuple[str, int], tuple[int, datetime]] = {}
    for topic, partition, offset, env in log:
        if offset > last.get((topic, partition), (-1, None))[0]:
            last[(topic, partition)] = (offset, env.metadata.occurred_at)
    assert {(r.topic, r.partition): (r.last_offset, r.last_event_at) for r in rows} == last
    assert all(not r.halted for r in rows)
    cli = subprocess.run(
        [sys.executable, "-m", "esflow", "projector", "status", "--json"],
        env=harness.env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    printed = [json.loads(line) for line in cli.stdout.splitlines()]
    assert {(r["topic"], r["partition"], r["last_offset"]) for r in printed} == {
        (t, p, o) for (t, p), (o, _) in last.items()
    }
    assert all(r.lag == 0 for r in rows if r.lag is not None)
