"""send_and_wait against the real broker, with a scripted responder standing in for the processor.

The responder answers on ``command-results`` exactly as the processor's contract says (JSON
:class:`CommandResult` under the answer key, or a :class:`DeadLetterReport` under the key of the record's
position, written in a transaction); the processor's own tests cover the real thing. Here the subject is
the SDK: it must see every result meant for it, only committed ones, never a report about another record
that merely claims its command id, and time out cleanly.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient

from esflow.client.sender import AsyncCommandClient, CommandClient
from esflow.domain.account import DepositFunds, OpenAccount, WithdrawFunds
from esflow.errors import ResultTimeout
from esflow.messaging import topics
from esflow.messaging.codec import Codec
from esflow.messaging.kafka import consumer_config, transactional_producer_config
from esflow.messaging.results import CommandResult, DeadLetterReport, EventRef, answer_key, report_key
from esflow.settings import KafkaSettings, Settings, TopicSettings


@pytest.fixture
def settings(
    kafka_settings: KafkaSettings, admin: AdminClient, unique: Callable[[str], str]
) -> Iterator[Settings]:
    s = Settings(kafka=kafka_settings, topics=TopicSettings(prefix=unique("wait") + ".", partitions=2))
    topics.apply(admin, topics.catalogue(s.topics))
    yield s
    for fut in admin.delete_topics([t.name for t in topics.catalogue(s.topics)]).values():
        fut.result(timeout=30)


class Responder(threading.Thread):
    """Answers OpenAccount with accepted, WithdrawFunds with rejected, DepositFunds with a dead-letter
    report at its position; before each, aborts a decoy answer and commits a report about another
    position that claims the same command id."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(daemon=True)
        self.settings = settings
        self.stop = threading.Event()
        self.codec = Codec.from_settings(settings.schemas)

    def run(self) -> None:
        consumer = Consumer(consumer_config(self.settings.kafka, f"responder-{uuid.uuid4().hex[:6]}"))
        consumer.subscribe([topics.command_topic("account", self.settings.topics)])
        producer = Producer(transactional_producer_config(self.settings.kafka, f"responder-{uuid.uuid4()}"))
        producer.init_transactions(30)
        out = topics.results_topic(self.settings.topics)
        while not self.stop.is_set():
            msg = consumer.poll(0.2)
            if msg is None or msg.error():
                continue
            env = self.codec.decode(msg.value() or b"", kind="command")
            cid = env.metadata.command_id
            decoy = CommandResult(
                command_id=cid, status="rejected", reason="decoy", processed_at=datetime.now(UTC)
            )
            key = answer_key("account", str(env.metadata.aggregate_id), str(cid))
            producer.begin_transaction()
            producer.produce(out, key=key, value=decoy.to_bytes())
            producer.flush(10)
            producer.abort_transaction(10)  # a read_committed client must never see this one
            topic, partition, offset = msg.topic() or "", msg.partition() or 0, msg.offset() or 0
            elsewhere = self._report(topic, partition, offset + 1000, cid, "forged")
            producer.begin_transaction()
            producer.produce(out, key=report_key(topic, partition, offset + 1000), value=elsewhere.to_bytes())
            producer.commit_transaction(10)  # about another record: the SDK must not take it as ours
            if isinstance(env.command, DepositFunds):
                report = self._report(topic, partition, offset, cid, "invalid_command")
                producer.begin_transaction()
                producer.produce(out, key=report_key(topic, partition, offset), value=report.to_bytes())
                producer.commit_transaction(10)
                continue
            if isinstance(env.command, OpenAccount):
                result = CommandResult(
                    command_id=cid,
                    status="accepted",
                    aggregate_type="account",
                    aggregate_id=str(env.metadata.aggregate_id),
                    version=1,
                    events=(EventRef(event_id=uuid.uuid4(), type="AccountOpened", aggregate_version=1,
                                     topic="events.account", partition=0, offset=41),),
                    processed_at=datetime.now(UTC),
                )  # fmt: skip
            else:
                result = CommandResult(
                    command_id=cid, status="rejected", reason="insufficient_funds",
                    message="balance 0.00 < 5.00", processed_at=datetime.now(UTC),
                )  # fmt: skip
            producer.begin_transaction()
            producer.produce(out, key=key, value=result.to_bytes())
            producer.commit_transaction(10)
        consumer.close()

    @staticmethod
    def _report(topic: str, partition: int, offset: int, claimed: uuid.UUID, reason: str) -> DeadLetterReport:
        return DeadLetterReport(
            reason=reason, message=reason, topic=topic, partition=partition, offset=offset,
            aggregate_type="account", claimed_command_id=claimed, processed_at=datetime.now(UTC),
        )  # fmt: skip


@pytest.fixture
def responder(settings: Settings) -> Iterator[Responder]:
    r = Responder(settings)
    r.start()
    yield r
    r.stop.set()
    r.join(10)


def test_accepted_and_rejected_results(settings: Settings, responder: Responder) -> None:
    with CommandClient(settings) as client:
        accepted = client.send_and_wait(OpenAccount(owner_id=uuid.uuid4(), currency="EUR"), timeout=30)
        assert accepted.status == "accepted"
        assert accepted.version == 1
        assert accepted.events[0].offset == 41
        withdraw = WithdrawFunds.model_validate({"amount": {"amount": "5.00", "currency": "EUR"}})
        rejected = client.send_and_wait(withdraw, uuid.UUID(accepted.aggregate_id or ""), timeout=30)
        assert (rejected.status, rejected.reason) == ("rejected", "insufficient_funds")

        from esflow.client.commands import envelope

        # Dead-lettered: the report for the record's own position, not the forged one about another.
        deposit = DepositFunds.model_validate({"amount": {"amount": "5.00", "currency": "EUR"}})
        refused = client.send_and_wait(deposit, uuid.UUID(accepted.aggregate_id or ""), timeout=30)
        assert (refused.status, refused.reason) == ("rejected", "invalid_command")

        envs = [envelope(OpenAccount(owner_id=uuid.uuid4(), currency="EUR")) for _ in range(300)]
        results = client.send_many_and_wait(envs, timeout=60)
        assert [r.command_id for r in results] == [e.metadata.command_id for e in envs]
        assert {r.status for r in results} == {"accepted"}


def test_async_send_and_wait(settings: Settings, responder: Responder) -> None:
    async def go() -> CommandResult:
        async with AsyncCommandClient(settings) as client:
            return await client.send_and_wait(OpenAccount(owner_id=uuid.uuid4(), currency="EUR"), timeout=30)

    assert asyncio.run(go()).status == "accepted"


def test_no_processor_means_a_timeout(settings: Settings) -> None:
    with (
        CommandClient(settings) as client,
        pytest.raises(ResultTimeout, match="no result for 1 of 1 commands"),
    ):
        client.send_and_wait(OpenAccount(owner_id=uuid.uuid4(), currency="EUR"), timeout=2)
