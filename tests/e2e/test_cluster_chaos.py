"""Chaos on a 3-node cluster: SIGKILL the busiest partition's leader, later the active controller.

A steady stream of account commands runs through a real processor process on a local 3-node KRaft
cluster (replication 3, min.insync.replicas 2). Mid-stream the node leading the busiest events
partition is SIGKILLed and restarted, then the node that is the active controller. Afterwards every
command has exactly one answer (re-sent ones the same answer), the verdicts are the pure domain's, the
event log is gap-free and no reader saw an aborted event (``check_exactly_once``). The stall around
each kill is the largest command->result latency of the commands issued near it; it is printed.

Projections are not part of this test: their exactly-once-in-effect under broker loss rests on the same
read_committed log and is covered against a single broker by tests/e2e/projections/test_crash.py.
"""

from __future__ import annotations

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
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

from esflow.domain.messages import CommandEnvelope
from esflow.messaging.kafka import consumer_config
from esflow.messaging.results import CommandResult
from esflow.settings import KafkaSettings, PostgresSettings, StackSettings
from ops.stack.kafka import KafkaServer
from ops.stack.manager import Stack
from ops.stack.proc import free_port, free_port_range, process_cmdline, wait_until
from tests.e2e.processor.harness import (
    EventWatcher,
    ProcessorProcess,
    Stream,
    check_exactly_once,
    wait_for_results,
)
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
        proc.start()
        proc.wait_processing(120)
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
        finally:
            proc.ensure_stopped()
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
