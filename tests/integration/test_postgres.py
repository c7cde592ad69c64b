"""The database is real: data and connections survive a `pg_ctl restart`."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from tests.support.services import Services


def test_rows_survive_pg_ctl_restart(services: Services, pg_schema: str) -> None:
    if services.stack is None:
        pytest.skip(f"restarting needs the local stack; these services come from {services.source}")
    engine = sa.create_engine(services.database_url, pool_pre_ping=True)
    table = sa.Table(
        "survivors",
        sa.MetaData(schema=pg_schema),
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.Text, nullable=False),
    )
    table.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(table.insert(), [{"id": i, "name": f"row-{i}"} for i in range(100)])
        old_pid = conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()

    services.stack.postgres.restart()

    # The pool's connection died with the server; pre-ping replaces it transparently.
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one() == 100
        assert conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one() != old_pid
        uptime = conn.execute(sa.text("SELECT now() - pg_postmaster_start_time()")).scalar_one()
    assert uptime.total_seconds() < 60, "the server was not actually restarted"
    engine.dispose()
    # The stack must still recognise its restarted postmaster, or `stack down`/reset would leave it running
    # (pg_ctl restart starts it without -D on its command line).
    assert services.stack.postgres.pid() is not None, "the restarted server is no longer the stack's"
