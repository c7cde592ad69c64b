"""Accepted and rejected flows per aggregate, duplicates, version conflicts, dead letters — one processor."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient

from esflow.domain.messages import CommandEnvelope
from esflow.domain.order import (
    CancelOrder,
    ConfirmOrder,
    DeliverOrder,
    MarkOrderPaid,
    OrderPlaced,
    PlaceOrder,
    ShipOrder,
)
from esflow.domain.product import DiscontinueProduct, ReceiveStock, RegisterProduct, ReserveStock
from esflow.domain.transfer import (
    CompleteTransfer,
    FailTransfer,
    RequestTransfer,
    TransferFailed,
    TransferRequested,
)
from esflow.domain.values import Address, OrderItem
from esflow.messaging.codec import HEADER_ID
from esflow.messaging.deadletters import DLQ_OFFSET, DLQ_PARTITION, DLQ_REASON, DLQ_TOPIC
from esflow.messaging.kafka import partition_for
from esflow.messaging.results import CommandResult, answer_key, is_report_key
from esflow.settings import KafkaSettings
from processors.processor import Processor
from tests.integration.processor.kit import (
    CODEC,
    Env,
    Results,
    Sender,
    deposit,
    envelope,
    eur,
    events_of,
    open_account,
    processor_env,
    read_all,
    withdraw,
)


@dataclass
class World:
    env: Env
    sender: Sender
    results: Results
    processor: Processor

    def run(self, *envelopes: CommandEnvelope) -> list[CommandResult]:
        self.sender.send(envelopes)
        got = self.results.wait([e.metadata.command_id for e in envelopes])
        return [got[e.metadata.command_id] for e in envelopes]


@pytest.fixture(scope="module")
def world(kafka_settings: KafkaSettings, admin: AdminClient) -> Iterator[World]:
    with processor_env(kafka_settings, admin) as env:
        proc = Processor(env.kafka, env.topics, env.processor_settings(idempotency_window=4), CODEC)
        thread = threading.Thread(target=proc.run, daemon=True)
        thread.start()
        results = Results(env)
        try:
            yield World(env, Sender(env), results, proc)
        finally:
            proc.stop()
            thread.join(60)
            results.close()


def check_event_refs(world: World, results: list[CommandResult]) -> None:
    """The offsets results name hold exactly their events, on the command's partition, keyed by aggregate."""
    aggregate_type = results[0].aggregate_type
    assert aggregate_type is not None
    events = {
        (m.partition(), m.offset()): (m, e) for m, e in events_of(world.env.kafka, world.env, aggregate_type)
    }
    for result in results:
        for ref in result.events:
            msg, env = events[(ref.partition, ref.offset)]
            assert env.metadata.event_id == ref.event_id
            assert env.metadata.aggregate_version == ref.aggregate_version
            assert env.metadata.command_id == result.command_id
            assert env.metadata.causation_id == result.command_id
            assert msg.key() == str(env.metadata.aggregate_id).encode()
            assert msg.headers() == CODEC.headers(env)  # the same headers Codec.headers would give
            assert msg.value() == CODEC.encode(env)  # and the same bytes Codec.encode would give
            assert msg.partition() == partition_for(msg.key(), world.env.topics.partitions)


def test_product_flow(world: World) -> None:
    pid = uuid.uuid4()
    order_a, order_b = uuid.uuid4(), uuid.uuid4()
    r = world.run(
        envelope(pid, RegisterProduct(sku="MUG-1", name="Mug", category="kitchen", price=eur("9.90"))),
        envelope(pid, ReceiveStock(quantity=5)),
        envelope(pid, ReserveStock(order_id=order_a, quantity=4)),
        envelope(pid, ReserveStock(order_id=order_b, quantity=2)),
        envelope(pid, DiscontinueProduct(reason="eol")),
        envelope(pid, ReserveStock(order_id=order_b, quantity=1)),
    )
    assert [x.status for x in r] == ["accepted"] * 3 + ["rejected", "accepted", "rejected"]
    assert [x.version for x in r] == [1, 2, 3, 3, 4, 4]
    assert r[3].reason == "insufficient_stock"
    assert r[3].details == {"available": 1, "requested": 2}
    assert r[5].reason == "product_discontinued"
    check_event_refs(world, r)
    versions = [e.metadata.aggregate_version for _, e in events_of(world.env.kafka, world.env, "product")
                if e.metadata.aggregate_id == pid]  # fmt: skip
    assert versions == [1, 2, 3, 4]


