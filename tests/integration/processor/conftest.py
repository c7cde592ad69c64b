from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient

from esflow.settings import KafkaSettings
from processors.processor import Processor
from tests.integration.processor.kit import CODEC, Env, Results, Sender, processor_env


@pytest.fixture
def penv(kafka_settings: KafkaSettings, admin: AdminClient) -> Iterator[Env]:
    with processor_env(kafka_settings, admin) as env:
        yield env


@pytest.fixture
def sender(penv: Env) -> Sender:
    return Sender(penv)


@pytest.fixture
def results(penv: Env) -> Iterator[Results]:
    r = Results(penv)
    yield r
    r.close()


RunningFactory = Callable[..., Processor]


@pytest.fixture
def running(penv: Env) -> Iterator[RunningFactory]:
    """Start processors on threads; all are stopped (gracefully) at the end of the test."""
    started: list[tuple[Processor, threading.Thread]] = []

    def start(**overrides: Any) -> Processor:
        proc = Processor(penv.kafka, penv.topics, penv.processor_settings(**overrides), CODEC)
        thread = threading.Thread(target=proc.run, name=f"processor-{len(started)}", daemon=True)
        thread.start()
        started.append((proc, thread))
        return proc

    yield start
    for proc, _ in started:
        proc.stop()
    for _, thread in started:
        thread.join(60)
