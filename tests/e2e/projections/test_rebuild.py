"""e2e: blue-green rebuilds and rollback under load, watched by a BI reader through the read-only role."""

from __future__ import annotations

import dataclasses
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa

from esflow.readmodel import migrations, versions
from esflow.settings import load_settings
from ops.bench.projection_workload import Workload
from projections.daily_revenue import DailyRevenueProjection
from tests.e2e.projections.bi_reader import problems, read_samples
from tests.e2e.projections.expected import comparable, fold, read_tables
from tests.e2e.projections.harness import Harness, LogEntry
from tests.support.wait import eventually

PASSWORD = "bi-secret"


class Load:
    """Domain events produced in the background (about 200/s) until stopped."""

    def __init__(self, harness: Harness, log: list[LogEntry]) -> None:
        self.harness = harness
        self.log = log
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.workload = Workload(seed=77)

    def _run(self) -> None:
        while not self.stopped.is_set():
            self.log += self.harness.produce(self.workload.events(50))
            time.sleep(0.25)  # pacing the load, not waiting for anything

    def __enter__(self) -> Load:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        self.thread.join(30)


def _run(harness: Harness, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "esflow", *args],
        env=harness.env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture
def reader_role(harness: Harness) -> Iterator[str]:
    """A login role granted the read-only BI role (dropped with the installation)."""
    role = f"{harness.schema}_analyst"
    done = _run(harness, "db", "grant-bi", role, "--password", PASSWORD)
    assert done.returncode == 0, done.stderr
    yield role


def _conninfo(harness: Harness, role: str) -> str:
    url = sa.make_url(harness.services.database_url)
    return f"host={url.host} port={url.port} dbname={url.database} user={role} password={PASSWORD}"


def _orders_expected(harness: Harness, log: list[LogEntry]) -> int:
    return sum(1 for topic, *_ in log if topic == harness.topic("order"))


def _assert_equals_fold(harness: Harness, log: list[LogEntry], names: tuple[str, ...]) -> None:
    expected = fold(sorted(log, key=lambda e: (e[0], e[1], e[2])))
    expected = {n: expected[n] for n in names}
    actual, expected = comparable(read_tables(harness.engine, harness.bi, names), expected)
    for name in names:
        assert expected[name], name
        assert actual[name].keys() == expected[name].keys(), f"{name}: rows missing or extra"
        wrong = [k for k in expected[name] if actual[name][k] != expected[name][k]]
        assert not wrong, f"{name}: {len(wrong)} rows differ, e.g. {actual[name][wrong[0]]}"


def _registry(harness: Harness, name: str) -> dict[int, str]:
    with harness.engine.connect() as conn:
        return {v.version: v.state for v in versions.list_versions(conn, harness.layout, name)}


