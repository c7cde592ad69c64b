"""Chaos on a 3-node cluster: SIGKILL the busiest partition's leader, later the active controller.

A steady stream of account commands runs through a real processor process on a local 3-node KRaft
cluster (replication 3, min.insync.replicas 2). Mid-stream the node leading the busiest events
partition is SIGKILLed and restarted, then the node that is the active controller. Afterwards every
command has exactly one answer (re-sent ones the same answer), the verdicts are the pure domain's, the
event log is gap-free and no reader saw an aborted event (``check_exactly_once``). The stall around
each kill is the largest command->result latency of the commands issued near it; it is printed.

Every projection runs too, in one projector host (``esflow projector run --host``) on the cluster's
Postgres: afterwards each read model must equal the fold of the committed log (tests/e2e/projections/
expected.py), through both kills.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

from esflow.domain.messages import CommandEnvelope, EventEnvelope
from esflow.messaging.kafka import consumer_config
from esflow.messaging.results import CommandResult
from esflow.messaging.topics import source_topic
from esflow.readmodel.store import create_engine
from esflow.readmodel.versions import Layout
from esflow.settings import KafkaSettings, PostgresSettings, StackSettings
from ops.stack.kafka import KafkaServer
from ops.stack.manager import Stack
from ops.stack.proc import free_port, free_port_range, process_cmdline, wait_until
from tests.conftest import drop_installation
from tests.e2e.processor.harness import (
    ESFLOW,
    EventWatcher,
    ProcessorProcess,
    Stream,
    check_exactly_once,
    wait_for_results,
)
from tests.e2e.projections.expected import committed_log, comparable, fold, read_tables
from tests.e2e.projections.test_read_models import TOPICS_OF
from tests.integration.processor.kit import Env, processor_env

COMMANDS = int(os.environ.get("ESFLOW_CHAOS_COMMANDS", "10000"))

# Opt-in for now: the processor's three ways of stopping under broker kills are fixed (docs/operations.md,
# "Losing a broker") and the test has passed 5 runs in a row since, on a loaded box, but it is new and
# one flaky run would block every landing; it joins the default run once it has a longer record.
# Run it with ESFLOW_CLUSTER_CHAOS=1 (2-5 min on 2 cores).
pytestmark = pytest.mark.skipif(
    os.environ.get("ESFLOW_CLUSTER_CHAOS", "") in ("", "0"),
    reason="cluster chaos is opt-in (ESFLOW_CLUSTER_CHAOS=1): see the module's note",
)
RATE = float(os.environ.get("ESFLOW_CHAOS_RATE", "250"))


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Stack]:
    stack = Stack(
        StackSettings(stack_dir=tmp_path / "stack", start_timeout_s=180),
        KafkaSettings(port=free_port_range(6), heap_opts="-Xms128m -Xmx512m"),
        PostgresSettings(port=free_port()),
        brokers=3,
    )
    try:
        stack.up()
        yield stack
    finally:
        stack.reset()


class ResultClock:
    """Follows command-results and records when each command's first answer arrived (wall clock)."""

    def __init__(self, env: Env) -> None:
        topic = env.name("command-results")
        self.consumer = Consumer(consumer_config(env.kafka, f"clock-{uuid.uuid4().hex}"))
        md = self.consumer.list_topics(topic, timeout=30)
        self.consumer.assign([TopicPartition(topic, p, 0) for p in md.topics[topic].partitions])
        self.arrived: dict[uuid.UUID, float] = {}
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for msg in self.consumer.consume(1000, 0.1):
                if msg.error() is None:
                    cid = CommandResult.from_bytes(msg.value() or b"").command_id
                    self.arrived.setdefault(cid, time.time())

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(30)
        self.consumer.close()


def _stall(
    sent: list[CommandEnvelope], arrived: dict[uuid.UUID, float], at: float, span: float = 20
) -> float:
    """Largest command->result latency of the commands issued from 1 s before ``at`` to ``span`` after."""
    worst = 0.0
    for e in sent:
        issued = e.metadata.issued_at.timestamp()
        if at - 1 <= issued <= at + span and e.metadata.command_id in arrived:
            worst = max(worst, arrived[e.metadata.command_id] - issued)
    return worst


def _busiest_leader(admin: AdminClient, env: Env) -> int:
    topic = env.name("events.account")
    consumer = Consumer(consumer_config(env.kafka, f"probe-{uuid.uuid4().hex}"))
    try:
        md = consumer.list_topics(topic, timeout=30).topics[topic]
        ends = {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in md.partitions
        }
    finally:
        consumer.close()
    busiest = max(ends, key=lambda p: ends[p])
    return int(md.partitions[busiest].leader)


def _controller_leader(stack: Stack) -> int:
    node = stack.kafka_nodes[0]
    out = subprocess.run(
        [
            "java", "-cp", node.jars.classpath, "org.apache.kafka.tools.MetadataQuorumCommand",
            "--bootstrap-server", stack.kafka_bootstrap, "describe", "--status",
        ],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout  # fmt: skip
    found = re.search(r"LeaderId:\s+(\d+)", out)
    assert found, out
    return int(found.group(1))


def _kill_and_restart(node: KafkaServer, down_s: float) -> float:
    """SIGKILL the node, keep it down ``down_s`` seconds, restart it; returns the kill's wall time."""
    pid = node.pid()
    assert pid is not None
    killed_at = time.time()
    os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: process_cmdline(pid) is None, timeout_s=30)
    time.sleep(down_s)  # the outage itself, not a wait for a condition
    node.wait_ready(node.start(), timeout_s=180)
    return killed_at


