"""How the test session finds its Kafka and PostgreSQL.

Chosen in this order (``ESFLOW_TEST_STACK`` = env | testcontainers | local forces one):
(a) running services named by ``ESFLOW_KAFKA_BOOTSTRAP`` and ``ESFLOW_DATABASE_URL``;
(b) testcontainers, when a Docker engine answers;
(c) the local stack (``ops.stack``) on free ports in a temporary directory, stopped at the end.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from esflow.settings import KafkaSettings, PostgresSettings, StackSettings
from ops.stack.manager import Stack
from ops.stack.proc import free_port


@dataclass
class Services:
    """Connection details of the servers the tests run against."""

    source: str
    kafka_bootstrap: str
    database_url: str
    stack: Stack | None = None
    env: dict[str, str] = field(default_factory=dict)

    @property
    def kafka(self) -> KafkaSettings:
        """Kafka settings pointing at the test broker."""
        return KafkaSettings(bootstrap=self.kafka_bootstrap)

    @property
    def postgres(self) -> PostgresSettings:
        """Postgres settings pointing at the test database."""
        return PostgresSettings(database_url_override=self.database_url)

    def subprocess_env(self) -> dict[str, str]:
        """Environment for an `esflow` subprocess that should use these services."""
        env = dict(os.environ)
        env.update(self.env)
        env["ESFLOW_KAFKA_BOOTSTRAP"] = self.kafka_bootstrap
        env["ESFLOW_DATABASE_URL"] = self.database_url
        return env


def docker_answers() -> bool:
    """True when a Docker engine answers a ping (testcontainers can start containers)."""
    try:
        import docker  # type: ignore[import-untyped]

        client = docker.from_env(timeout=3)
        return bool(client.ping())
    except Exception:
        return False


def _from_env() -> Services | None:
    bootstrap = os.environ.get("ESFLOW_KAFKA_BOOTSTRAP")
    url = os.environ.get("ESFLOW_DATABASE_URL")
    if not bootstrap and not url:
        return None
    if not (bootstrap and url):
        raise RuntimeError(
            "set both ESFLOW_KAFKA_BOOTSTRAP and ESFLOW_DATABASE_URL to test against running services"
            " (or neither, to let the tests start their own)"
        )
    return Services("env", bootstrap, url)


@contextmanager
def _testcontainers() -> Iterator[Services]:
    from testcontainers.kafka import KafkaContainer
    from testcontainers.postgres import PostgresContainer

    # testcontainers' KafkaContainer drives Confluent's cp-kafka images (KRaft from 7.0).
    with (
        KafkaContainer("confluentinc/cp-kafka:7.7.1").with_kraft() as kafka,
        PostgresContainer("postgres:15", driver="psycopg") as pg,
    ):
        yield Services("testcontainers", kafka.get_bootstrap_server(), pg.get_connection_url())


@contextmanager
def _local_stack(base: Path) -> Iterator[Services]:
    host = "127.0.0.1"
    ports = {
        "ESFLOW_KAFKA_PORT": free_port(host),
        "ESFLOW_KAFKA_CONTROLLER_PORT": free_port(host),
        "ESFLOW_PG_PORT": free_port(host),
    }
    env = {"ESFLOW_STACK_DIR": str(base), **{k: str(v) for k, v in ports.items()}}
    stack = Stack(
        StackSettings(stack_dir=base),
        KafkaSettings(port=ports["ESFLOW_KAFKA_PORT"], controller_port=ports["ESFLOW_KAFKA_CONTROLLER_PORT"]),
        PostgresSettings(port=ports["ESFLOW_PG_PORT"]),
    )
    try:
        status = stack.up()
        yield Services("local", status.kafka_bootstrap, status.database_url, stack=stack, env=env)
    finally:
        stack.reset()


@contextmanager
def provide(base: Path) -> Iterator[Services]:
    """Yield the services for a test session, cleaning up what it started."""
    forced = os.environ.get("ESFLOW_TEST_STACK", "").strip().lower()
    if forced in ("", "env"):
        found = _from_env()
        if found is not None:
            yield found
            return
        if forced == "env":
            raise RuntimeError("ESFLOW_TEST_STACK=env needs ESFLOW_KAFKA_BOOTSTRAP and ESFLOW_DATABASE_URL")
    if forced == "testcontainers" or (forced == "" and docker_answers()):
        with _testcontainers() as services:
            yield services
        return
    with _local_stack(base) as services:
        yield services
