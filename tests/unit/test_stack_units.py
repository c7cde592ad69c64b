"""Stack helpers that need no server."""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import sys
from pathlib import Path

from esflow.settings import KafkaSettings, StackSettings
from ops.stack import proc
from ops.stack.kafka import KafkaServer, random_cluster_id


def test_cluster_id_is_22_chars_of_urlsafe_base64_uuid() -> None:
    cid = random_cluster_id()
    assert len(cid) == 22
    assert len(base64.urlsafe_b64decode(cid + "==")) == 16


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
