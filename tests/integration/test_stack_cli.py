"""`esflow stack …` as a user runs it: a separate stack in its own directory, on free ports."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ops.stack.proc import free_port, process_cmdline

ESFLOW = [sys.executable, "-m", "esflow"]


def _env(stack_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ESFLOW_")}
    env.update(
        ESFLOW_STACK_DIR=str(stack_dir),
        ESFLOW_KAFKA_PORT=str(free_port()),
        ESFLOW_KAFKA_CONTROLLER_PORT=str(free_port()),
        ESFLOW_PG_PORT=str(free_port()),
        ESFLOW_START_TIMEOUT_S="120",
    )
    env.update(extra)
    return env


def _run(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*ESFLOW, *args], env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )


def _assert_one_line_error(proc: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and not ln.startswith("first run:")]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("esflow: error: ")
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture
def stack_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    env = _env(tmp_path / "stack")
    yield env
    _run(env, "stack", "reset", "--yes")


def test_up_twice_status_down(stack_env: dict[str, str]) -> None:
    t0 = time.monotonic()
    first = _run(stack_env, "stack", "up", "--json")
    cold = time.monotonic() - t0
    assert first.returncode == 0, first.stderr
    st1 = json.loads(first.stdout)
    assert st1["running"] is True
    assert st1["kafka_bootstrap"] == f"127.0.0.1:{stack_env['ESFLOW_KAFKA_PORT']}"
    assert st1["database_url"].startswith("postgresql+psycopg://")
    assert f":{stack_env['ESFLOW_PG_PORT']}/" in st1["database_url"]

    t0 = time.monotonic()
    second = _run(stack_env, "stack", "up", "--json")
    warm = time.monotonic() - t0
    assert second.returncode == 0, second.stderr
    st2 = json.loads(second.stdout)
    # A no-op: the very same server processes answer.
    assert (st2["kafka"]["pid"], st2["postgres"]["pid"]) == (st1["kafka"]["pid"], st1["postgres"]["pid"])
    assert warm < cold

    status = _run(stack_env, "stack", "status", "--json")
    assert status.returncode == 0
    assert json.loads(status.stdout)["running"] is True

    down = _run(stack_env, "stack", "down")
    assert down.returncode == 0, down.stderr
    assert process_cmdline(st1["kafka"]["pid"]) is None
    assert process_cmdline(st1["postgres"]["pid"]) is None

    after = _run(stack_env, "stack", "status", "--json")
    assert after.returncode == 1
    assert json.loads(after.stdout)["running"] is False

    # Stopped servers come back with their data: a restart, not a re-format.
    again = _run(stack_env, "stack", "up", "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["running"] is True


def test_port_taken_is_one_line_and_starts_nothing(stack_env: dict[str, str]) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", int(stack_env["ESFLOW_PG_PORT"])))
        squatter.listen()
        proc = _run(stack_env, "stack", "up")
    _assert_one_line_error(proc, f"127.0.0.1:{stack_env['ESFLOW_PG_PORT']}", "in use", "ESFLOW_PG_PORT")
    status = _run(stack_env, "stack", "status", "--json")
    assert json.loads(status.stdout)["kafka"]["pid"] is None


@pytest.mark.parametrize(
    ("override", "fragments"),
    [
        ({"ESFLOW_JAVA": "no-such-java"}, ("Java `no-such-java` was not found", "install a JDK")),
        ({"ESFLOW_PG_BIN_DIR": "/nonexistent/pg/bin"}, ("`initdb` was not found", "ESFLOW_PG_BIN_DIR")),
    ],
)
def test_missing_programs_are_one_line(
    tmp_path: Path, override: dict[str, str], fragments: tuple[str, ...]
) -> None:
    env = _env(tmp_path / "stack", **override)
    _assert_one_line_error(_run(env, "stack", "up"), *fragments)


def test_failed_download_is_one_line(tmp_path: Path) -> None:
    fake_mvn = tmp_path / "mvn"
    fake_mvn.write_text("#!/bin/sh\necho '[ERROR] Could not transfer artifact: network down'\nexit 1\n")
    fake_mvn.chmod(0o755)
    env = _env(tmp_path / "stack", ESFLOW_MVN=str(fake_mvn), ESFLOW_CACHE_DIR=str(tmp_path / "cache"))
    _assert_one_line_error(_run(env, "stack", "up"), "could not resolve Kafka", "network down")
    assert not list((tmp_path / "cache").glob("kafka-*/libs")), "a failed download must leave no classpath"


def test_half_formatted_kafka_dir_is_refused(tmp_path: Path) -> None:
    stack_dir = tmp_path / "stack"
    (stack_dir / "kafka" / "data").mkdir(parents=True)
    (stack_dir / "kafka" / "data" / "bootstrap.checkpoint.tmp").write_text("interrupted")
    _assert_one_line_error(_run(_env(stack_dir), "stack", "up"), "never completely formatted", "stack reset")
