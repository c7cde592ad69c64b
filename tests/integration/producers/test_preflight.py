"""Preflight checks on the real broker and database: a missing processor or projection is named at once."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
from confluent_kafka import Consumer

from esflow.client.preflight import ServiceNotRunning, require_processor
from esflow.messaging.kafka import consumer_config
from esflow.query.consistency import require_projection
from esflow.readmodel import versions
from esflow.readmodel.store import create_engine
from esflow.settings import KafkaSettings, PostgresSettings, ProcessorSettings, ProjectionSettings, Settings
from projections.registry import PROJECTIONS
from tests.support.services import Services


@pytest.fixture
def member(
    kafka_settings: KafkaSettings, topic_factory: Callable[..., str], unique: Callable[[str], str]
) -> Iterator[tuple[str, str]]:
    """A consumer group with one member holding a topic's partitions: (group, topic)."""
    topic = topic_factory("commands", partitions=2)
    group = unique("processor")
    consumer = Consumer(consumer_config(kafka_settings, group))
    consumer.subscribe([topic])
    deadline = time.monotonic() + 60
    while not consumer.assignment():
        assert time.monotonic() < deadline, "the member was never assigned its partitions"
        consumer.poll(0.2)
    yield group, topic
    consumer.close()


def _settings(kafka: KafkaSettings, group: str) -> Settings:
    return Settings(kafka=kafka, processor=ProcessorSettings(group_id=group))


def test_a_group_without_members_fails_within_seconds(
    kafka_settings: KafkaSettings, unique: Callable[[str], str]
) -> None:
    with pytest.raises(ServiceNotRunning, match="no command processor is running"):
        require_processor(_settings(kafka_settings, unique("nobody")), ["commands.account"])


def test_a_member_holding_the_topic_passes_and_one_elsewhere_does_not(
    kafka_settings: KafkaSettings, member: tuple[str, str]
) -> None:
    group, topic = member
    require_processor(_settings(kafka_settings, group), [topic])
    with pytest.raises(ServiceNotRunning, match=r"does not read commands\.elsewhere"):
        require_processor(_settings(kafka_settings, group), [topic, "commands.elsewhere"])


def test_send_wait_without_processor_exits_at_once(services: Services, unique: Callable[[str], str]) -> None:
    env = services.subprocess_env()
    env["ESFLOW_PROCESSOR_GROUP_ID"] = unique("nobody")
    body = json.dumps({"owner_id": str(uuid.uuid4()), "currency": "EUR"})
    # A result timeout far beyond the subprocess's own: waiting for a result instead of failing up
    # front would end in TimeoutExpired, whatever the machine's load (no wall-clock bound here).
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "esflow",
            "send",
            "OpenAccount",
            "--wait",
            "--timeout",
            "3600",
            "--json",
            body,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "no command processor is running" in lines[0], done.stderr
    assert done.stdout == ""


def test_projection_names_are_checked_against_the_registry(
    pg_settings: PostgresSettings, pg_schema: str
) -> None:
    layout = versions.Layout(pg_schema)
    engine = create_engine(pg_settings, pg_schema)
    try:
        versions.install(engine, layout, [PROJECTIONS["event_log"]()])
    finally:
        engine.dispose()
    settings = Settings(postgres=pg_settings, projections=ProjectionSettings(db_schema=pg_schema))
    require_projection(settings, "event_log")
    with pytest.raises(ServiceNotRunning) as err:
        require_projection(settings, "event_logg")
    assert err.value.one_line() == "unknown projection 'event_logg' (known: event_log)"
