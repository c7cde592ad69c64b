"""Test kit for the command processor: isolated topics, command builders, a sender and result readers."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from esflow.domain.account import DepositFunds, OpenAccount, WithdrawFunds
from esflow.domain.messages import Command, CommandEnvelope, CommandMetadata, EventEnvelope
from esflow.domain.values import Money
from esflow.messaging.codec import Codec
from esflow.messaging.kafka import consumer_config, producer_config
from esflow.messaging.results import CommandResult, DeadLetterReport, answer_key, is_report_key
from esflow.messaging.topics import apply, catalogue
from esflow.settings import KafkaSettings, ProcessorSettings, TopicSettings
from tests.support.wait import eventually

CODEC = Codec.from_settings()


@dataclass
class Env:
    """One test's isolated processor world: topic prefix, partitions, group."""

    kafka: KafkaSettings
    topics: TopicSettings
    group_id: str

    def name(self, base: str) -> str:
        return f"{self.topics.prefix}{base}"

    def processor_settings(self, **overrides: Any) -> ProcessorSettings:
        values: dict[str, Any] = {"group_id": self.group_id, "batch_max_ms": 50, "session_timeout_ms": 6000}
        values.update(overrides)
        return ProcessorSettings(**values)

    def env_vars(self) -> dict[str, str]:
        return {
            "ESFLOW_KAFKA_BOOTSTRAP": self.kafka.bootstrap_servers,
            "ESFLOW_TOPIC_PREFIX": self.topics.prefix,
            "ESFLOW_TOPIC_PARTITIONS": str(self.topics.partitions),
            "ESFLOW_PROCESSOR_GROUP_ID": self.group_id,
        }


@contextmanager
def processor_env(kafka: KafkaSettings, admin: AdminClient, partitions: int = 3) -> Iterator[Env]:
    prefix = f"t{uuid.uuid4().hex[:8]}."
    topics = TopicSettings(prefix=prefix, partitions=partitions)
    specs = catalogue(topics)
    apply(admin, specs)
    try:
        yield Env(kafka, topics, f"{prefix}processor")
    finally:
        for fut in admin.delete_topics([s.name for s in specs], operation_timeout=30).values():
            with contextlib.suppress(Exception):  # best-effort cleanup
                fut.result(timeout=30)


def envelope(
    aggregate_id: uuid.UUID,
    command: Command,
    *,
    command_id: uuid.UUID | None = None,
    expected_version: int | None = None,
) -> CommandEnvelope:
    return CommandEnvelope(
        metadata=CommandMetadata(
            command_id=command_id or uuid.uuid4(),
            aggregate_type=command.aggregate_type,
            aggregate_id=aggregate_id,
            correlation_id=uuid.uuid4(),
            expected_version=expected_version,
            issued_at=datetime.now(UTC),
        ),
        command=command,
    )


def eur(amount: str | int) -> Money:
    return Money(amount=Decimal(amount), currency="EUR")


def open_account(owner: uuid.UUID | None = None) -> OpenAccount:
    return OpenAccount(owner_id=owner or uuid.uuid4(), currency="EUR")


def deposit(amount: str | int) -> DepositFunds:
    return DepositFunds(amount=eur(amount))


def withdraw(amount: str | int) -> WithdrawFunds:
    return WithdrawFunds(amount=eur(amount))


class Sender:
    """Publishes command envelopes (or raw bytes) the way a client would: key = aggregate id, murmur2."""

    def __init__(self, env: Env) -> None:
        self.env = env
        self.producer = Producer(producer_config(env.kafka, **{"linger.ms": 1}))

    def send(self, envelopes: Iterable[CommandEnvelope]) -> list[CommandEnvelope]:
        sent = list(envelopes)
        for env in sent:
            topic = self.env.name(f"commands.{env.metadata.aggregate_type}")
            self._produce(topic, CODEC.encode(env, topic=topic), CODEC.key(env), CODEC.headers(env))
        self.producer.flush(30)
        return sent

    def send_raw(
        self,
        aggregate_type: str,
        value: bytes | None,
        key: bytes,
        headers: list[tuple[str, bytes]] | None = None,
        partition: int | None = None,
    ) -> tuple[str, int, int]:
        """Produce raw bytes to a command topic; returns where the broker stored them."""
        where: list[tuple[str, int, int]] = []

        def done(err: Any, msg: Any) -> None:
            assert err is None, err
            where.append((msg.topic(), msg.partition(), msg.offset()))

        topic = self.env.name(f"commands.{aggregate_type}")
        self._produce(topic, value, key, headers or [], on_delivery=done, partition=partition)
        self.producer.flush(30)
        return where[0]

    def _produce(
        self, topic: str, value: bytes | None, key: bytes, headers: list[tuple[str, Any]], **kwargs: Any
    ) -> None:
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        while True:
            try:
                self.producer.produce(topic, value, key, headers=list(headers), **kwargs)
                return
            except BufferError:
                self.producer.poll(0.05)


