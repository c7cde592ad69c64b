"""Projector host throughput: every projection in one host vs one process each, and the bulk catch-up.

Run against a running stack (``esflow stack up``; ESFLOW_KAFKA_BOOTSTRAP / ESFLOW_DATABASE_URL name it):

    .venv/bin/python -m ops.bench.host [--events 30000] [--partitions 6] [--rounds 1]

(as a module: run as a script, this file would shadow the ``projections`` package).

One backlog of ``--events`` events (``ops.bench.projection_workload.Workload``, every aggregate) on
fresh topics; each measurement gets a fresh installation (every projection, with its own consumer
groups) and serves the whole backlog, in the same run:

- ``separate``: one ``esflow projector run NAME`` process per projection (what ``esflow projector run``
  starts today), ``CATCHUP_THRESHOLD=0``: the Faust live path;
- ``host``: one ``esflow projector run --host`` process serving all of them, ``CATCHUP_THRESHOLD=0``;
- ``host, bulk catch-up``: the same host with ``CATCHUP_THRESHOLD=1``: the backlog goes through the bulk
  replayer (one replay feeding all seven), then the live tail starts;
- ``decode baseline``: one consumer decoding the order topic, no database
  (:func:`ops.bench.rebuild.bench_decode`): the replayer's per-process ceiling.

The rate is backlog events / seconds from the first applied batch until every projection has applied
all the events of its topics (``start->done`` adds the process start-up). ``--rounds`` repeats
``separate`` and ``host`` alternately, so a busy machine hurts both alike. Topics, schemas and roles
are removed at the end.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic
from psycopg import sql

from esflow.domain.messages import AGGREGATE_TYPES
from esflow.messaging.codec import Codec
from esflow.messaging.kafka import producer_config
from esflow.messaging.topics import (
    PROCESSES,
    event_topic,
    process_state_topic,
    source_topic,
    wait_until_visible,
)
from esflow.readmodel import versions
from esflow.readmodel.store import create_engine
from esflow.settings import KafkaSettings, PostgresSettings, TopicSettings
from ops.bench.projection_workload import Workload
from ops.bench.rebuild import bench_decode
from projections.registry import PROJECTIONS, get


@dataclass(frozen=True)
class Run:
    """One measurement: how long the backlog took."""

    name: str
    events: int
    seconds: float
    """From the first applied batch until every projection is done."""
    wall: float
    """From the process start until every projection is done."""
    log: Path
    """The workers' output."""

    def line(self) -> str:
        """The figure as one printed line."""
        return (
            f"{self.name:<34} {self.events / self.seconds:>10,.0f} events/s "
            f"(start->done {self.events / self.wall:>8,.0f}/s, {self.wall:5.1f}s)"
        )


def produce(kafka: KafkaSettings, topics: TopicSettings, count: int) -> dict[str, int]:
    """The backlog on fresh topics; the events per topic."""
    names = [event_topic(a, topics) for a in AGGREGATE_TYPES]
    # process_instances reads the process state topics: they exist (empty), as `topics apply` makes them.
    states = [process_state_topic(p, topics) for p in PROCESSES]
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap_servers})
    new = [NewTopic(n, topics.partitions, 1) for n in names]
    new += [NewTopic(n, topics.partitions, 1, config={"cleanup.policy": "compact"}) for n in states]
    for fut in admin.create_topics(new).values():
        fut.result(30)
    wait_until_visible(admin, [*names, *states], 30)
    codec = Codec.from_settings()
    producer = Producer(producer_config(kafka, **{"linger.ms": 50, "batch.num.messages": 10000}))
    per_topic = dict.fromkeys(names, 0)
    for env in Workload(seed=1).events(count):
        topic = event_topic(env.metadata.aggregate_type, topics)
        while True:
            try:
                producer.produce(topic, key=codec.key(env), value=codec.encode(env, topic=topic))
                break
            except BufferError:
                producer.poll(0.1)
        per_topic[topic] += 1
    producer.flush(120)
    return per_topic


