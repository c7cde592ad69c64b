"""How the test session finds its Kafka and PostgreSQL.

Chosen in this order (``ESFLOW_TEST_STACK`` = env | testcontainers | local forces one):
(a) running services named by ``ESFLOW_KAFKA_BOOTSTRAP`` and ``ESFLOW_DATABASE_URL``;
(b) ``ESFLOW_TEST_STACK=testcontainers``: containers of the images named by ``ESFLOW_IMAGE_KAFKA`` and
    ``ESFLOW_IMAGE_POSTGRES`` (official images by default, ``esflow-local/...`` from ops/images/build.sh),
    on the host network and free loopback ports, removed at the end of the session;
(c) the local stack (``ops.stack``) on free ports in a temporary directory, stopped at the end.

Containers are opt-in rather than chosen whenever a Docker engine answers: the same `pytest` then runs
the same way on every machine, and a machine with Docker but no registry does not fail on a pull.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from esflow.settings import ImageSettings, KafkaSettings, PostgresSettings, StackSettings
from ops.stack.kafka import KafkaServer, container_env
from ops.stack.manager import Stack
from ops.stack.postgres import PostgresServer
from ops.stack.proc import free_port, wait_until


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


def _log_tail(container: Any) -> str:
    out, err = container.get_logs()
    return "\n".join((out + err).decode(errors="replace").strip().splitlines()[-15:])


def _wait_for(container: Any, what: str, ready: Callable[[], bool], timeout_s: float) -> None:
    """Poll ``ready`` until it holds; fail at once with the log tail when the container exits."""

    def check() -> bool:
        container.get_wrapped_container().reload()
        if container.get_wrapped_container().status in ("exited", "dead"):
            raise RuntimeError(f"the {what} container exited during start-up:\n{_log_tail(container)}")
        return ready()

    if not wait_until(check, timeout_s=timeout_s, interval_s=0.5):
        raise RuntimeError(
            f"the {what} container did not answer in {timeout_s:.0f}s:\n{_log_tail(container)}"
        )


@contextmanager
def _testcontainers(base: Path) -> Iterator[Services]:
    from testcontainers.core.config import testcontainers_config
    from testcontainers.core.container import DockerContainer

    if "TESTCONTAINERS_RYUK_DISABLED" not in os.environ:
        # The reaper is an image from a registry; our own teardown below removes what we start (the
        # `with` exits on failures too), so without a registry it is not needed.
        testcontainers_config.ryuk_disabled = True
    images = ImageSettings()
    host = "127.0.0.1"
    kafka = KafkaSettings(port=free_port(host), controller_port=free_port(host))
    pg = PostgresSettings(port=free_port(host))
    # The broker the local stack would run, with a static voter (the official image formats without
    # --standalone) and its data inside the container, where the image's user may write.
    node = KafkaServer(kafka, StackSettings(stack_dir=base))
    props = node.properties()
    props.pop("controller.quorum.bootstrap.servers")
    props["controller.quorum.voters"] = f"1@{host}:{node.controller_port}"
    props["log.dirs"] = "/tmp/kraft-combined-logs"
    pg_args = [
        "postgres", "-c", f"port={pg.port}", "-c", f"listen_addresses={host}",
        "-c", "max_connections=200", "-c", "shared_buffers=256MB", "-c", "max_prepared_transactions=64",
    ]  # fmt: skip
    # Host networking: this machine kind has no bridge, and loopback ports are what the local stack uses.
    kafka_c = DockerContainer(
        images.kafka, network_mode="host", name=f"esflow-test-kafka-{kafka.port}"
    ).with_envs(**container_env(props), KAFKA_HEAP_OPTS=kafka.heap_opts)
    pg_c = (
        DockerContainer(images.postgres, network_mode="host", name=f"esflow-test-postgres-{pg.port}")
        .with_command(pg_args)
        .with_envs(POSTGRES_USER=pg.user, POSTGRES_PASSWORD=pg.password, POSTGRES_DB=pg.database)
    )
    with kafka_c, pg_c:
        stack = StackSettings(stack_dir=base)
        _wait_for(pg_c, "PostgreSQL", PostgresServer(pg, stack).answers, stack.start_timeout_s)
        _wait_for(kafka_c, "Kafka", node.answers, stack.start_timeout_s)
        yield Services("testcontainers", node.bootstrap, pg.database_url)


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
    if forced == "testcontainers":
        with _testcontainers(base) as services:
            yield services
        return
    with _local_stack(base) as services:
        yield services
