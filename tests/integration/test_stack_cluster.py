"""`esflow stack up --brokers 3`: three KRaft nodes, and a catalogue replicated from the cluster size."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType

from ops.stack.proc import free_port, free_port_range

ESFLOW = [sys.executable, "-m", "esflow"]


def _run(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*ESFLOW, *args], env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )


@pytest.fixture
def cluster_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ESFLOW_")}
    # No controller port: the controllers take the three ports after the brokers'.
    env.update(
        ESFLOW_STACK_DIR=str(tmp_path / "stack"),
        ESFLOW_KAFKA_PORT=str(free_port_range(6)),
        ESFLOW_PG_PORT=str(free_port()),
        ESFLOW_KAFKA_HEAP_OPTS="-Xms128m -Xmx512m",
        ESFLOW_START_TIMEOUT_S="180",
    )
    yield env
    _run(env, "stack", "reset", "--yes")


def test_three_node_cluster_replicates_the_catalogue(cluster_env: dict[str, str]) -> None:
    up = _run(cluster_env, "stack", "up", "--brokers", "3", "--json")
    assert up.returncode == 0, up.stderr
    status = json.loads(up.stdout)
    base = int(cluster_env["ESFLOW_KAFKA_PORT"])
    nodes = status["kafka_nodes"]
    assert [(n["node_id"], n["port"], n["controller_port"]) for n in nodes] == [
        (i, base + i - 1, base + 3 + i - 1) for i in (1, 2, 3)
    ]
    assert all(n["answers"] and n["pid"] for n in nodes)
    assert len({n["pid"] for n in nodes}) == 3
    bootstrap = status["kafka_bootstrap"]
    assert bootstrap == ",".join(f"127.0.0.1:{base + i}" for i in range(3))

    # The size is remembered: status and a second `up` need no flag; another size is refused.
    text = _run(cluster_env, "stack", "status")
    assert text.returncode == 0, text.stdout + text.stderr
    assert [ln.split()[0] for ln in text.stdout.splitlines()[:3]] == ["kafka-1", "kafka-2", "kafka-3"]
    again = _run(cluster_env, "stack", "up", "--json")
    assert again.returncode == 0, again.stderr

    def identity(found: list[dict[str, int]]) -> list[tuple[int, int, int]]:
        return [(n["node_id"], n["pid"], n["port"]) for n in found]

    assert identity(json.loads(again.stdout)["kafka_nodes"]) == identity(nodes)
    other = _run(cluster_env, "stack", "up", "--brokers", "1")
    assert other.returncode != 0 and "3-node" in other.stderr and "reset" in other.stderr

    env = {**cluster_env, "ESFLOW_KAFKA_BOOTSTRAP": bootstrap, "ESFLOW_TOPIC_PARTITIONS": "2"}
    applied = _run(env, "topics", "apply")
    assert applied.returncode == 0, applied.stderr
    admin = AdminClient({"bootstrap.servers": bootstrap})
    md = admin.list_topics(timeout=15)
    assert len(md.brokers) == 3
    for name in ("events.order", "commands.order", "snapshots.order", "command-results"):
        for partition in md.topics[name].partitions.values():
            assert len(partition.replicas) == 3, (name, partition.replicas)
    names = ["events.order", "snapshots.order", "command-results", "commands.order"]
    futures = admin.describe_configs([ConfigResource(ResourceType.TOPIC, n) for n in names])
    min_isr = {res.name: fut.result()["min.insync.replicas"].value for res, fut in futures.items()}
    # Durable topics set it themselves; commands inherit the cluster's default, also 2 here.
    assert min_isr == {
        "events.order": "2",
        "snapshots.order": "2",
        "command-results": "2",
        "commands.order": "2",
    }
    broker = admin.describe_configs([ConfigResource(ResourceType.BROKER, "1")])
    config = next(iter(broker.values())).result()
    assert config["transaction.state.log.min.isr"].value == "2"
    assert config["offsets.topic.replication.factor"].value == "3"

    down = _run(cluster_env, "stack", "down")
    assert down.returncode == 0, down.stderr
    assert all(
        n["pid"] is None
        for n in json.loads(_run(cluster_env, "stack", "status", "--json").stdout)["kafka_nodes"]
    )