def measure(
    name: str,
    commands: Sequence[list[str]],
    kafka: KafkaSettings,
    pg: PostgresSettings,
    topics: TopicSettings,
    per_topic: dict[str, int],
    **env: str,
) -> Run:
    """Run ``commands`` on a fresh installation until every projection applied its backlog."""
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    layout = versions.Layout(schema)
    base = create_engine(pg, schema)
    versions.install(base, layout, [get(n) for n in PROJECTIONS])
    expected = {
        n: sum(per_topic.get(source_topic(a, topics), 0) for a in get(n).aggregates) for n in PROJECTIONS
    }
    variables = dict(os.environ)
    variables.update(
        ESFLOW_KAFKA_BOOTSTRAP=kafka.bootstrap_servers,
        ESFLOW_DATABASE_URL=pg.database_url,
        ESFLOW_TOPIC_PREFIX=topics.prefix,
        ESFLOW_TOPIC_PARTITIONS=str(topics.partitions),
        ESFLOW_PROJECTION_DB_SCHEMA=schema,
        ESFLOW_PROJECTION_GROUP_PREFIX=f"g-{schema}",
        ESFLOW_LOG_LEVEL="warning",
        **env,
    )
    log = Path(tempfile.gettempdir()) / f"{schema}.log"
    query = sa.text(
        f'SELECT projection, COALESCE(sum(events_applied), 0) FROM "{layout.bi}".projection_status '
        "GROUP BY projection"
    )
    started = time.perf_counter()
    with log.open("wb") as out:
        procs = [subprocess.Popen(c, env=variables, stdout=out, stderr=subprocess.STDOUT) for c in commands]
    try:
        first: float | None = None
        deadline = time.monotonic() + 1800
        while True:
            with base.connect() as conn:
                applied = {p: int(n) for p, n in conn.execute(query)}
            now = time.perf_counter()
            if first is None and any(applied.values()):
                first = now
            if all(applied.get(n, 0) >= expected[n] for n in PROJECTIONS):
                break
            if any(p.poll() is not None for p in procs) or time.monotonic() > deadline:
                raise SystemExit(f"{name}: a worker failed or timed out ({applied}); log: {log}")
            time.sleep(0.05)
        assert first is not None
        events = sum(per_topic.values())
        return Run(name, events, now - first, now - started, log)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(60)
        with base.begin() as conn:
            for dropped in [schema, layout.bi, *(layout.version_schema(n, 1) for n in PROJECTIONS)]:
                conn.execute(sa.text(f"DROP SCHEMA IF EXISTS {sql.Identifier(dropped).as_string()} CASCADE"))
            conn.execute(sa.text(f"DROP ROLE IF EXISTS {sql.Identifier(layout.reader_role).as_string()}"))
        base.dispose()


def main(argv: list[str] | None = None) -> int:
    """Produce the backlog, then print one line per measurement."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=30_000)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args(argv)
    kafka, pg = KafkaSettings(), PostgresSettings()
    topics = TopicSettings(prefix=f"benchhost{uuid.uuid4().hex[:6]}.", partitions=args.partitions)
    per_topic = produce(kafka, topics, args.events)
    esflow = [sys.executable, "-m", "esflow", "projector", "run"]
    print(
        f"{args.events:,} events on {len(per_topic)} topics x {args.partitions} partitions, "
        f"{len(PROJECTIONS)} projections"
    )
    try:
        decode = bench_decode(kafka, event_topic("order", topics), args.partitions, 50_000)
        print(f"{'decode baseline (order topic)':<34} {decode.rate:>10,.0f} events/s")
        for _ in range(args.rounds):
            separate = [[*esflow, name] for name in PROJECTIONS]
            print(measure("separate (7 processes)", separate, kafka, pg, topics, per_topic,
                          ESFLOW_PROJECTION_CATCHUP_THRESHOLD="0").line())  # fmt: skip
            print(measure("host (1 process)", [[*esflow, "--host"]], kafka, pg, topics, per_topic,
                          ESFLOW_PROJECTION_CATCHUP_THRESHOLD="0").line())  # fmt: skip
        bulk = measure("host, bulk catch-up", [[*esflow, "--host"]], kafka, pg, topics, per_topic,
                       ESFLOW_PROJECTION_CATCHUP_THRESHOLD="1")  # fmt: skip
        print(bulk.line())
        # The replay's own figure, as the worker logs it (an event counts once per projection applying it).
        pattern = r"[\w+]+: caught up in bulk: (\d+) events at (\d+)/s"
        for match in re.finditer(pattern, bulk.log.read_text()):
            print(f"  bulk replay: {int(match[2]):>10,} projection-events/s ({int(match[1]):,})")
    finally:
        admin = AdminClient({"bootstrap.servers": kafka.bootstrap_servers})
        # The process state topics too: produce() made them (empty) for process_instances to read.
        made = [*per_topic, *(process_state_topic(p, topics) for p in PROCESSES)]
        for fut in admin.delete_topics(made).values():
            try:
                fut.result(30)
            except Exception as exc:  # leftover topics only cost disk on a bench stack
                print(f"could not delete a bench topic: {exc}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
