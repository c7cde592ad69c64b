"""A whole pipeline behind a running `esflow api run`: processor, orders projector, API (subprocesses).

Everything is isolated by name on the session's servers: topics under a fresh prefix, read models in a
fresh schema, consumer groups named after the prefix. The API checks tokens with an RSA key made here.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from confluent_kafka.admin import AdminClient

from esflow.messaging import topics
from esflow.settings import KafkaSettings, Settings, TopicSettings
from ops.stack.proc import free_port
from tests.conftest import drop_installation
from tests.support.services import Services
from tests.support.tokens import AUDIENCE, ISSUER, TokenMaker, new_key, write_public_key
from tests.support.wait import eventually

PARTITIONS = 3
MAX_DEPTH = 2
"""The API under test allows depth 2, so a valid query one level deeper (edges.node.x) can be refused."""


@dataclass
class Api:
    """The running API and what a test needs to call it."""

    url: str
    tokens: TokenMaker
    key_dir: Path
    log: Path
    env: dict[str, str]
    """The environment of the pipeline's processes (to start more of them: a process manager, say)."""

    def post(self, query: str, variables: dict[str, Any] | None = None, token: str | None = None,
             **kwargs: Any) -> httpx.Response:  # fmt: skip
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.post(
            f"{self.url}/graphql", json={"query": query, "variables": variables or {}}, headers=headers,
            timeout=60, **kwargs,
        )  # fmt: skip

    def gql(self, query: str, variables: dict[str, Any] | None = None, token: str | None = None) -> Any:
        """The ``data`` of a query that must succeed without errors."""
        response = self.post(query, variables, token)
        assert response.status_code == 200, response.text
        body = response.json()
        assert not body.get("errors"), body
        return body["data"]


def _start(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("w") as out:
        return subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def _alive(proc: subprocess.Popen[bytes], log: Path, what: str) -> None:
    if proc.poll() is not None:
        raise RuntimeError(f"{what} exited ({proc.returncode}):\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def api(services: Services, admin: AdminClient, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """Topics, migrations, a processor, the orders projector and the API, all running."""
    tmp = tmp_path_factory.mktemp("api")
    prefix = f"api-{uuid.uuid4().hex[:8]}."
    schema = f"api_{uuid.uuid4().hex[:8]}"
    settings = Settings(
        kafka=KafkaSettings(bootstrap=services.kafka_bootstrap),
        topics=TopicSettings(prefix=prefix, partitions=PARTITIONS),
    )
    topics.apply(admin, topics.catalogue(settings.topics))
    key = new_key()
    port = free_port()
    env = services.subprocess_env()
    env.update(
        ESFLOW_TOPIC_PREFIX=prefix,
        ESFLOW_TOPIC_PARTITIONS=str(PARTITIONS),
        ESFLOW_PROCESSOR_GROUP_ID=f"{prefix}processor",
        ESFLOW_PROCESSOR_INSTANCE_ID=f"{prefix}p0",
        ESFLOW_PROJECTION_DB_SCHEMA=schema,
        ESFLOW_PROJECTION_GROUP_PREFIX=f"{prefix}proj",
        ESFLOW_API_PORT=str(port),
        ESFLOW_API_JWT_PUBLIC_KEY_FILE=str(write_public_key(key, tmp / "api-key.pem")),
        ESFLOW_API_JWT_ISSUER=ISSUER,
        ESFLOW_API_JWT_AUDIENCE=AUDIENCE,
        ESFLOW_API_MAX_DEPTH=str(MAX_DEPTH),
    )
    esflow = [sys.executable, "-m", "esflow"]
    migrate = subprocess.run([*esflow, "db", "migrate"], env=env, capture_output=True, text=True, check=False)
    assert migrate.returncode == 0, migrate.stderr
    logs = {name: tmp / f"{name}.log" for name in ("processor", "projector", "api")}
    procs: list[subprocess.Popen[bytes]] = []
    try:
        processor = _start([*esflow, "processor", "run"], env, logs["processor"])
        procs.append(processor)
        projector = _start([*esflow, "projector", "run", "orders"], env, logs["projector"])
        procs.append(projector)
        server = _start([*esflow, "api", "run"], env, logs["api"])
        procs.append(server)
        url = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            for proc, name in ((processor, "processor"), (projector, "projector"), (server, "api")):
                _alive(proc, logs[name], name)
            with contextlib.suppress(httpx.HTTPError):
                return httpx.get(f"{url}/readyz", timeout=10).status_code == 200
            return False

        eventually(
            ready, timeout=120, interval=0.5, what="the API to be ready (processor assigned)",
            details=lambda: "\n".join(f"--- {n}\n{p.read_text()[-1500:]}" for n, p in logs.items()),
        )  # fmt: skip
        yield Api(url=url, tokens=TokenMaker(key), key_dir=tmp, log=logs["api"], env=env)
    finally:
        for proc in reversed(procs):
            _stop(proc)
        names = [t.name for t in topics.catalogue(settings.topics)]
        for fut in admin.delete_topics(names).values():
            with contextlib.suppress(Exception):
                fut.result(timeout=30)
        drop_installation(services.database_url.replace("+psycopg", ""), schema)


@pytest.fixture
def customer() -> Callable[[], uuid.UUID]:
    """New customer ids."""
    return uuid.uuid4
