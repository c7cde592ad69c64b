"""The broker is real: aborted transactions are invisible to read_committed consumers.

Each test also reads with read_uncommitted and must see the aborted records there, which proves the
aborted records really reached the log (the test would pass vacuously otherwise).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from confluent_kafka import Consumer, Producer

from esflow.messaging.kafka import consumer_config, transactional_producer_config
from esflow.settings import KafkaSettings

ABORTED = [f"aborted-{i}".encode() for i in range(5)]
COMMITTED = [f"committed-{i}".encode() for i in range(3)]


def _confluent_read(kafka: KafkaSettings, topic: str, isolation: str, expect_at_least: int) -> list[bytes]:
    consumer = Consumer(
        consumer_config(kafka, f"reader-{uuid.uuid4().hex[:8]}", **{"isolation.level": isolation})
    )
    consumer.subscribe([topic])
    seen: list[bytes] = []
    idle = 0
    try:
        # Read until the committed marker arrives and a few empty polls follow.
        while idle < 1 or len(seen) < expect_at_least:
            msg = consumer.poll(1.0)
            if msg is None:
                idle += 1
                if idle > 30:
                    break
                continue
            if msg.error():
                raise AssertionError(msg.error())
            seen.append(msg.value() or b"")
    finally:
        consumer.close()
    return seen


async def _aiokafka_read(
    kafka: KafkaSettings, topic: str, isolation: str, expect_at_least: int
) -> list[bytes]:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=kafka.bootstrap_servers,
        group_id=f"reader-{uuid.uuid4().hex[:8]}",
        isolation_level=isolation,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    seen: list[bytes] = []
    try:
        idle = 0
        while idle < 1 or len(seen) < expect_at_least:
            batch = await consumer.getmany(timeout_ms=1000)
            records = [r for rs in batch.values() for r in rs]
            if not records:
                idle += 1
                if idle > 30:
                    break
            seen.extend(r.value for r in records if r.value is not None)
    finally:
        await consumer.stop()
    return seen


def _produce_confluent(kafka: KafkaSettings, topic: str) -> None:
    producer = Producer(transactional_producer_config(kafka, f"txn-test-{uuid.uuid4().hex[:8]}"))
    producer.init_transactions(30)
    producer.begin_transaction()
    for value in ABORTED:
        producer.produce(topic, key=b"k", value=value)
    producer.flush(30)  # the records are on the broker, only the commit marker is missing
    producer.abort_transaction(30)
    producer.begin_transaction()
    for value in COMMITTED:
        producer.produce(topic, key=b"k", value=value)
    producer.commit_transaction(30)


async def _produce_aiokafka(kafka: KafkaSettings, topic: str) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka.bootstrap_servers,
        transactional_id=f"txn-test-{uuid.uuid4().hex[:8]}",
        enable_idempotence=True,
    )
    await producer.start()
    try:
        await producer.begin_transaction()
        for value in ABORTED:
            await producer.send_and_wait(topic, key=b"k", value=value)
        await producer.abort_transaction()
        async with producer.transaction():
            for value in COMMITTED:
                await producer.send(topic, key=b"k", value=value)
    finally:
        await producer.stop()


@pytest.mark.parametrize("producer_lib", ["confluent-kafka", "aiokafka"])
def test_aborted_transaction_is_invisible_to_read_committed(
    kafka_settings: KafkaSettings, topic_factory: Callable[..., str], producer_lib: str
) -> None:
    topic = topic_factory("txn")
    if producer_lib == "confluent-kafka":
        _produce_confluent(kafka_settings, topic)
    else:
        asyncio.run(_produce_aiokafka(kafka_settings, topic))

    # confluent-kafka (librdkafka)
    assert _confluent_read(kafka_settings, topic, "read_committed", len(COMMITTED)) == COMMITTED
    assert _confluent_read(kafka_settings, topic, "read_uncommitted", len(ABORTED) + len(COMMITTED)) == (
        ABORTED + COMMITTED
    )
    # aiokafka (what Faust uses underneath)
    assert asyncio.run(_aiokafka_read(kafka_settings, topic, "read_committed", len(COMMITTED))) == COMMITTED
    assert asyncio.run(
        _aiokafka_read(kafka_settings, topic, "read_uncommitted", len(ABORTED) + len(COMMITTED))
    ) == (ABORTED + COMMITTED)
