"""Thin confluent-kafka helpers: client configuration in one place, from the settings.

The traps these defaults close are listed in DEVELOPERS.md: librdkafka's default partitioner differs
from Java's, and isolation levels differ between client libraries, so both are always set explicitly.
"""

from __future__ import annotations

from typing import Any

from confluent_kafka.admin import AdminClient

from esflow.settings import KafkaSettings

# Java, aiokafka and Faust hash keys with murmur2; librdkafka must too, or keys land elsewhere.
PARTITIONER = "murmur2_random"


def common_config(kafka: KafkaSettings) -> dict[str, Any]:
    """Settings every esflow client shares."""
    return {"bootstrap.servers": kafka.bootstrap_servers, "client.id": "esflow"}


def producer_config(kafka: KafkaSettings, **overrides: Any) -> dict[str, Any]:
    """An idempotent, acks=all producer that partitions like Java clients."""
    return {
        **common_config(kafka),
        "enable.idempotence": True,
        "acks": "all",
        "partitioner": PARTITIONER,
        "linger.ms": 5,
        **overrides,
    }


def transactional_producer_config(
    kafka: KafkaSettings, transactional_id: str, **overrides: Any
) -> dict[str, Any]:
    """A transactional producer (EOS): ``transactional_id`` must be stable per processing instance."""
    return producer_config(kafka, **{"transactional.id": transactional_id, **overrides})


def consumer_config(kafka: KafkaSettings, group_id: str, **overrides: Any) -> dict[str, Any]:
    """A consumer that only sees committed transactional data and commits offsets explicitly."""
    return {
        **common_config(kafka),
        "group.id": group_id,
        "isolation.level": "read_committed",
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        **overrides,
    }


def admin_client(kafka: KafkaSettings) -> AdminClient:
    """An AdminClient for the configured cluster."""
    return AdminClient(common_config(kafka))