def test_order_flow(world: World) -> None:
    oid = uuid.uuid4()
    item = OrderItem(product_id=uuid.uuid4(), sku="MUG-1", quantity=2, unit_price=eur("9.90"))
    home = Address(recipient="Ada", line1="1 Main St", city="Berlin", postal_code="10115", country="DE")
    r = world.run(
        envelope(oid, PlaceOrder(customer_id=uuid.uuid4(), items=(item,), shipping_address=home)),
        envelope(oid, ConfirmOrder()),
        envelope(oid, MarkOrderPaid(payment_ref="p1", amount=eur("10.00"))),
        envelope(oid, MarkOrderPaid(payment_ref="p1", amount=eur("19.80"))),
        envelope(oid, ShipOrder(carrier="DHL", tracking_number="T1")),
        envelope(oid, DeliverOrder()),
        envelope(oid, CancelOrder(reason="too late")),
    )
    assert [x.status for x in r] == [
        "accepted",
        "accepted",
        "rejected",
        "accepted",
        "accepted",
        "accepted",
        "rejected",
    ]
    assert r[2].reason == "amount_mismatch"
    assert r[6].reason == "invalid_state"
    assert r[6].details["status"] == "DELIVERED"
    assert r[5].version == 5
    check_event_refs(world, r)


def test_an_order_keeps_its_paying_account_through_the_processor(world: World) -> None:
    oid, account = uuid.uuid4(), uuid.uuid4()
    item = OrderItem(product_id=uuid.uuid4(), sku="MUG-1", quantity=1, unit_price=eur("9.90"))
    home = Address(recipient="Ada", line1="1 Main St", city="Berlin", postal_code="10115", country="DE")
    place = PlaceOrder(customer_id=uuid.uuid4(), items=(item,), shipping_address=home, account_id=account)
    (r,) = world.run(envelope(oid, place))
    assert r.status == "accepted"
    check_event_refs(world, [r])
    (placed,) = [
        e.event for _, e in events_of(world.env.kafka, world.env, "order") if e.metadata.aggregate_id == oid
    ]
    assert isinstance(placed, OrderPlaced) and placed.account_id == account


def test_transfer_flow(world: World) -> None:
    """The aggregate added last runs with the default settings: its topics exist, the processor decides."""
    tid, other, source, target = uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    request = RequestTransfer(source_account_id=source, target_account_id=target, amount=eur("25.00"))
    r = world.run(
        envelope(tid, CompleteTransfer()),
        envelope(tid, request),
        envelope(tid, request),
        envelope(tid, FailTransfer(reason="withdraw: insufficient_funds")),
        envelope(tid, CompleteTransfer()),
        envelope(other, request.model_copy(update={"target_account_id": source})),
    )
    assert [(x.status, x.reason) for x in r] == [
        ("rejected", "not_found"),
        ("accepted", None),
        ("rejected", "already_exists"),
        ("accepted", None),
        ("rejected", "invalid_state"),
        ("rejected", "same_account"),
    ]
    assert r[4].details == {"status": "FAILED", "command": "CompleteTransfer"}
    assert r[4].version == 2
    check_event_refs(world, r[:5])
    events = [
        e.event
        for _, e in events_of(world.env.kafka, world.env, "transfer")
        if e.metadata.aggregate_id == tid
    ]
    assert events == [
        TransferRequested(source_account_id=source, target_account_id=target, amount=eur("25.00")),
        TransferFailed(reason="withdraw: insufficient_funds"),
    ]


