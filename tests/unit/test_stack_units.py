"""Stack helpers that need no server."""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path
from unittest import mock

from esflow.settings import KafkaSettings, StackSettings
from ops.stack import proc
from ops.stack.kafka import KafkaServer, container_env, random_cluster_id, replication


def test_cluster_id_is_22_chars_of_urlsafe_base64_uuid() -> None:
    cid = random_cluster_id()
    assert len(cid) == 22
    assert len(base64.urlsafe_b64decode(cid + "==")) == 16


def test_a_cluster_id_never_starts_with_a_dash() -> None:
    # One in 64 would, and the storage tool then takes it for an option (a demo run failed so in CI).
    with mock.patch("uuid.uuid4", side_effect=[uuid.UUID(bytes=b"\xfb" + bytes(15)), uuid.UUID(int=7)]):
        assert random_cluster_id() == base64.urlsafe_b64encode(uuid.UUID(int=7).bytes).decode().rstrip("=")


def test_pid_file_of_an_unrelated_process_is_not_ours(tmp_path: Path) -> None:
    pid_file = tmp_path / "x.pid"
    # A live process whose command line lacks our marker: a recycled pid must never be signalled.
    pid_file.write_text(f"{os.getpid()}\n")
    assert proc.pid_alive_and_ours(pid_file, "/definitely/not/our/config") is None
    own_marker = (proc.process_cmdline(os.getpid()) or "").split()[0]
    assert proc.pid_alive_and_ours(pid_file, own_marker) == os.getpid()


def test_dead_and_missing_pids(tmp_path: Path) -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    pid_file = tmp_path / "dead.pid"
    pid_file.write_text(str(child.pid))
    assert proc.pid_alive_and_ours(pid_file, "python") is None
    assert proc.read_pid(tmp_path / "missing.pid") is None
    (tmp_path / "garbage.pid").write_text("not a pid")
    assert proc.read_pid(tmp_path / "garbage.pid") is None


def test_terminate_stops_a_process() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    proc.terminate(child.pid, timeout_s=10, name="sleeper")
    assert child.wait(timeout=5) != 0


def test_uptime_counts_from_the_process_start() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        child_up = proc.uptime_seconds(child.pid)
        own_up = proc.uptime_seconds(os.getpid())
        assert child_up is not None and own_up is not None
        # Just started, and younger than this test process, which started it.
        assert 0 <= child_up < 10
        assert own_up >= child_up
    finally:
        child.kill()
        child.wait()
    assert proc.uptime_seconds(child.pid) is None


def test_port_probe() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        assert not proc.port_is_free("127.0.0.1", port)
    assert proc.port_is_free("127.0.0.1", proc.free_port())


def test_server_properties_follow_the_settings(tmp_path: Path) -> None:
    server = KafkaServer(KafkaSettings(port=29092, controller_port=29093), StackSettings(stack_dir=tmp_path))
    server.write_config()
    props = dict(
        line.split("=", 1) for line in server.paths.properties.read_text().splitlines() if "=" in line
    )
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:29092,CONTROLLER://127.0.0.1:29093"
    assert props["controller.quorum.bootstrap.servers"] == "127.0.0.1:29093"
    assert props["auto.create.topics.enable"] == "false"
    assert props["group.initial.rebalance.delay.ms"] == "0"
    assert props["offsets.topic.replication.factor"] == "1"
    assert props["transaction.state.log.replication.factor"] == "1"
    assert props["log.dirs"] == str(tmp_path / "kafka" / "data")


def _props(server: KafkaServer) -> dict[str, str]:
    server.write_config()
    lines = server.paths.properties.read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line)


def test_controller_port_follows_the_broker_port_unless_set() -> None:
    # Two stacks on one machine: the second one's controller must not take the default stack's 9093.
    assert KafkaSettings(port=19092).node_controller_port(1) == 19093
    assert KafkaSettings(port=19092, brokers=3).node_controller_port(1) == 19095
    assert KafkaSettings(port=19092, controller_port=29999).node_controller_port(1) == 29999
    assert KafkaSettings(brokers=3).bootstrap_servers == "127.0.0.1:9092,127.0.0.1:9093,127.0.0.1:9094"


def test_three_nodes_have_their_own_ports_dirs_and_one_voter_set(tmp_path: Path) -> None:
    settings = KafkaSettings(port=29092, brokers=3)
    nodes = [KafkaServer(settings, StackSettings(stack_dir=tmp_path), n) for n in (1, 2, 3)]
    props = [_props(node) for node in nodes]
    ports = {(node.port, node.controller_port) for node in nodes}
    assert ports == {(29092, 29095), (29093, 29096), (29094, 29097)}
    assert len({p["log.dirs"] for p in props}) == 3
    assert [p["node.id"] for p in props] == ["1", "2", "3"]
    voters = "1@127.0.0.1:29095,2@127.0.0.1:29096,3@127.0.0.1:29097"
    for p in props:
        assert p["controller.quorum.voters"] == voters
        assert "controller.quorum.bootstrap.servers" not in p
        # Three copies of every internal topic, two of which must acknowledge.
        assert p["offsets.topic.replication.factor"] == "3"
        assert p["transaction.state.log.replication.factor"] == "3"
        assert p["transaction.state.log.min.isr"] == "2"
        assert p["min.insync.replicas"] == "2"
        assert p["default.replication.factor"] == "3"


def test_replication_follows_the_cluster_size() -> None:
    assert replication(1) == (1, 1)
    assert replication(2) == (2, 1)
    assert replication(3) == (3, 2)
    assert replication(5) == (3, 2)


def test_container_env_is_the_inverse_of_the_images_mapping() -> None:
    env = container_env({"log.dirs": "/d", "listener.security.protocol.map": "A:B", "x_y.z-w": "1"})
    assert env == {
        "KAFKA_LOG_DIRS": "/d",
        "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP": "A:B",
        "KAFKA_X__Y_Z___W": "1",
    }
    # The mapping the image's entry point applies (ops/images/kafka/opt/bin/run), in Python.
    for name, value in env.items():
        key = name.removeprefix("KAFKA_").lower()
        key = key.replace("___", "-").replace("__", "@").replace("_", ".").replace("@", "_")
        assert key in {"log.dirs", "listener.security.protocol.map", "x_y.z-w"}, (name, value)