class ProjectorHost:
    """Every projection in one `esflow projector run --host` on the cluster, in a schema of its own."""

    def __init__(self, cluster: Stack, penv: Env, base_env: dict[str, str], log_dir: Path) -> None:
        self.schema = f"chaos_{uuid.uuid4().hex[:8]}"
        self.pg = cluster.pg_settings
        self.vars = {
            **base_env, **penv.env_vars(),
            "ESFLOW_DATABASE_URL": cluster.database_url,
            "ESFLOW_PROJECTION_DB_SCHEMA": self.schema,
            "ESFLOW_PROJECTION_GROUP_PREFIX": f"{penv.topics.prefix}projection",
            "ESFLOW_PROJECTION_SESSION_TIMEOUT_S": "6",
        }  # fmt: skip
        self.topics = penv.topics
        self.log = log_dir / "projector.log"
        migrate = subprocess.run([ESFLOW, "db", "migrate"], env=self.vars, capture_output=True, text=True)
        assert migrate.returncode == 0, migrate.stderr
        self.proc = subprocess.Popen(
            [ESFLOW, "projector", "run", "--host"], env=self.vars, stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT,
        )  # fmt: skip

    def wait_ready(self) -> None:
        def ready() -> bool:
            assert self.proc.poll() is None, self.log.read_text(errors="replace")[-3000:]
            return b"[^Worker]: Ready" in self.log.read_bytes()

        assert wait_until(ready, timeout_s=180), self.log.read_text(errors="replace")[-3000:]

    def assert_read_models_equal_the_log(self, log: list[tuple[str, int, int, EventEnvelope]]) -> None:
        """Wait until every projection applied its topics' events, then compare each with the fold."""
        bi = Layout(self.schema).bi
        engine = create_engine(self.pg, bi)
        try:
            wanted = {
                name: sum(1 for t, *_ in log if t in {source_topic(s, self.topics) for s in sources})
                for name, sources in TOPICS_OF.items()
            }

            def applied() -> bool:
                assert self.proc.poll() is None, self.log.read_text(errors="replace")[-3000:]
                with engine.connect() as conn:
                    rows = conn.execute(
                        sa.text("SELECT projection, sum(events_applied) FROM projection_status GROUP BY 1")
                    ).all()
                done = {name: int(count) for name, count in rows}
                return all(done.get(name, 0) == n for name, n in wanted.items())

            assert wait_until(applied, timeout_s=300), self.log.read_text(errors="replace")[-3000:]
            actual, expected = comparable(read_tables(engine, bi), fold(log))
            for name in expected:
                assert actual[name].keys() == expected[name].keys(), f"{name}: rows missing or extra"
                wrong = [k for k in expected[name] if actual[name][k] != expected[name][k]]
                assert not wrong, f"{name}: {len(wrong)} rows differ"
        finally:
            engine.dispose()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
        with contextlib.suppress(Exception):
            drop_installation(self.pg.database_url.replace("+psycopg", ""), self.schema)


# About 2 min on an idle 2-core machine, 4-5 min when other jobs saturate it: above the suite's 300 s.
@pytest.mark.timeout(900)
def test_leader_and_controller_kills_lose_and_double_nothing(cluster: Stack, tmp_path: Path) -> None:
    kafka = KafkaSettings(bootstrap=cluster.kafka_bootstrap)
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap_servers})
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("ESFLOW_")}
    with processor_env(kafka, admin) as penv:
        proc = ProcessorProcess(
            penv, base_env, tmp_path, "chaos", ESFLOW_PROCESSOR_AGGREGATES="account",
            ESFLOW_PROCESSOR_SESSION_TIMEOUT_MS="6000",
        )  # fmt: skip
        watcher = EventWatcher(penv)
        clock = ResultClock(penv)
        stream = Stream(penv, COMMANDS, RATE)
        feeder = threading.Thread(target=stream.run, daemon=True)
        projector = ProjectorHost(cluster, penv, base_env, tmp_path)
        proc.start()
        proc.wait_processing(120)
        projector.wait_ready()
        feeder.start()
        kills: dict[str, tuple[int, float]] = {}
        try:
            assert wait_until(lambda: len(stream.sent) >= COMMANDS // 5, timeout_s=120)
            leader = _busiest_leader(admin, penv)
            kills["partition leader"] = (leader, _kill_and_restart(cluster.kafka_nodes[leader - 1], 3))
            assert wait_until(lambda: len(stream.sent) >= COMMANDS * 3 // 5, timeout_s=300)
            controller = _controller_leader(cluster)
            kills["controller"] = (controller, _kill_and_restart(cluster.kafka_nodes[controller - 1], 3))
            feeder.join(600)
            assert stream.done.is_set()
            wait_for_results(penv, stream.sent, timeout=180)
            watcher.stop()
            clock.stop()
            report = check_exactly_once(penv, stream.sent, watcher.seen)
            projector.assert_read_models_equal_the_log(committed_log(kafka, penv.topics))
        finally:
            proc.ensure_stopped()
            projector.stop()
    stalls = {what: _stall(stream.sent, clock.arrived, at) for what, (_node, at) in kills.items()}
    started = min(e.metadata.issued_at for e in stream.sent).timestamp()
    baseline = _stall(stream.sent, clock.arrived, started + 2, span=3)
    print(
        f"\ncluster chaos: {report}; "
        + "; ".join(
            f"kill {what} (node {kills[what][0]}): max latency {s:.2f}s" for what, s in stalls.items()
        )
        + f"; before any kill: {baseline:.2f}s"
    )
    assert report.accepted > 0 and report.rejected > 0
    assert len(clock.arrived) == report.distinct