def test_account_flow(world: World) -> None:
    acc = uuid.uuid4()
    r = world.run(envelope(acc, deposit(5)), envelope(acc, open_account()), envelope(acc, deposit(100)),
                  envelope(acc, withdraw(30)), envelope(acc, withdraw(71)))  # fmt: skip
    assert [(x.status, x.reason) for x in r] == [
        ("rejected", "not_found"),
        ("accepted", None),
        ("accepted", None),
        ("accepted", None),
        ("rejected", "insufficient_funds"),
    ]
    assert r[4].version == 3
    assert r[4].aggregate_id == str(acc)
    assert r[1].correlation_id is not None


def test_duplicate_command_returns_the_stored_result(world: World) -> None:
    acc = uuid.uuid4()
    opened = envelope(acc, open_account())
    dep = envelope(acc, deposit(10))
    first = world.run(opened, dep)
    # Again, alone and twice in one batch: the same answers, no new events.
    world.sender.send([dep, opened, dep])
    world.run(envelope(acc, deposit(1)))  # a later command: its result means the duplicates were handled
    answers = world.results.by_id
    assert len(answers[dep.metadata.command_id]) == 3
    assert len(answers[opened.metadata.command_id]) == 2
    assert all(a == first[1] for a in answers[dep.metadata.command_id])
    assert all(a == first[0] for a in answers[opened.metadata.command_id])
    versions = [e.metadata.aggregate_version for _, e in events_of(world.env.kafka, world.env, "account")
                if e.metadata.aggregate_id == acc]  # fmt: skip
    assert versions == [1, 2, 3]


def test_window_is_bounded(world: World) -> None:
    # The fixture keeps 4 results per aggregate: the 1st of 6 commands is forgotten and runs again.
    acc = uuid.uuid4()
    cmds = [envelope(acc, open_account())] + [envelope(acc, deposit(1)) for _ in range(5)]
    world.run(*cmds)
    world.sender.send([cmds[0], cmds[5]])
    world.run(envelope(acc, deposit(1)))  # its result comes after the two re-sent ones
    again = [world.results.by_id[c.metadata.command_id][-1] for c in (cmds[0], cmds[5])]
    assert again[0].status == "rejected" and again[0].reason == "already_exists"  # executed, not replayed
    assert again[1].status == "accepted" and again[1].version == 6  # still in the window: replayed
    assert again[1] == world.results.by_id[cmds[5].metadata.command_id][0]


def test_version_conflict(world: World) -> None:
    acc = uuid.uuid4()
    r = world.run(
        envelope(acc, open_account(), expected_version=0),
        envelope(acc, deposit(10), expected_version=1),
        envelope(acc, deposit(10), expected_version=1),
    )
    assert [x.status for x in r] == ["accepted", "accepted", "rejected"]
    assert r[2].reason == "version_conflict"
    assert r[2].details == {"expected_version": 1, "actual_version": 2}
    assert r[2].version == 2


def _dlq(world: World) -> dict[bytes, Any]:
    return {m.value(): m for m in read_all(world.env.kafka, world.env.name("commands.dead-letter"))}


