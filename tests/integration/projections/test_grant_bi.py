"""`esflow db grant-bi ROLE --password P` on new and existing roles, against a real PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
import sqlalchemy as sa

from esflow.readmodel import versions
from esflow.readmodel.store import create_engine
from esflow.settings import PostgresSettings


@pytest.fixture
def installed(pg_settings: PostgresSettings, pg_schema: str) -> Iterator[tuple[sa.Engine, versions.Layout]]:
    """A migrated installation (bi schema and reader role) in the test's own schema, no projections."""
    layout = versions.Layout(pg_schema)
    engine = create_engine(pg_settings, pg_schema)
    versions.install(engine, layout, [])
    yield engine, layout
    engine.dispose()


def _login(pg_settings: PostgresSettings, role: str, password: str) -> bool:
    url = sa.make_url(pg_settings.database_url)
    try:
        with psycopg.connect(
            host=url.host, port=url.port, dbname=url.database, user=role, password=password, connect_timeout=5
        ) as conn:
            return conn.execute("SELECT current_user").fetchone() == (role,)
    except psycopg.OperationalError:
        return False


def test_password_creates_then_changes_a_login_role(
    installed: tuple[sa.Engine, versions.Layout], pg_settings: PostgresSettings
) -> None:
    engine, layout = installed
    role = f"{layout.base}_analyst"
    created = versions.grant_bi(engine, layout, role, password="first-pw")
    assert created[0].startswith(f"created login role {role}")
    assert _login(pg_settings, role, "first-pw")

    again = versions.grant_bi(engine, layout, role, password="second-pw")
    assert f"set the password of existing role {role}" in again
    assert _login(pg_settings, role, "second-pw")
    assert not _login(pg_settings, role, "first-pw")

    # Without --password an existing role keeps its password and is only granted the reader role.
    plain = versions.grant_bi(engine, layout, role)
    assert plain == [f"granted {layout.reader_role} to {role}"]
    assert _login(pg_settings, role, "second-pw")


def test_nologin_role_gets_the_password_and_is_told_it_cannot_log_in(
    installed: tuple[sa.Engine, versions.Layout],
) -> None:
    engine, layout = installed
    role = f"{layout.base}_group"
    with engine.begin() as conn:
        conn.execute(sa.text(f'CREATE ROLE "{role}" NOLOGIN'))
    done = versions.grant_bi(engine, layout, role, password="pw")
    assert any("NOLOGIN" in line and role in line for line in done), done


def test_the_connecting_role_keeps_its_password(
    installed: tuple[sa.Engine, versions.Layout], pg_settings: PostgresSettings
) -> None:
    engine, layout = installed
    with engine.connect() as conn:
        me = conn.execute(sa.text("SELECT current_user")).scalar_one()
    done = versions.grant_bi(engine, layout, me, password="not-applied")
    assert any(line.startswith(f"did not set the password of {me}") for line in done), done
    url = sa.make_url(pg_settings.database_url)
    assert url.password is not None
    assert _login(pg_settings, me, url.password), "the connecting role's password must be unchanged"
    assert not _login(pg_settings, me, "not-applied")