def read_all(kafka: KafkaSettings, topic: str, *, isolation: str = "read_committed") -> list[Any]:
    """Every message of every partition of ``topic`` up to its current end."""
    consumer = Consumer(
        consumer_config(
            kafka,
            f"reader-{uuid.uuid4().hex}",
            **{"isolation.level": isolation, "enable.partition.eof": True},
        )
    )
    try:
        md = consumer.list_topics(topic, timeout=30)
        parts = [TopicPartition(topic, p, 0) for p in md.topics[topic].partitions]
        pending = set()
        for tp in parts:
            low, high = consumer.get_watermark_offsets(tp, timeout=30)
            if high > low:
                pending.add(tp.partition)
        if not pending:
            return []
        consumer.assign([TopicPartition(topic, p, 0) for p in pending])
        out: list[Any] = []
        deadline = time.monotonic() + 60
        while pending and time.monotonic() < deadline:
            for msg in consumer.consume(1000, 0.5):
                if msg.error() is not None:
                    pending.discard(msg.partition())
                    continue
                out.append(msg)
        return out
    finally:
        consumer.close()


class Results:
    """Follows command-results (read_committed): answers by command id, reports by position, all by key."""

    def __init__(self, env: Env) -> None:
        self.env = env
        self.consumer = Consumer(consumer_config(env.kafka, f"results-{uuid.uuid4().hex}"))
        topic = env.name("command-results")
        md = self.consumer.list_topics(topic, timeout=30)
        self.consumer.assign([TopicPartition(topic, p, 0) for p in md.topics[topic].partitions])
        self.all: list[CommandResult] = []
        self.by_id: dict[uuid.UUID, list[CommandResult]] = {}
        self.reports: dict[tuple[str, int, int], DeadLetterReport] = {}
        self.by_key: dict[bytes, list[bytes]] = {}
        """Every value under every key, in log order (the last is what compaction keeps)."""

    def wait(self, command_ids: Iterable[uuid.UUID], timeout: float = 60) -> dict[uuid.UUID, CommandResult]:
        wanted = set(command_ids)
        eventually(
            lambda: wanted <= self.by_id.keys(),
            timeout=timeout,
            step=lambda: self.poll(0.2),
            what="the command results",
            details=lambda: f"{len(wanted - self.by_id.keys())} of {len(wanted)} results missing",
        )
        return {cid: self.by_id[cid][-1] for cid in wanted}

    def poll(self, timeout: float) -> None:
        for msg in self.consumer.consume(5000, timeout):
            if msg.error() is not None:
                continue
            key, value = msg.key() or b"", msg.value() or b""
            self.by_key.setdefault(key, []).append(value)
            if is_report_key(key):
                report = DeadLetterReport.from_bytes(msg.value() or b"")
                self.reports[(report.topic, report.partition, report.offset)] = report
                continue
            result = CommandResult.from_bytes(msg.value() or b"")
            self.all.append(result)
            self.by_id.setdefault(result.command_id, []).append(result)

    def answer(self, env: CommandEnvelope, timeout: float = 60) -> CommandResult:
        """The latest answer under ``env``'s answer key (its aggregate and command id)."""
        meta = env.metadata
        key = answer_key(meta.aggregate_type, str(meta.aggregate_id), str(meta.command_id))
        deadline = time.monotonic() + timeout
        while key not in self.by_key:
            if time.monotonic() > deadline:
                raise AssertionError(f"no answer under {key!r} after {timeout}s")
            self.poll(0.2)
        return CommandResult.from_bytes(self.by_key[key][-1])

    def report(self, where: tuple[str, int, int], timeout: float = 60) -> DeadLetterReport:
        """The dead-letter report for the record at ``where`` (topic, partition, offset)."""
        deadline = time.monotonic() + timeout
        while where not in self.reports:
            if time.monotonic() > deadline:
                raise AssertionError(f"no dead-letter report for {where} after {timeout}s")
            self.poll(0.2)
        return self.reports[where]

    def one(self, env: CommandEnvelope, timeout: float = 60) -> CommandResult:
        return self.wait([env.metadata.command_id], timeout)[env.metadata.command_id]

    def close(self) -> None:
        self.consumer.close()


def events_of(kafka: KafkaSettings, env: Env, aggregate_type: str) -> list[tuple[Any, EventEnvelope]]:
    msgs = read_all(kafka, env.name(f"events.{aggregate_type}"))
    return [(m, CODEC.decode(m.value(), kind="event")) for m in msgs]
