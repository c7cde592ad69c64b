"""e2e, the whole pipeline: `esflow loadgen` -> processor -> projectors, a BI reader, and a rebuild meanwhile.

The acceptance run of the blue-green rebuild: while the load generator sends commands through the real
processor and the `orders` and `daily_revenue` workers keep their live versions current, a separate BI
reader queries the `bi` views through a read-only login, and `esflow projection rebuild orders` builds
and switches to version 2. The reader sees no error and nothing going backwards; the load generator
(which waits until every accepted command is visible in `orders`, across the switch) succeeds; and the
views equal a fold of the event log.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest
import sqlalchemy as sa

from esflow.domain.messages import EventEnvelope
from esflow.messaging.codec import Codec
from esflow.messaging.kafka import read_to_end
from esflow.messaging.topics import event_topic
from esflow.readmodel import versions
from esflow.readmodel.store import create_engine
from esflow.settings import PostgresSettings, Settings
from tests.conftest import drop_installation
from tests.e2e.projections.bi_reader import problems, read_samples
from tests.e2e.projections.expected import comparable, fold, read_tables
from tests.support.services import Services
from tests.support.wait import eventually

PASSWORD = "bi-secret"


@pytest.fixture
def installed(
    pipeline: tuple[Settings, dict[str, str]], services: Services
) -> Iterator[tuple[Settings, dict[str, str], versions.Layout]]:
    """The pipeline plus a read-model installation of its own (dropped afterwards)."""
    settings, env = pipeline
    base = f"rb_{uuid.uuid4().hex[:8]}"
    env = {
        **env,
        "ESFLOW_PROJECTION_DB_SCHEMA": base,
        "ESFLOW_PROJECTION_GROUP_PREFIX": f"{settings.topics.prefix}{base}",
    }
    done = subprocess.run(
        [sys.executable, "-m", "esflow", "db", "migrate"], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    try:
        yield settings, env, versions.Layout(base)
    finally:
        drop_installation(services.database_url.replace("+psycopg", ""), base)


def _applied(services: Services, layout: versions.Layout) -> int:
    """Events the live version of orders has applied (from the bi view of projection_status)."""
    engine = create_engine(PostgresSettings(database_url_override=services.database_url), layout.base)
    query = (
        f'SELECT COALESCE(sum(events_applied), 0) FROM "{layout.bi}".projection_status '
        "WHERE projection = 'orders'"
    )
    try:
        with engine.connect() as conn:
            return int(conn.execute(sa.text(query)).scalar_one())
    finally:
        engine.dispose()


def _log(settings: Settings) -> list[tuple[str, int, int, EventEnvelope]]:
    """Every committed event of the order topic, decoded, as (topic, partition, offset, envelope)."""
    codec = Codec.from_settings()
    topic = event_topic("order", settings.topics)
    return [
        (topic, msg.partition() or 0, msg.offset() or 0, codec.decode(msg.value() or b"", kind="event"))
        for msg in read_to_end(settings.kafka, topic)
    ]


def test_rebuild_while_loadgen_runs_and_a_bi_reader_watches(
    installed: tuple[Settings, dict[str, str], versions.Layout], services: Services, tmp_path: Path
) -> None:
    settings, env, layout = installed
    role = f"{layout.base}_analyst"
    granted = subprocess.run(
        [sys.executable, "-m", "esflow", "db", "grant-bi", role, "--password", PASSWORD],
        env=env,
        capture_output=True,
        text=True,
    )
    assert granted.returncode == 0, granted.stderr
    logs = tmp_path / "logs"
    logs.mkdir()
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "esflow", "projector", "run", name],
            env=env,
            stdout=(logs / f"{name}.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        for name in ("orders", "daily_revenue")
    ]
    url = sa.make_url(services.database_url)
    conninfo = f"host={url.host} port={url.port} dbname={url.database} user={role} password={PASSWORD}"
    samples = tmp_path / "bi.jsonl"
    reader = subprocess.Popen(
        [sys.executable, "-m", "tests.e2e.projections.bi_reader", conninfo, layout.bi, str(samples)]
    )
    loadgen = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "esflow",
            "loadgen",
            "--count",
            "5000",
            "--rate",
            "200",
            "--projection",
            "orders",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        # The rebuild starts once the load flows through the live version (early: the load must outlast it).
        eventually(
            lambda: _applied(services, layout) >= 100,
            timeout=120,
            interval=0.2,
            what="the live orders to apply 100 events",
        )
        assert loadgen.poll() is None, "the load ended before the rebuild started"
        rebuilt = subprocess.run(
            [sys.executable, "-m", "esflow", "projection", "rebuild", "orders", "--lag-threshold", "20"],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert rebuilt.returncode == 0, rebuilt.stderr
        assert loadgen.poll() is None, "the load ended before the switch"
        out, _ = loadgen.communicate(timeout=240)
        assert loadgen.returncode == 0, out
        assert "command->projection latency" in out, out
    finally:
        for proc in (reader, *workers):
            proc.send_signal(signal.SIGTERM)
        for proc in (reader, *workers):
            proc.wait(30)
        if loadgen.poll() is None:
            loadgen.kill()

    engine = create_engine(PostgresSettings(database_url_override=services.database_url), layout.base)
    try:
        with engine.connect() as conn:
            states = {v.version: v.state for v in versions.list_versions(conn, layout, "orders")}
        assert states == {1: "standby", 2: "live"}
        seen = read_samples(samples)
        assert not problems(seen), problems(seen)[:3]
        assert len(seen) > 100
        assert max(cast("list[float]", s["orders"])[0] for s in seen) > 0
        expected = fold(_log(settings))
        expected = {n: expected[n] for n in ("orders", "daily_revenue")}
        actual, expected = comparable(read_tables(engine, layout.bi, ("orders", "daily_revenue")), expected)
        for name, rows in expected.items():
            assert rows and actual[name].keys() == rows.keys(), name
            wrong = [k for k in rows if actual[name][k] != rows[k]]
            assert not wrong, f"{name}: {len(wrong)} rows differ"
    finally:
        engine.dispose()
