"""e2e: a projector host (several projections in one process) and the bulk catch-up, with real processes.

The read models must equal a fold of the log computed independently of projections/, and event_log
must hold every event exactly once, whatever moment the host is SIGKILLed at: during the bulk
catch-up, right at its handover to the Faust live tail, and after it fell behind while running.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import sqlalchemy as sa

from esflow.messaging.process_records import InstanceRecord
from ops.bench.projection_workload import Workload
from projections.registry import PROJECTIONS
from tests.e2e.projections.expected import comparable, fold, read_tables
from tests.e2e.projections.harness import Entry, Harness
from tests.e2e.projections.test_read_models import TOPICS_OF, _count
from tests.support.instances import instance_records
from tests.support.wait import eventually


def _start_host(harness: Harness, names: Sequence[str], **env: str) -> tuple[subprocess.Popen[bytes], Path]:
    """Start `esflow projector run --host NAMES…` as a real process logging into the harness's logs."""
    path = harness.logs / f"host-{len(list(harness.logs.glob('host-*.log'))) + 1}.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "esflow", "projector", "run", "--host", *names],
        env=harness.env(**env),
        stdout=path.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    harness.workers.setdefault("host", []).append(proc)
    return proc, path


def _wait_log(harness: Harness, path: Path, text: str, *, count: int = 1, timeout: float = 180) -> None:
    """Wait (polling closely, so a kill lands right after it) until ``text`` is ``count`` times in the log."""

    def seen() -> bool:
        assert all(p.poll() is None for p in harness.workers.get("host", [])), harness.log_text()
        return path.read_bytes().count(text.encode()) >= count

    eventually(
        seen, timeout=timeout, interval=0.005, what=f"{text!r} in {path.name}", details=harness.log_text
    )


def _assert_exact(harness: Harness, log: Sequence[Entry], names: Sequence[str]) -> None:
    expected = fold(sorted(log, key=lambda e: (e[0], e[1], e[2])))
    actual, expected = comparable(read_tables(harness.engine, harness.bi, names), expected)
    for name in names:
        if name not in expected:
            continue
        assert len(expected[name]) > 0, name
        assert actual[name].keys() == expected[name].keys(), f"{name}: rows missing or extra"
        wrong = [k for k in expected[name] if actual[name][k] != expected[name][k]]
        assert not wrong, f"{name}: {len(wrong)} rows differ, e.g. {actual[name][wrong[0]]}"
    if "event_log" in names:
        with harness.engine.connect() as conn:
            count, distinct = conn.execute(
                sa.text("SELECT count(*), count(DISTINCT event_id) FROM event_log")
            ).one()
        assert count == distinct == sum(1 for entry in log if not isinstance(entry[3], InstanceRecord))
    assert harness.dead_letters() == 0


def test_one_host_serving_every_projection_builds_the_same_read_models(harness: Harness) -> None:
    records = instance_records(seed=23, instances=200)
    log: list[Entry] = [*harness.produce(Workload(seed=21).events(3000))]
    log += harness.produce_instances(records[:400])
    _, path = _start_host(harness, [])
    log += harness.produce(Workload(seed=22).events(1000))
    log += harness.produce_instances(records[400:])
    harness.wait_applied({name: _count(log, harness, TOPICS_OF[name]) for name in PROJECTIONS}, timeout=180)
    assert harness.stop("host") == [0], harness.log_text()
    text = path.read_text(errors="replace")
    for name in PROJECTIONS:
        assert f"{name}: serving v1" in text, text[-3000:]
    assert "catching up in bulk" not in text  # 4,000 events are below the default threshold
    _assert_exact(harness, log, list(PROJECTIONS))
    status = subprocess.run(
        [sys.executable, "-m", "esflow", "projection", "status"],
        env=harness.env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert all(f"{name:<22} v1   live" in status.stdout for name in PROJECTIONS), status.stdout


def test_bulk_catch_up_hands_over_exactly_through_sigkills(harness: Harness) -> None:
    names = ["event_log", "orders"]  # event_log reads every topic, orders one of them: shared fetch
    harness.extra_env.update(
        ESFLOW_PROJECTION_CATCHUP_THRESHOLD="1000",
        ESFLOW_PROJECTION_BATCH_SIZE="500",
        ESFLOW_PROJECTION_REBUILD_BATCH_SIZE="1000",
        ESFLOW_PROJECTION_SESSION_TIMEOUT_S="6",
    )
    log = harness.produce(Workload(seed=31).events(12_000))

    def expected() -> dict[str, int]:
        return {name: _count(log, harness, TOPICS_OF[name]) for name in names}

    # 1. SIGKILL in the middle of the catch-up, once some bulk batches have committed.
    host, path = _start_host(harness, names)
    _wait_log(harness, path, "catching up in bulk")
    eventually(lambda: harness.applied("event_log") >= 2000, timeout=120, interval=0.01, what="bulk batches")
    harness.kill(host)
    done = harness.applied("event_log")
    assert done < expected()["event_log"], "the catch-up finished before the kill: nothing was tested"

    # 2. SIGKILL at the handover: the last projection caught up, the live tail not started yet.
    host, path = _start_host(harness, names)
    _wait_log(harness, path, "event_log+orders: caught up in bulk")  # one replay feeds both
    harness.kill(host)
    assert b"[^Worker]: Ready" not in path.read_bytes(), "the kill came after the live tail started"

    # 3. The live tail takes over from the checkpoints, then a burst far past the threshold (one
    # transaction, visible at once) sends the running host back through the bulk path.
    host, path = _start_host(harness, names)
    _wait_log(harness, path, "[^Worker]: Ready")
    log += harness.produce(Workload(seed=32).events(500))
    harness.wait_applied(expected(), timeout=180)
    log += harness.produce(Workload(seed=33).events(8000), transaction=True)
    _wait_log(harness, path, "restarting into the bulk catch-up")
    _wait_log(harness, path, "[^Worker]: Ready", count=2)
    harness.wait_applied(expected(), timeout=180)
    assert harness.stop("host") == [0], harness.log_text()
    _assert_exact(harness, log, names)


def test_a_host_follows_a_version_switch_of_one_of_its_projections(harness: Harness) -> None:
    names = ["event_log", "account_balances"]
    log = harness.produce(Workload(seed=41).events(600))

    def expected() -> dict[str, int]:
        return {name: _count(log, harness, TOPICS_OF[name]) for name in names}

    _, path = _start_host(harness, names)
    harness.wait_applied(expected(), timeout=120)
    rebuilt = subprocess.run(
        [sys.executable, "-m", "esflow", "projection", "rebuild", "account_balances", "--quiet"],
        env=harness.env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert rebuilt.returncode == 0, rebuilt.stderr + harness.log_text()
    # The host re-executes itself (same process) on v2 of account_balances, still v1 of event_log.
    _wait_log(harness, path, "account_balances: v2 is live now")
    _wait_log(harness, path, "account_balances: serving v2")
    _wait_log(harness, path, "[^Worker]: Ready", count=2)
    text = path.read_text(errors="replace")
    assert text.count("event_log: serving v1") == 2, text[-3000:]
    log += harness.produce(Workload(seed=42).events(400))
    harness.wait_applied(expected(), timeout=120)
    assert harness.stop("host") == [0], harness.log_text()
    _assert_exact(harness, log, names)
