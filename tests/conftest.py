"""Session-scoped servers plus factory fixtures that isolate each test by name, not by server."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator

import psycopg
import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from esflow.messaging.topics import wait_until_visible
from esflow.settings import KafkaSettings, PostgresSettings
from tests.support.services import Services, provide


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark tests by folder so `-m "not integration"` style selections work."""
    for item in items:
        path = str(item.path)
        if "/tests/integration/" in path:
            item.add_marker(pytest.mark.integration)
        elif "/tests/e2e/" in path:
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    """Kafka and PostgreSQL for the whole session (see tests/support/services.py for the order)."""
    with provide(tmp_path_factory.mktemp("stack")) as found:
        yield found


@pytest.fixture(scope="session")
def kafka_settings(services: Services) -> KafkaSettings:
    """Kafka settings of the session's broker."""
    return services.kafka


@pytest.fixture(scope="session")
def pg_settings(services: Services) -> PostgresSettings:
    """Postgres settings of the session's database."""
    return services.postgres


@pytest.fixture(scope="session")
def admin(kafka_settings: KafkaSettings) -> AdminClient:
    """An AdminClient on the session's broker."""
    return AdminClient({"bootstrap.servers": kafka_settings.bootstrap_servers})


@pytest.fixture
def unique() -> Callable[[str], str]:
    """Make a name unique to this test run: ``unique("orders")`` -> ``orders-3f2a9c1b``."""
    suffix = uuid.uuid4().hex[:8]
    return lambda base: f"{base}-{suffix}"


@pytest.fixture
def topic_factory(admin: AdminClient, unique: Callable[[str], str]) -> Iterator[Callable[..., str]]:
    """Create uniquely named topics for one test and delete them afterwards."""
    created: list[str] = []

    def make(base: str = "t", partitions: int = 1, config: dict[str, str] | None = None) -> str:
        name = unique(base)
        new = NewTopic(name, num_partitions=partitions, replication_factor=1, config=config or {})
        admin.create_topics([new])[name].result(timeout=30)
        wait_until_visible(admin, [name], timeout_s=30)
        created.append(name)
        return name

    yield make
    if created:
        for fut in admin.delete_topics(created, operation_timeout=30).values():
            with contextlib.suppress(Exception):
                fut.result(timeout=30)


@pytest.fixture
def pg_conninfo(pg_settings: PostgresSettings) -> str:
    """libpq conninfo of the session's database (from its SQLAlchemy URL)."""
    return pg_settings.database_url.replace("postgresql+psycopg://", "postgresql://", 1)


@pytest.fixture
def pg_schema(pg_conninfo: str, unique: Callable[[str], str]) -> Iterator[str]:
    """A fresh schema for one test, dropped afterwards."""
    name = unique("test").replace("-", "_")
    with psycopg.connect(pg_conninfo, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{name}"')
    yield name
    drop_installation(pg_conninfo, name)


def drop_installation(conninfo: str, base: str) -> None:
    """Drop a schema and everything an esflow installation derived from it (``<base>_*`` schemas, roles).

    The roles go last: once the schemas are gone they hold no privileges, so they can be dropped.
    """
    pattern = base.replace("_", r"\_") + r"\_%"
    with psycopg.connect(conninfo, autocommit=True) as conn:
        schemas = [
            r[0] for r in conn.execute("SELECT nspname FROM pg_namespace WHERE nspname LIKE %s", (pattern,))
        ]
        for schema in [base, *schemas]:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        for (role,) in conn.execute(
            "SELECT rolname FROM pg_roles WHERE rolname LIKE %s", (pattern,)
        ).fetchall():
            conn.execute(f'DROP ROLE "{role}"')
