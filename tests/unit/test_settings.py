from __future__ import annotations

import pytest

from esflow.settings import KafkaSettings, PostgresSettings, ProjectionSettings, Settings, StackSettings


def test_defaults_point_at_the_local_stack(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("ESFLOW_KAFKA_BOOTSTRAP", "ESFLOW_DATABASE_URL", "ESFLOW_KAFKA_PORT", "ESFLOW_PG_PORT"):
        monkeypatch.delenv(var, raising=False)
    s = Settings()
    assert s.kafka.bootstrap_servers == "127.0.0.1:9092"
    assert s.postgres.database_url == "postgresql+psycopg://esflow:esflow@127.0.0.1:5432/esflow"
    assert s.stack.stack_dir.parts[-4:] == (".local", "share", "esflow", "stack")


def test_ports_move_the_connection_strings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ESFLOW_KAFKA_BOOTSTRAP", raising=False)
    monkeypatch.delenv("ESFLOW_DATABASE_URL", raising=False)
    monkeypatch.setenv("ESFLOW_KAFKA_PORT", "19092")
    monkeypatch.setenv("ESFLOW_PG_PORT", "15432")
    assert KafkaSettings().bootstrap_servers == "127.0.0.1:19092"
    assert ":15432/" in PostgresSettings().database_url


def test_explicit_services_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ESFLOW_KAFKA_BOOTSTRAP", "broker-a:9092,broker-b:9092")
    monkeypatch.setenv("ESFLOW_DATABASE_URL", "postgresql+psycopg://u:p@db:5432/x")
    assert KafkaSettings().bootstrap_servers == "broker-a:9092,broker-b:9092"
    assert PostgresSettings().database_url == "postgresql+psycopg://u:p@db:5432/x"


def test_stack_dir_from_env(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    monkeypatch.setenv("ESFLOW_STACK_DIR", "/srv/esflow")
    assert str(StackSettings().stack_dir) == "/srv/esflow"


def test_invalid_port_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ESFLOW_KAFKA_PORT", "70000")
    with pytest.raises(ValueError, match="less than or equal to 65535"):
        KafkaSettings()


def test_the_removed_batch_window_is_refused_with_its_replacement(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ESFLOW_PROJECTION_BATCH_WINDOW_S", "0.1")
    with pytest.raises(ValueError, match="BATCH_LINGER_S"):
        ProjectionSettings()
    monkeypatch.delenv("ESFLOW_PROJECTION_BATCH_WINDOW_S")
    assert ProjectionSettings().batch_linger_s == 0.005
