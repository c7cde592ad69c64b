"""The SDK and CLI against the real broker: what lands on the command topics, and how failures look."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from esflow.client.commands import envelope
from esflow.client.sender import AsyncCommandClient, CommandClient
from esflow.domain.account import AccountOpened, DepositFunds, FundsDeposited, OpenAccount
from esflow.domain.messages import EventEnvelope, EventMetadata
from esflow.errors import DeliveryFailed
from esflow.messaging import topics
from esflow.messaging.codec import HEADER_TYPE, Codec
from esflow.messaging.kafka import partition_for, producer_config, read_to_end
from esflow.settings import KafkaSettings, Settings, TopicSettings
from tests.support.services import Services

PARTITIONS = 3


@pytest.fixture
def settings(
    kafka_settings: KafkaSettings, admin: AdminClient, unique: Callable[[str], str]
) -> Iterator[Settings]:
    prefix = unique("sdk") + "."
    s = Settings(kafka=kafka_settings, topics=TopicSettings(prefix=prefix, partitions=PARTITIONS))
    topics.apply(admin, topics.catalogue(s.topics))
    yield s
    names = [t.name for t in topics.catalogue(s.topics)]
    for fut in admin.delete_topics(names).values():
        fut.result(timeout=30)


def _open(owner: uuid.UUID | None = None) -> OpenAccount:
    return OpenAccount(owner_id=owner or uuid.uuid4(), currency="EUR")


def test_send_lands_keyed_by_aggregate_on_the_murmur2_partition(settings: Settings) -> None:
    codec = Codec.from_settings(settings.schemas)
    with CommandClient(settings) as client:
        receipts = [client.send(_open()) for _ in range(20)]
        deposit = client.send(
            DepositFunds.model_validate({"amount": {"amount": "12.30", "currency": "EUR"}}),
            receipts[0].aggregate_id,
            expected_version=1,
        )
    topic = topics.command_topic("account", settings.topics)
    assert {r.topic for r in receipts} == {topic}
    by_id = {}
    for msg in read_to_end(settings.kafka, topic):
        env = codec.decode(msg.value() or b"", kind="command")
        assert msg.key() == str(env.metadata.aggregate_id).encode()
        assert msg.partition() == partition_for(msg.key() or b"", PARTITIONS)
        assert dict(msg.headers() or [])[HEADER_TYPE] == env.command.type_name().encode()
        by_id[env.metadata.command_id] = (env, msg.partition(), msg.offset())
    assert set(by_id) == {r.command_id for r in [*receipts, deposit]}
    env, partition, offset = by_id[deposit.command_id]
    assert (partition, offset) == (deposit.partition, deposit.offset)
    assert env.metadata.expected_version == 1
    assert str(env.command.model_dump()["amount"]["amount"]) == "12.30"


def test_async_and_bulk_sends(settings: Settings) -> None:
    async def go() -> int:
        async with AsyncCommandClient(settings) as client:
            one = await client.send(_open())
            many = await client.send_many([envelope(_open()) for _ in range(200)])
            return len({one.command_id, *(r.command_id for r in many)})

    assert asyncio.run(go()) == 201
    with CommandClient(settings) as client:
        receipts = client.send_many([envelope(_open()) for _ in range(1000)])
    assert len({r.command_id for r in receipts}) == 1000
    assert (
        sum(1 for _ in read_to_end(settings.kafka, topics.command_topic("account", settings.topics))) == 1201
    )


def test_unreachable_broker_is_a_typed_error(settings: Settings) -> None:
    dead = settings.model_copy(update={"kafka": KafkaSettings(bootstrap="127.0.0.1:1")})
    client = CommandClient(dead, delivery_timeout_s=1.5)
    with pytest.raises(DeliveryFailed, match="did not acknowledge OpenAccount"):
        client.send(_open())


def _cli(services: Services, settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = services.subprocess_env()
    env["ESFLOW_TOPIC_PREFIX"] = settings.topics.prefix
    env["ESFLOW_TOPIC_PARTITIONS"] = str(PARTITIONS)
    return subprocess.run(
        [sys.executable, "-m", "esflow", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_cli_file_sends_good_lines_and_reports_bad_ones(
    services: Services, settings: Settings, tmp_path: Path
) -> None:
    owner = str(uuid.uuid4())
    lines = [
        json.dumps({"type": "OpenAccount", "owner_id": owner, "currency": "EUR"}),
        "{not json",
        json.dumps({"type": "OpenAccount", "owner_id": owner, "currency": "euro"}),
        json.dumps({"type": "Frobnicate"}),
        json.dumps({"owner_id": owner, "currency": "USD"}),
    ]
    path = tmp_path / "cmds.jsonl"
    path.write_text("\n".join(lines) + "\n")
    proc = _cli(services, settings, "send", "OpenAccount", "--file", str(path))
    assert proc.returncode == 1
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("esflow: error:")]
    assert [e.split(": ", 3)[2] for e in errors] == ["cmds.jsonl:2", "cmds.jsonl:3", "cmds.jsonl:4"]
    assert "currency: String should match pattern" in errors[1]
    assert "'Frobnicate' is not a command type" in errors[2]
    assert "sent 2 (OpenAccount 2); invalid 3" in proc.stderr
    receipts = [json.loads(ln) for ln in proc.stdout.splitlines()]
    assert len(receipts) == 2
    assert "Traceback" not in proc.stderr


def test_cli_one_line_errors(services: Services, settings: Settings) -> None:
    bad_json = _cli(services, settings, "send", "OpenAccount", "--json", '{"owner_id": ')
    assert bad_json.returncode == 1
    assert bad_json.stderr.strip() == "esflow: error: invalid JSON: Expecting value (column 14)"
    wrong_type = _cli(
        services, settings, "send", "DepositFunds", "--json", '{"aggregate_id": "x", "amount": 5}'
    )
    assert wrong_type.returncode == 1
    line = wrong_type.stderr.strip()
    assert "\n" not in line and "aggregate_id: not a UUID" in line
    assert 'amount: expected money as {"amount": "12.50", "currency": "EUR"}, got 5' in line


def test_history_reads_one_aggregate_in_version_order(services: Services, settings: Settings) -> None:
    """Hand-produced events (the processor is another deployable): history must show exactly them."""
    codec = Codec.from_settings(settings.schemas)
    topic = topics.event_topic("account", settings.topics)
    target, other = uuid.uuid4(), uuid.uuid4()
    producer = Producer(producer_config(settings.kafka))

    def event(agg: uuid.UUID, version: int, body: object) -> EventEnvelope:
        cid = uuid.uuid4()
        meta = EventMetadata(
            event_id=uuid.uuid4(), aggregate_type="account", aggregate_id=agg, aggregate_version=version,
            occurred_at=datetime.now(UTC), command_id=cid, correlation_id=cid, causation_id=cid,
        )  # fmt: skip
        return EventEnvelope(metadata=meta, event=body)

    opened = AccountOpened(owner_id=uuid.uuid4(), currency="EUR")
    envs = [event(target, 1, opened), event(other, 1, opened)]
    envs += [
        event(target, v, FundsDeposited.model_validate({"amount": {"amount": f"{v}.00", "currency": "EUR"}}))
        for v in range(2, 6)
    ]
    for env in envs:
        producer.produce(topic, key=codec.key(env), value=codec.encode(env, topic=topic))
    assert producer.flush(30) == 0

    proc = _cli(services, settings, "aggregate", "history", "account", str(target), "--json")
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(ln) for ln in proc.stdout.splitlines()]
    assert [r["metadata"]["aggregate_version"] for r in rows] == [1, 2, 3, 4, 5]
    assert [r["type"] for r in rows] == ["AccountOpened"] + ["FundsDeposited"] * 4
    assert {r["metadata"]["aggregate_id"] for r in rows} == {str(target)}

    table = _cli(services, settings, "aggregate", "history", "account", str(target))
    assert table.returncode == 0 and len(table.stdout.splitlines()) == 6

    missing = _cli(services, settings, "aggregate", "history", "account", str(uuid.uuid4()))
    assert missing.returncode == 1 and missing.stderr.startswith("esflow: error: no events for account")
