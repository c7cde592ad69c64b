"""Thin confluent-kafka helpers: client configuration in one place, from the settings.

Two traps are closed here for every client, by setting both explicitly: librdkafka's default partitioner
is not the murmur2 of Java, aiokafka and Faust, so keys would land on other partitions (docs/domain.md,
"Topic, value, key and partition"); and isolation levels differ between client libraries (README.md,
"The projections").
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition, murmur2
from confluent_kafka.admin import AdminClient

from esflow.errors import BrokerUnavailable, KafkaOperationError
from esflow.settings import KafkaSettings

# Java, aiokafka and Faust hash keys with murmur2; librdkafka must too, or keys land elsewhere.
PARTITIONER = "murmur2_random"


def common_config(kafka: KafkaSettings) -> dict[str, Any]:
    """Settings every esflow client shares, security (TLS/SASL) included."""
    return {
        "bootstrap.servers": kafka.bootstrap_servers,
        "client.id": "esflow",
        **kafka.librdkafka_security(),
    }


def faust_credentials(kafka: KafkaSettings) -> Any:
    """The same TLS/SASL settings as Faust ``broker_credentials`` (None for PLAINTEXT)."""
    if kafka.security_protocol == "PLAINTEXT":
        return None
    import ssl

    import faust

    context: ssl.SSLContext | None = None
    if kafka.uses_tls:
        context = ssl.create_default_context(
            cafile=str(kafka.ssl_ca_location) if kafka.ssl_ca_location else None
        )
        if kafka.ssl_certificate_location is not None:
            key_password = kafka.ssl_key_password.get_secret_value() if kafka.ssl_key_password else None
            context.load_cert_chain(
                str(kafka.ssl_certificate_location),
                str(kafka.ssl_key_location) if kafka.ssl_key_location else None,
                key_password,
            )
    if not kafka.uses_sasl:
        return faust.SSLCredentials(context)
    password = kafka.sasl_password.get_secret_value() if kafka.sasl_password else None
    return faust.SASLCredentials(
        username=kafka.sasl_username, password=password, ssl_context=context, mechanism=kafka.sasl_mechanism
    )


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


def admin_client(kafka: KafkaSettings, **overrides: Any) -> AdminClient:
    """An AdminClient for the configured cluster (``overrides``: librdkafka properties)."""
    return AdminClient({**common_config(kafka), **overrides})


def partition_for(key: bytes, partitions: int) -> int:
    """The partition Java clients, Faust and our producers (murmur2) put ``key`` on.

    librdkafka's own murmur2 (the one ``murmur2_random`` uses), so producer and checker cannot drift;
    tests/unit/processor/test_partitioning.py holds it to Kafka's Java test vectors.
    """
    return int(murmur2(key, partitions))


_SETTLING = {
    KafkaError.NOT_LEADER_FOR_PARTITION,
    KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.UNKNOWN_TOPIC_OR_PART,
    KafkaError._UNKNOWN_PARTITION,
    KafkaError._TIMED_OUT,
    KafkaError._TRANSPORT,
}
"""Errors that metadata settling (new topics, leader moves, restarts) clears without anyone acting."""


def watermarks(consumer: Consumer, topic: str, partition: int, *, timeout_s: float = 30.0) -> tuple[int, int]:
    """Low and high watermark of a partition, retrying while leadership settles.

    Right after a topic is created (or a broker restarts) metadata can name a leader that does not yet
    know it leads, or none yet: the broker answers NOT_LEADER_FOR_PARTITION or LEADER_NOT_AVAILABLE, and a
    fresh topic can still be unknown to the broker asked; all of these settle by themselves.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=timeout_s)
            return int(low), int(high)
        except KafkaException as exc:
            err = exc.args[0]
            if not err.retriable() and err.code() not in _SETTLING:
                raise KafkaOperationError(f"watermarks of {topic}[{partition}]: {err.str()}") from exc
            if time.monotonic() > deadline:
                raise BrokerUnavailable(f"no leader answered for {topic}[{partition}]: {err.str()}") from exc
            time.sleep(0.1)


def read_to_end(
    kafka: KafkaSettings,
    topic: str,
    partitions: list[int] | None = None,
    *,
    key: bytes | None = None,
    timeout_s: float = 30.0,
) -> Iterator[Message]:
    """Every committed message of ``topic`` (or of some of its partitions) up to the current end.

    ``key`` limits the read to the one partition that key hashes to (the topic's real partition count
    decides, not a setting).

    Uses manual assignment and no consumer group, so it reads without joining or committing anything.
    "The end" is the high-water mark when the call starts; read_committed stops at the last stable
    offset, so a transaction left open longer than ``timeout_s`` raises instead of hanging.
    """
    consumer = Consumer(
        consumer_config(kafka, f"esflow-reader-{uuid.uuid4().hex[:8]}", **{"enable.partition.eof": True})
    )
    try:
        md = consumer.list_topics(topic, timeout=timeout_s)
        meta = md.topics.get(topic)
        if meta is None or meta.error is not None:
            raise KafkaOperationError(f"topic {topic} does not exist", hint="run `esflow topics apply`")
        wanted = sorted(meta.partitions) if partitions is None else partitions
        if key is not None:
            wanted = [partition_for(key, len(meta.partitions))]
        ends: dict[int, int] = {}
        for p in wanted:
            low, high = watermarks(consumer, topic, p, timeout_s=timeout_s)
            if high > low:
                ends[p] = high
        if not ends:
            return
        consumer.assign([TopicPartition(topic, p, 0) for p in ends])
        deadline = time.monotonic() + timeout_s
        pending = set(ends)
        while pending:
            msg = consumer.poll(0.5)
            if msg is None:
                if time.monotonic() > deadline:
                    raise BrokerUnavailable(f"reading {topic} did not reach its end within {timeout_s:.0f}s")
                continue
            p = msg.partition() or 0
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:  # at the last stable offset
                    pending.discard(p)
                    continue
                raise KafkaOperationError(f"reading {topic}[{p}]: {err.str()}")
            deadline = time.monotonic() + timeout_s
            if (msg.offset() or 0) >= ends[p] - 1:
                pending.discard(p)
            if (msg.offset() or 0) < ends[p]:
                yield msg
    finally:
        consumer.close()