def test_poison_messages_are_dead_lettered_and_the_partition_keeps_moving(world: World) -> None:
    acc = uuid.uuid4()
    key = str(acc).encode()
    garbage_id = uuid.uuid4()
    garbage = b"\x00\x01not avro at all " + garbage_id.bytes
    forged_dlq = [(DLQ_REASON, b"forged"), (DLQ_OFFSET, b"999999")]
    at_garbage = world.sender.send_raw(
        "account", garbage, key, [(HEADER_ID, str(garbage_id).encode()), ("x-trace", b"t1"), *forged_dlq]
    )
    unknown = b"\xc3\x01" + b"\x99" * 8 + b"\x02\x04"  # well framed, unknown schema fingerprint
    at_unknown = world.sender.send_raw("account", unknown, key)
    # A well-formed Avro record the model refuses (lower-case currency): its command id is readable.
    bad = envelope(acc, open_account())
    record: dict[str, Any] = {
        "metadata": bad.metadata.model_dump(),
        "owner_id": uuid.uuid4(),
        "currency": "eur",
    }
    invalid = CODEC.encode_record("OpenAccount", record)
    at_invalid = world.sender.send_raw("account", invalid, key)
    world.sender.send_raw("account", None, key)  # a tombstone on a command topic
    # Valid afterwards, on the same partition: must be processed.
    r = world.run(envelope(acc, open_account()))
    assert r[0].status == "accepted"

    # Each refused record is reported under its own position; the header's id is not believed, the
    # id inside a readable body is only "claimed", and neither gets an answer of its own.
    garbage_report = world.results.report(at_garbage)
    assert (garbage_report.reason, garbage_report.claimed_command_id) == ("undecodable", None)
    assert world.results.report(at_unknown).reason == "unknown_command_type"
    invalid_report = world.results.report(at_invalid)
    assert invalid_report.reason == "invalid_command"
    assert invalid_report.claimed_command_id == bad.metadata.command_id
    assert garbage_id not in world.results.by_id and bad.metadata.command_id not in world.results.by_id

    dlq = _dlq(world)
    topic = world.env.name("commands.account")
    expected_partition = str(partition_for(key, world.env.topics.partitions)).encode()
    for value, reason in (
        (garbage, b"undecodable"),
        (unknown, b"unknown_command_type"),
        (invalid, b"invalid_command"),
    ):
        msg = dlq[value]
        headers = dict(msg.headers())
        assert headers[DLQ_REASON] == reason
        assert headers[DLQ_TOPIC] == topic.encode()
        assert headers[DLQ_PARTITION] == expected_partition
        assert int(headers[DLQ_OFFSET]) >= 0
        assert msg.key() == key
    assert dict(dlq[garbage].headers())["x-trace"] == b"t1"  # original headers kept...
    names = [name for name, _ in dlq[garbage].headers()]
    assert names.count(DLQ_REASON) == names.count(DLQ_OFFSET) == 1  # ...but none posing as ours
    assert any(m.value() is None for m in read_all(world.env.kafka, world.env.name("commands.dead-letter")))


def test_wrong_partition_and_wrong_key_are_dead_lettered(world: World) -> None:
    acc = uuid.uuid4()
    key = str(acc).encode()
    n = world.env.topics.partitions
    right = partition_for(key, n)
    topic = world.env.name("commands.account")
    misplaced = envelope(acc, open_account())
    mis_keyed = envelope(acc, open_account())
    at_misplaced = world.sender.send_raw(
        "account", CODEC.encode(misplaced, topic=topic), key, partition=(right + 1) % n
    )
    at_mis_keyed = world.sender.send_raw(
        "account", CODEC.encode(mis_keyed, topic=topic), b"someone-else", partition=right
    )
    assert world.results.report(at_misplaced).reason == "wrong_partition"
    assert world.results.report(at_mis_keyed).reason == "wrong_key"
    assert world.results.report(at_mis_keyed).claimed_command_id == mis_keyed.metadata.command_id
    # Neither touched the aggregate: it can still be opened.
    assert world.run(envelope(acc, open_account()))[0].status == "accepted"


def test_metrics_count_outcomes(world: World) -> None:
    acc = uuid.uuid4()
    world.run(envelope(acc, withdraw(1)))
    m = world.processor.metrics
    sample = m.registry.get_sample_value(
        "esflow_processor_commands_total",
        {"aggregate": "account", "outcome": "rejected", "reason": "not_found"},
    )
    assert sample is not None and sample >= 1
    assert (
        m.registry.get_sample_value("esflow_processor_transactions_total", {"outcome": "committed"}) or 0
    ) >= 1
    assert m.ready and m.healthy
    assert datetime.now(UTC) >= world.results.all[-1].processed_at
    assert Decimal(1) == eur(1).amount


# ------------------------------------------------------------------ nobody can forge or shadow an answer


def _answers_claiming(world: World, command_id: uuid.UUID) -> list[tuple[bytes, CommandResult]]:
    """Every answer (not report) on command-results whose body names ``command_id``, with its key."""
    world.results.poll(0.5)
    return [
        (key, CommandResult.from_bytes(value))
        for key, values in world.results.by_key.items()
        if not is_report_key(key)
        for value in values
        if CommandResult.from_bytes(value).command_id == command_id
    ]


