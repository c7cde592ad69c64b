"""Test harness for the projections: isolated topics and schema, a producer, real worker processes.

Every test gets its own topic prefix, consumer-group prefix and Postgres base schema (with its derived
`bi` and version schemas), so tests never see each other's data. Workers are real `esflow projector run
NAME` processes (killed with real signals). ``engine`` reads what BI tools read (the `bi` views);
``db(name)`` reaches the physical tables of a projection's live version.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from esflow.domain.messages import AGGREGATE_TYPES, EventEnvelope
from esflow.messaging.codec import Codec
from esflow.messaging.kafka import consumer_config, producer_config, transactional_producer_config
from esflow.messaging.process_records import InstanceRecord
from esflow.messaging.topics import PROCESSES, event_topic, process_state_topic, wait_until_visible
from esflow.readmodel import versions
from esflow.readmodel.store import create_engine
from esflow.settings import KafkaSettings, PostgresSettings, ProjectionSettings, TopicSettings
from projections.registry import PROJECTIONS
from tests.support.services import Services
from tests.support.wait import eventually

AGGREGATES = AGGREGATE_TYPES
LogEntry = tuple[str, int, int, EventEnvelope]
InstanceEntry = tuple[str, int, int, InstanceRecord]
"""A process instance record where it landed on its process's state topic."""
Entry = LogEntry | InstanceEntry


def _config(topic: str) -> dict[str, str]:
    # Process state topics are compacted, as the catalogue makes them.
    return {"cleanup.policy": "compact"} if topic.endswith(".state") else {}


