"""``ops/bench/api.py`` runs end to end on a tiny workload and cleans up after itself."""

from __future__ import annotations

import psycopg
import pytest

from esflow.settings import PostgresSettings
from ops.bench import api as bench

pytestmark = pytest.mark.integration


def test_the_benchmark_runs_and_leaves_nothing(
    pg_settings: PostgresSettings,
    pg_conninfo: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("ESFLOW_DATABASE_URL", pg_settings.database_url)
    args = ["--events", "400", "--seconds", "0.3", "--rounds", "1", "--concurrency", "2", "--hot", "10"]
    assert bench.main(args) == 0
    out = capsys.readouterr().out
    for case in ("order-by-id", "orders-of-customer"):
        assert f"{case}: 2 concurrent askers" in out
    for mode in ("raw SQL", "bus uncached", "bus cached", "HTTP uncached", "HTTP cached"):
        rows = [line for line in out.splitlines() if line.startswith(f"  {mode} ") and "req/s" in line]
        assert len(rows) == 2 and out.count(f"half its maximum, {mode}") == 2, out
    with psycopg.connect(pg_conninfo) as conn:
        left = conn.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'bench\\_api\\_%'"
        ).fetchall()
    assert left == []