def test_rebuild_and_rollback_under_load_with_a_bi_reader(
    harness: Harness, reader_role: str, tmp_path: Path
) -> None:
    log: list[LogEntry] = harness.produce(Workload(seed=5).events(3000))
    worker = harness.start("orders")
    harness.start("daily_revenue")
    harness.wait_applied({"orders": _orders_expected(harness, log)}, timeout=120)

    # The read-only role sees the views and nothing else.
    with psycopg.connect(_conninfo(harness, reader_role), autocommit=True) as conn:
        assert conn.execute(f'SELECT count(*) FROM "{harness.bi}".orders').fetchone()
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(f'SELECT count(*) FROM "{harness.layout.version_schema("orders", 1)}".orders')
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(f'DELETE FROM "{harness.bi}".orders')

    samples = tmp_path / "bi.jsonl"
    reader = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.e2e.projections.bi_reader",
            _conninfo(harness, reader_role),
            harness.bi,
            str(samples),
        ]
    )
    try:
        with Load(harness, log):
            grown = len(log) + 100
            eventually(lambda: len(log) >= grown, timeout=60, what="the load to produce events")
            rebuilt = _run(harness, "projection", "rebuild", "orders", "--lag-threshold", "20")
            assert rebuilt.returncode == 0, rebuilt.stderr + harness.log_text()
            assert "orders v2" in rebuilt.stdout and "live" in rebuilt.stdout, rebuilt.stdout
            assert _registry(harness, "orders") == {1: "standby", 2: "live"}
            # The worker follows the switch: same pid, re-executed on v2, applying the load there.
            v2 = harness.layout.version_schema("orders", 2)
            at_switch = _applied(harness, v2)
            eventually(
                lambda: harness.served("orders") == [1, 2] and _applied(harness, v2) > at_switch,
                timeout=60,
                what="the worker to serve v2",
                details=harness.log_text,
            )
            assert worker.poll() is None, harness.log_text()
            status = _run(harness, "projection", "status", "orders")
            assert status.returncode == 0 and "v2   live" in status.stdout, status.stdout
            back = _run(harness, "projection", "rollback", "orders")
            assert back.returncode == 0, back.stderr
            assert _registry(harness, "orders") == {1: "live", 2: "standby"}
            eventually(
                lambda: harness.served("orders") == [1, 2, 1],
                timeout=60,
                what="the worker to serve v1 again",
                details=harness.log_text,
            )
        harness.wait_applied({"orders": _orders_expected(harness, log)}, timeout=120)
        # A few more BI samples of the final state.
        taken = _lines(samples) + 5
        eventually(lambda: _lines(samples) >= taken, timeout=30, what="BI samples after the load")
    finally:
        reader.send_signal(signal.SIGTERM)
        reader.wait(30)

    seen = read_samples(samples)
    assert not problems(seen), problems(seen)[:3]
    assert len(seen) > 50
    _assert_equals_fold(harness, log, ("orders", "daily_revenue"))

    # v1 is live again and current; v2 can go, v1 cannot.
    assert _run(harness, "projection", "drop-version", "orders", "1").returncode != 0
    dropped = _run(harness, "projection", "drop-version", "orders", "2")
    assert dropped.returncode == 0, dropped.stderr
    assert _registry(harness, "orders") == {1: "live", 2: "dropped"}
    assert harness.stop("orders") == [0]
    assert harness.stop("daily_revenue") == [0]