@dataclass
class Harness:
    """One isolated projection environment on the session's servers."""

    services: Services
    schema: str
    prefix: str
    partitions: int
    logs: Path
    codec: Codec = field(default_factory=Codec.from_settings)
    workers: dict[str, list[subprocess.Popen[bytes]]] = field(default_factory=dict)
    extra_env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.topics = TopicSettings(prefix=self.prefix, partitions=self.partitions)
        self.group_prefix = f"g-{self.prefix.rstrip('.')}"
        self.layout = versions.Layout(self.schema)
        self.pg = PostgresSettings(database_url_override=self.services.database_url)
        self.engine = create_engine(self.pg, self.layout.bi)
        self._engines: dict[str, sa.Engine] = {}
        self.admin = AdminClient({"bootstrap.servers": self.kafka.bootstrap_servers})
        self._spawned = 0

    @property
    def kafka(self) -> KafkaSettings:
        """Settings of the session's broker."""
        return self.services.kafka

    def topic(self, aggregate: str) -> str:
        """The (prefixed) event topic of an aggregate."""
        return event_topic(aggregate, self.topics)

    @property
    def source_topics(self) -> list[str]:
        """Every topic a projection reads: the event topics and the process state topics."""
        return [
            *(self.topic(a) for a in AGGREGATES),
            *(process_state_topic(p, self.topics) for p in PROCESSES),
        ]

    def setup(self) -> None:
        """Create the topics the projections read and migrate the schema."""
        names = self.source_topics
        futures = self.admin.create_topics(
            [
                NewTopic(n, num_partitions=self.partitions, replication_factor=1, config=_config(n))
                for n in names
            ]
        )
        for fut in futures.values():
            fut.result(timeout=30)
        wait_until_visible(self.admin, names, timeout_s=30)
        base = create_engine(self.pg, self.schema)
        try:
            versions.install(base, self.layout, [factory() for factory in PROJECTIONS.values()])
        finally:
            base.dispose()

    @property
    def bi(self) -> str:
        """The schema of the BI views."""
        return self.layout.bi

    def live_schema(self, projection: str) -> str:
        """The schema of the projection's live version."""
        with self.engine.connect() as conn:
            live = versions.live_version(conn, self.layout, projection)
        assert live is not None, f"{projection} has no live version"
        return live.schema

    def db(self, projection: str) -> sa.Engine:
        """An engine on the physical tables of the projection's live version."""
        schema = self.live_schema(projection)
        if schema not in self._engines:
            self._engines[schema] = create_engine(self.pg, schema)
        return self._engines[schema]

    def dead_letters(self) -> int:
        """Records dead-lettered by the live versions of every projection."""
        total = 0
        for name in PROJECTIONS:
            with self.db(name).connect() as conn:
                total += int(
                    conn.execute(sa.text("SELECT count(*) FROM projection_dead_letters")).scalar_one()
                )
        return total

    def teardown(self) -> None:
        """Stop workers, delete topics (the schema fixture drops the schema)."""
        for name in list(self.workers):
            self.stop(name)
        self.engine.dispose()
        for engine in self._engines.values():
            engine.dispose()
        for fut in self.admin.delete_topics(self.source_topics, operation_timeout=30).values():
            with contextlib.suppress(Exception):
                fut.result(timeout=30)

    # ------------------------------------------------------------------------------------ producing

    def produce(
        self, envelopes: Iterable[EventEnvelope], *, abort: bool = False, transaction: bool = False
    ) -> list[LogEntry]:
        """Publish envelopes (idempotent producer; one transaction with ``transaction``, aborted with
        ``abort``, as the command processor writes); return positions."""
        transactional = abort or transaction
        config = (
            transactional_producer_config(self.kafka, f"txn-{uuid.uuid4().hex[:8]}")
            if transactional
            else producer_config(self.kafka, **{"linger.ms": 20, "batch.num.messages": 5000})
        )
        producer = Producer(config)
        out: list[LogEntry] = []

        def delivered(env: EventEnvelope) -> Callable[[Any, Any], None]:
            def callback(err: Any, msg: Any) -> None:
                assert err is None, err
                out.append((msg.topic(), msg.partition(), msg.offset(), env))

            return callback

        if transactional:
            producer.init_transactions(30)
            producer.begin_transaction()
        for env in envelopes:
            topic = self.topic(env.metadata.aggregate_type)
            value = self.codec.encode(env, topic=topic)
            while True:
                try:
                    producer.produce(topic, key=self.codec.key(env), value=value, on_delivery=delivered(env))
                    break
                except BufferError:
                    producer.poll(0.1)
            producer.poll(0)
        producer.flush(60)
        if abort:
            producer.abort_transaction(30)
        elif transaction:
            producer.commit_transaction(30)
        return out

    def produce_instances(
        self, records: Iterable[InstanceRecord], *, transaction: bool = True
    ) -> list[InstanceEntry]:
        """Publish process instance records to their state topics, keyed by instance id (in one
        transaction by default, as the process runtime writes them); return positions."""
        config = (
            transactional_producer_config(self.kafka, f"txn-{uuid.uuid4().hex[:8]}")
            if transaction
            else producer_config(self.kafka)
        )
        producer = Producer(config)
        out: list[InstanceEntry] = []

        def delivered(record: InstanceRecord) -> Callable[[Any, Any], None]:
            def callback(err: Any, msg: Any) -> None:
                assert err is None, err
                out.append((msg.topic(), msg.partition(), msg.offset(), record))

            return callback

        if transaction:
            producer.init_transactions(30)
            producer.begin_transaction()
        for record in records:
            topic = process_state_topic(record.process, self.topics)
            key = str(record.instance_id).encode()
            producer.produce(topic, key=key, value=record.to_bytes(), on_delivery=delivered(record))
            producer.poll(0)
        producer.flush(60)
        if transaction:
            producer.commit_transaction(30)
        return out

    def produce_raw(self, aggregate: str, values: Sequence[bytes], *, partition: int = 0) -> list[int]:
        """Publish raw values (bad input) to one partition; return their offsets."""
        producer = Producer(producer_config(self.kafka))
        offsets: list[int] = []
        for value in values:
            producer.produce(
                self.topic(aggregate),
                value=value,
                partition=partition,
                on_delivery=lambda err, msg: offsets.append(msg.offset() or 0),
            )
        producer.flush(30)
        return offsets

    def end_offsets(self, aggregate: str) -> dict[int, int]:
        """High watermarks of an event topic, per partition."""
        consumer = Consumer(consumer_config(self.kafka, f"probe-{uuid.uuid4().hex[:6]}"))
        try:
            return {
                p: consumer.get_watermark_offsets(TopicPartition(self.topic(aggregate), p), timeout=10)[1]
                for p in range(self.partitions)
            }
        finally:
            consumer.close()

    # ------------------------------------------------------------------------------------ workers

    def env(self, **overrides: str) -> dict[str, str]:
        """Environment of a worker process."""
        env = self.services.subprocess_env()
        env.update(
            ESFLOW_TOPIC_PREFIX=self.prefix,
            ESFLOW_TOPIC_PARTITIONS=str(self.partitions),
            ESFLOW_PROJECTION_DB_SCHEMA=self.schema,
            ESFLOW_PROJECTION_GROUP_PREFIX=self.group_prefix,
            ESFLOW_PROJECTION_RETRY_MAX_S="2",
            ESFLOW_LOG_LEVEL="info",
        )
        env.update(self.extra_env)
        env.update(overrides)
        return env

    def start(self, name: str, **env: str) -> subprocess.Popen[bytes]:
        """Start one more worker of projection ``name``."""
        self._spawned += 1
        log = (self.logs / f"{name}-{self._spawned}.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "esflow", "projector", "run", name],
            env=self.env(**env),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.workers.setdefault(name, []).append(proc)
        return proc

    def kill(self, proc: subprocess.Popen[bytes]) -> None:
        """SIGKILL one worker (no chance to commit anything) and reap it."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
        for procs in self.workers.values():
            if proc in procs:
                procs.remove(proc)

    def stop(self, name: str, timeout: float = 30) -> list[int | None]:
        """SIGTERM every worker of ``name``; SIGKILL the ones still alive after ``timeout``."""
        codes: list[int | None] = []
        for proc in self.workers.pop(name, []):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                codes.append(proc.wait(timeout))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
                codes.append(None)
        return codes

    def served(self, name: str) -> list[int]:
        """The versions ``name``'s workers serve, in log order, each once its Faust worker was ready.

        A re-executed worker (a version switch) adds one; a worker still starting (which a SIGTERM would
        kill before Faust handles signals) is not counted yet.
        """
        pattern = re.compile(rf"\b{re.escape(name)}: serving v(\d+)\b.*?\[\^Worker\]: Ready", re.DOTALL)
        return [
            int(m.group(1))
            for p in sorted(self.logs.glob(f"{name}-*.log"))
            for m in pattern.finditer(p.read_text(errors="replace"))
        ]

    def log_text(self) -> str:
        """All worker logs (for assertion messages)."""
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-4000:]}" for p in sorted(self.logs.iterdir())
        )

    # ------------------------------------------------------------------------------------ progress

    def applied(self, projection: str) -> int:
        """Events (including dead letters) a projection has applied, from projection_status."""
        with self.engine.connect() as conn:
            value = conn.execute(
                sa.text(
                    "SELECT COALESCE(sum(events_applied), 0) FROM projection_status WHERE projection = :p"
                ),
                {"p": projection},
            ).scalar_one()
        return int(value)

    def wait_applied(self, expected: dict[str, int], timeout: float = 120) -> None:
        """Block until each projection has applied the expected number of events."""
        done: dict[str, int] = {}

        def check() -> bool:
            done.update({name: self.applied(name) for name in expected})
            dead = [(n, p.returncode) for n, ps in self.workers.items() for p in ps if p.poll() is not None]
            assert not dead, f"workers exited: {dead}\n{self.log_text()}"
            for name, count in done.items():
                assert count <= expected[name], f"{name} applied {count} > {expected[name]} events"
            return done == expected

        eventually(
            check,
            timeout=timeout,
            interval=0.2,
            what=f"applied counts {expected}",
            details=lambda: f"applied {done}\n{self.log_text()}",
        )


def settings_for(harness: Harness) -> ProjectionSettings:
    """Projection settings matching the harness (for in-process use)."""
    return ProjectionSettings(db_schema=harness.schema, group_prefix=harness.group_prefix)
