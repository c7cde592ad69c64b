from __future__ import annotations

from collections.abc import Iterator

import pytest
from confluent_kafka.admin import AdminClient

from esflow.settings import KafkaSettings
from tests.integration.processor.kit import Env, processor_env


@pytest.fixture
def penv(kafka_settings: KafkaSettings, admin: AdminClient) -> Iterator[Env]:
    with processor_env(kafka_settings, admin) as env:
        yield env