def test_a_second_rebuild_is_refused_and_a_crashed_one_resumes(harness: Harness) -> None:
    from projections.rebuild import rebuild_lock

    log = harness.produce(Workload(seed=8).events(30_000))
    harness.start("event_log")
    harness.wait_applied({"event_log": len(log)}, timeout=180)
    # While another process holds the projection's rebuild lock, a rebuild is refused at once.
    with rebuild_lock(harness.db("event_log"), harness.layout, "event_log"):
        second = _run(harness, "projection", "rebuild", "event_log")
    assert second.returncode != 0
    assert "already running" in second.stderr, second.stderr
    assert _registry(harness, "event_log") == {1: "live"}

    # SIGKILL mid-replay (small batches, so it is still replaying): what it committed stays, the rest
    # is replayed by the next rebuild, from its own checkpoints.
    first = subprocess.Popen(
        [sys.executable, "-m", "esflow", "projection", "rebuild", "event_log", "--quiet"],
        env=harness.env(ESFLOW_PROJECTION_REBUILD_BATCH_SIZE="200"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    schema = harness.layout.version_schema("event_log", 2)

    def replaying() -> bool:
        assert first.poll() is None, "the rebuild ended before the kill"
        return _registry(harness, "event_log").get(2) == "building" and _applied(harness, schema) > 0

    eventually(replaying, timeout=60, interval=0.02, what="the rebuild to commit a batch")
    first.send_signal(signal.SIGKILL)
    first.wait(30)
    assert _registry(harness, "event_log") == {1: "live", 2: "building"}
    partial = _applied(harness, schema)
    assert 0 < partial < len(log)
    resumed = _run(harness, "projection", "rebuild", "event_log")
    assert resumed.returncode == 0, resumed.stderr
    assert _registry(harness, "event_log") == {1: "standby", 2: "live"}
    eventually(
        lambda: harness.served("event_log") == [1, 2],
        timeout=60,
        what="the worker to follow to v2",
        details=harness.log_text,
    )
    harness.wait_applied({"event_log": len(log)}, timeout=60)
    with harness.db("event_log").connect() as conn:
        count, distinct = conn.execute(
            sa.text("SELECT count(*), count(DISTINCT event_id) FROM event_log")
        ).one()
    assert count == distinct == len(log)
    assert harness.stop("event_log") == [0]


def _lines(path: Path) -> int:
    return path.read_text().count("\n") if path.exists() else 0


def _applied(harness: Harness, schema: str) -> int:
    with harness.engine.connect() as conn:
        exists = conn.execute(
            sa.text("SELECT to_regclass(:t)"), {"t": f'"{schema}".projection_status'}
        ).scalar()
        if exists is None:
            return 0
        value = conn.execute(
            sa.text(f'SELECT COALESCE(sum(events_applied), 0) FROM "{schema}".projection_status')
        )
        return int(value.scalar_one())


def _daily_revenue_v2(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, table_ddl: Callable[[str], str]
) -> type[DailyRevenueProjection]:
    """Code version 2 of daily_revenue (its table DDL made from v1's by ``table_ddl``), for this process.

    Also points this process's settings at the harness, so in-process rebuilds and workers use it.
    """
    model = DailyRevenueProjection.read_model
    v1 = model.ddl_at(1)
    v2 = migrations.ReadModelDDL(tables=tuple(table_ddl(t) for t in v1.tables), indexes=v1.indexes)
    for key, value in harness.env().items():
        monkeypatch.setenv(key, value)

    class Version2(DailyRevenueProjection):
        version = 2
        read_model = dataclasses.replace(model, ddl={1: v1, 2: v2})

    return Version2


def test_a_version_that_breaks_the_bi_contract_never_goes_live(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    from projections.rebuild import Rebuilder

    log = harness.produce(Workload(seed=9).events(500))
    # Code version 2 changes the type of a column the bi view exposes: a BI tool would break.
    widened = _daily_revenue_v2(
        harness, monkeypatch, lambda ddl: ddl.replace("orders        integer", "orders        bigint")
    )
    assert widened.read_model.ddl_at(2).tables != widened.read_model.ddl_at(1).tables
    with (
        Rebuilder("daily_revenue", load_settings(), projection=widened()) as rebuilder,
        pytest.raises(versions.ValidationFailed, match=r"daily_revenue\.orders is bigint"),
    ):
        rebuilder.rebuild(lag_threshold=0)
    assert _registry(harness, "daily_revenue") == {1: "live", 2: "failed"}
    with harness.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM daily_revenue")).scalar_one() == 0  # v1 never ran
    assert len(log) == 500


def test_a_worker_of_new_code_refuses_an_old_version_or_rebuilds_it_when_configured(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    from esflow.errors import EsflowError
    from projections import worker
    from projections.registry import PROJECTIONS

    log = harness.produce(Workload(seed=10).events(800))
    revised = _daily_revenue_v2(harness, monkeypatch, lambda ddl: ddl)
    monkeypatch.setitem(PROJECTIONS, "daily_revenue", revised)
    with pytest.raises(EsflowError, match="built by code version 1; this worker runs code version 2"):
        worker.serving("daily_revenue", load_settings(), None)
    monkeypatch.setenv("ESFLOW_PROJECTION_AUTO_REBUILD", "true")
    serving = worker.serving("daily_revenue", load_settings(), None)
    assert (serving.version, serving.code_version, serving.state) == (2, 2, "live")
    assert _registry(harness, "daily_revenue") == {1: "standby", 2: "live"}
    _assert_equals_fold(harness, log, ("daily_revenue",))