def _accepted_then(world: World, forge: Callable[[CommandEnvelope, Any], tuple[str, int, int]]) -> None:
    """Accept a command, let ``forge`` write something reusing its id, and check its answer stands."""
    acc = uuid.uuid4()
    real = envelope(acc, open_account())
    [accepted] = world.run(real)
    assert accepted.status == "accepted"
    [(_msg, event)] = [(m, e) for m, e in events_of(world.env.kafka, world.env, "account")
                       if e.metadata.command_id == real.metadata.command_id]  # fmt: skip
    where = forge(real, event)
    deadline = time.monotonic() + 60
    # Until the forgery is processed: either reported where it was written, or (the bug) answered.
    while where not in world.results.reports and len(_answers_claiming(world, real.metadata.command_id)) < 2:
        assert time.monotonic() < deadline, "the forged record was neither reported nor answered"
    answers = _answers_claiming(world, real.metadata.command_id)
    assert len(answers) == 1, answers  # exactly one answer for the real command, the processor's decision
    key, only = answers[0]
    assert key == answer_key("account", str(acc), str(real.metadata.command_id))
    assert only == accepted
    # What compaction keeps: the last value under the answer key, which is that same decision.
    assert CommandResult.from_bytes(world.results.by_key[key][-1]) == accepted


def test_a_forged_header_on_garbage_answers_nobody(world: World) -> None:
    def forge(real: CommandEnvelope, _event: Any) -> tuple[str, int, int]:
        key = str(real.metadata.aggregate_id).encode()
        return world.sender.send_raw(
            "account", b"garbage", key, [(HEADER_ID, str(real.metadata.command_id).encode())]
        )

    _accepted_then(world, forge)


def test_an_event_record_on_a_command_topic_reusing_an_accepted_id_answers_nobody(world: World) -> None:
    def forge(real: CommandEnvelope, event: Any) -> tuple[str, int, int]:
        topic = world.env.name("commands.account")
        return world.sender.send_raw(
            "account", CODEC.encode(event, topic=topic), str(real.metadata.aggregate_id).encode()
        )

    _accepted_then(world, forge)


def test_a_malformed_body_reusing_an_accepted_id_answers_nobody(world: World) -> None:
    def forge(real: CommandEnvelope, _event: Any) -> tuple[str, int, int]:
        record = {"metadata": real.metadata.model_dump(), "owner_id": uuid.uuid4(), "currency": "eur"}
        key = str(real.metadata.aggregate_id).encode()
        return world.sender.send_raw("account", CODEC.encode_record("OpenAccount", record), key)

    _accepted_then(world, forge)


def test_a_misrouted_copy_of_an_accepted_command_answers_nobody(world: World) -> None:
    def forge(real: CommandEnvelope, _event: Any) -> tuple[str, int, int]:
        topic = world.env.name("commands.account")
        key = str(real.metadata.aggregate_id).encode()
        wrong = (partition_for(key, world.env.topics.partitions) + 1) % world.env.topics.partitions
        return world.sender.send_raw("account", CODEC.encode(real, topic=topic), key, partition=wrong)

    _accepted_then(world, forge)


def test_reusing_an_accepted_id_on_another_aggregate_cannot_shadow_its_answer(world: World) -> None:
    acc, other = uuid.uuid4(), uuid.uuid4()
    real = envelope(acc, open_account())
    [accepted] = world.run(real)
    thief = envelope(other, open_account(), command_id=real.metadata.command_id)
    world.sender.send([thief])
    theirs = world.results.answer(thief)  # a real command of its own aggregate: decided, under its own key
    assert theirs.aggregate_id == str(other)
    by_key = dict(_answers_claiming(world, real.metadata.command_id))
    assert by_key == {
        answer_key("account", str(acc), str(real.metadata.command_id)): accepted,
        answer_key("account", str(other), str(real.metadata.command_id)): theirs,
    }
