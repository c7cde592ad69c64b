"""docker-compose.yml agrees with the settings (CI also runs it: ops/images/compose_check.py)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from esflow.cli import cli
from esflow.settings import ApiSettings, ImageSettings, KafkaSettings, PostgresSettings

ROOT = Path(__file__).resolve().parents[2]
_VAR = re.compile(r"\$\{(?P<name>[A-Z0-9_]+)(?::-(?P<default>[^}]*))?\}")


def _interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's ${VAR:-default} substitution, enough to check the defaults."""
    if isinstance(value, str):
        return _VAR.sub(lambda m: env.get(m["name"], m["default"] or ""), value)
    if isinstance(value, list):
        return [_interpolate(v, env) for v in value]
    if isinstance(value, dict):
        return {k: _interpolate(v, env) for k, v in value.items()}
    return value


Compose = tuple[dict[str, Any], dict[str, str]]
MOVED = {
    "ESFLOW_KAFKA_PORT": "19092",
    "ESFLOW_KAFKA_CONTROLLER_PORT": "19093",
    "ESFLOW_PG_PORT": "15432",
    "ESFLOW_IMAGE_KAFKA": "esflow-local/kafka:4.3.1",
    "ESFLOW_IMAGE_POSTGRES": "esflow-local/postgres:15",
    "ESFLOW_IMAGE_ESFLOW": "esflow-local/esflow:dev",
}


@pytest.fixture(params=[{}, MOVED], ids=["defaults", "moved"])
def compose(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Compose:
    env: dict[str, str] = request.param
    for var in ("ESFLOW_KAFKA_BOOTSTRAP", "ESFLOW_DATABASE_URL", *MOVED):
        monkeypatch.delenv(var, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return _interpolate(yaml.safe_load((ROOT / "docker-compose.yml").read_text()), env), env


def test_kafka_matches_the_local_stack(compose: Compose) -> None:
    doc, _ = compose
    kafka = KafkaSettings()
    svc = doc["services"]["kafka"]
    assert svc["image"] == ImageSettings().kafka
    # Host networking: the broker listens where the local stack's would, nothing is published.
    assert svc["network_mode"] == "host" and "ports" not in svc
    env = svc["environment"]
    assert env["KAFKA_ADVERTISED_LISTENERS"] == f"PLAINTEXT://{kafka.bootstrap_servers}"
    assert f"CONTROLLER://{kafka.host}:{kafka.node_controller_port(1)}" in env["KAFKA_LISTENERS"]
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"1@{kafka.host}:{kafka.node_controller_port(1)}"
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert env["KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS"] == 0
    for key in (
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR",
    ):
        assert env[key] == 1
    # Every listener named in LISTENERS has a protocol and is advertised (but the controller).
    names = {part.split("://")[0] for part in env["KAFKA_LISTENERS"].split(",")}
    mapped = {part.split(":")[0] for part in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(",")}
    advertised = {part.split("://")[0] for part in env["KAFKA_ADVERTISED_LISTENERS"].split(",")}
    assert names <= mapped
    assert advertised == names - {env["KAFKA_CONTROLLER_LISTENER_NAMES"]}
    assert f"127.0.0.1:{kafka.port}" in svc["healthcheck"]["test"][1]


def test_postgres_matches_the_settings(compose: Compose) -> None:
    doc, _ = compose
    pg = PostgresSettings()
    svc = doc["services"]["postgres"]
    assert svc["image"] == ImageSettings().postgres
    assert svc["network_mode"] == "host" and "ports" not in svc
    assert f"port={pg.port}" in svc["command"]
    assert f"listen_addresses={pg.host}" in svc["command"]
    env = svc["environment"]
    assert (env["POSTGRES_USER"], env["POSTGRES_PASSWORD"], env["POSTGRES_DB"]) == (
        pg.user,
        pg.password,
        pg.database,
    )


def test_esflow_services_are_behind_a_profile_and_use_real_commands(
    compose: Compose,
) -> None:
    doc, _ = compose
    esflow_services = {name: svc for name, svc in doc["services"].items() if name.startswith("esflow-")}
    assert esflow_services
    known = set(cli.list_commands(None))  # type: ignore[arg-type]
    kafka, pg = KafkaSettings(), PostgresSettings()
    for name, svc in esflow_services.items():
        assert svc["profiles"] == ["pipeline"], name
        assert svc["image"] == ImageSettings().esflow, name
        assert svc["network_mode"] == "host", name
        assert svc["command"][0] == "esflow" and svc["command"][1] in known, name
        assert svc["environment"]["ESFLOW_KAFKA_BOOTSTRAP"] == kafka.bootstrap_servers
        assert svc["environment"]["ESFLOW_DATABASE_URL"] == pg.database_url
        assert set(svc["depends_on"]) == {"kafka", "postgres"}


def test_api_service_matches_the_api_settings(compose: Compose) -> None:
    doc, _ = compose
    svc = doc["services"]["esflow-api"]
    assert svc["command"] == ["esflow", "api", "run"]
    api = ApiSettings()
    environment = svc["environment"]
    assert int(environment["ESFLOW_API_PORT"]) == api.port
    assert environment["ESFLOW_API_HOST"] == "127.0.0.1"
    assert (environment["ESFLOW_API_JWT_ISSUER"], environment["ESFLOW_API_JWT_AUDIENCE"]) == (
        api.jwt_issuer,
        api.jwt_audience,
    )
    # The key file the API reads is the one the bind mount puts in the container.
    (mount,) = svc["volumes"]
    assert mount["type"] == "bind" and mount["read_only"] is True
    assert mount["target"] == environment["ESFLOW_API_JWT_PUBLIC_KEY_FILE"]
