"""Crash test: SIGKILL workers at random moments and restart Postgres while events stream in.

Afterwards every read model must equal a fold of the full event log (and of the process instance
records streamed to the process state topics beside it) computed here, independently of projections/
(exact equality of every row), and event_log must hold each event exactly once.

Events: ``ESFLOW_CRASH_EVENTS`` (default 20,000; ``ESFLOW_FULL_CRASH=1`` runs the acceptance figure,
100,000). Two workers run for ``orders`` and ``event_log`` (they split the partitions, and a kill makes
the survivor take over); every other projection runs one worker.
"""

from __future__ import annotations

import os
import random
import threading
import time

import sqlalchemy as sa

from ops.bench.projection_workload import Workload
from projections.registry import PROJECTIONS
from tests.e2e.projections.expected import comparable, fold, read_tables
from tests.e2e.projections.harness import Entry, Harness, InstanceEntry, LogEntry
from tests.e2e.projections.test_read_models import TOPICS_OF, _count
from tests.support.instances import instance_records
from tests.support.services import Services

EVENTS = (
    100_000
    if os.environ.get("ESFLOW_FULL_CRASH") == "1"
    else int(os.environ.get("ESFLOW_CRASH_EVENTS", "20000"))
)
KILLS = 6
SCALED = ("orders", "event_log")


def test_read_models_stay_exact_through_kills_and_a_postgres_restart(
    harness: Harness, services: Services
) -> None:
    seed = int(os.environ.get("ESFLOW_CRASH_SEED", random.randrange(1 << 30)))
    print(f"\ncrash test seed: {seed} (ESFLOW_CRASH_SEED={seed} replays the same kill schedule)")
    rng = random.Random(seed)
    # Every heavy projection is killed at least once (a scaled one loses one of its two workers), in a
    # random order at random moments; the rest of the kills pick any projection.
    targets = ["event_log", "orders", "order_items", "customer_order_stats", "process_instances"]
    targets += rng.choices(list(PROJECTIONS), k=KILLS - len(targets))
    rng.shuffle(targets)
    events = Workload(seed=77).events(EVENTS)
    harness.extra_env.update(ESFLOW_PROJECTION_SESSION_TIMEOUT_S="6", ESFLOW_PROJECTION_BATCH_SIZE="1000")
    for name in PROJECTIONS:
        harness.start(name)
    for name in SCALED:
        harness.start(name)

    log: list[LogEntry] = []
    states: list[InstanceEntry] = []
    records = instance_records(seed=78, instances=600)
    chunks = 40
    step = -(-len(events) // chunks)
    record_step = -(-len(records) // chunks)
    produced = threading.Event()

    def stream() -> None:
        # Spread over ~20 s so kills land while batches are in flight.
        for chunk, i in enumerate(range(0, len(events), step)):
            log.extend(harness.produce(events[i : i + step]))
            states.extend(harness.produce_instances(records[chunk * record_step : (chunk + 1) * record_step]))
            time.sleep(0.5)
        produced.set()

    producer = threading.Thread(target=stream, name="producer")
    producer.start()
    kills: list[str] = []
    pg_restarted = False
    try:
        while len(kills) < KILLS or not produced.is_set():
            time.sleep(rng.uniform(1.0, 3.0))  # a random moment for the next kill (chaos pacing)
            if len(kills) == KILLS // 2 and not pg_restarted and services.stack is not None:
                services.stack.postgres.restart()
                pg_restarted = True
                continue
            if len(kills) >= KILLS:
                continue
            name = targets[len(kills)]
            victim = rng.choice(harness.workers[name])
            harness.kill(victim)
            kills.append(name)
            # Scaled projections: the survivor takes the partitions over before the replacement starts.
            time.sleep(rng.uniform(0.0, 2.0))
            harness.start(name)
    finally:
        producer.join()
    assert len(log) == EVENTS and len(states) == len(records)

    entries: list[Entry] = [*log, *states]
    harness.wait_applied({n: _count(entries, harness, TOPICS_OF[n]) for n in PROJECTIONS}, timeout=300)
    for name in PROJECTIONS:
        harness.stop(name)

    expected = fold(sorted(entries, key=lambda e: (e[0], e[1], e[2])))
    actual, expected = comparable(read_tables(harness.engine, harness.bi), expected)
    for name in expected:
        assert actual[name].keys() == expected[name].keys(), f"{name}: rows missing or extra (kills: {kills})"
        wrong = [k for k in expected[name] if actual[name][k] != expected[name][k]]
        assert not wrong, f"{name}: {len(wrong)} rows differ (kills: {kills})"
    with harness.engine.connect() as conn:
        count, distinct = conn.execute(
            sa.text("SELECT count(*), count(DISTINCT event_id) FROM event_log")
        ).one()
    assert count == distinct == EVENTS
    assert harness.dead_letters() == 0
    print(f"\ncrash test: {EVENTS} events, kills {kills}, postgres restarted: {pg_restarted}")
