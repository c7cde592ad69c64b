"""The process-manager step without a broker: routing, answers, timers, retries, staging, restore."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

import pytest

from esflow.domain.messages import CommandEnvelope, EventEnvelope, EventMetadata
from esflow.domain.order import OrderPaid, OrderPlaced
from esflow.domain.process import command_id
from esflow.domain.values import Address, Money, OrderItem
from esflow.messaging.codec import Codec
from esflow.messaging.process_records import InstanceRecord
from esflow.messaging.results import CommandResult, answer_key, report_key
from esflow.settings import TopicSettings
from processors.loop import Outgoing
from processors.process.manager import ProcessStep, ProcessTopics
from tests.unit.process.toy import ChargeOrder

T0 = 1_800_000_000.0
CODEC = Codec.from_settings()


@dataclass
class Msg:
    """The parts of a consumed message the step reads."""

    _topic: str
    _key: bytes | None
    _value: bytes | None
    _partition: int = 0
    _offset: int = 0
    _headers: list[tuple[str, bytes]] = field(default_factory=list)

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes | None:
        return self._value

    def headers(self) -> list[tuple[str, bytes]]:
        return self._headers

    def timestamp(self) -> tuple[int, int]:
        return (0, 0)


class Loader:
    """State records by partition, as the state topic would hand them back."""

    def __init__(self) -> None:
        self.parts: dict[int, dict[bytes, bytes]] = {}

    def load(self, partition: int) -> Iterable[bytes]:
        return list(self.parts.get(partition, {}).values())

    def keep(self, out: Iterable[Outgoing], topic: str) -> None:
        for o in out:
            if o.topic == topic and o.key is not None and o.value is not None:
                self.parts.setdefault(o.partition or 0, {})[o.key] = o.value


TOPICS = ProcessTopics("charge", TopicSettings(prefix="t."), frozenset({"order"}))


def make_step(loader: Loader | None = None) -> tuple[ProcessStep, Loader]:
    loader = loader or Loader()
    step = ProcessStep(ChargeOrder(deadline_s=5), CODEC, TOPICS, loader)
    step.assigned([(TOPICS.inbox, 0), (TOPICS.results, 0), (TOPICS.events("order"), 0)])
    return step, loader


def placed(order: UUID, account: UUID | None, *, correlation: UUID | None = None) -> bytes:
    event = OrderPlaced(
        customer_id=uuid.uuid4(),
        items=(OrderItem(product_id=uuid.uuid4(), sku="A", quantity=2,
                         unit_price=Money(amount=Decimal("5.00"), currency="EUR")),),
        shipping_address=Address(recipient="r", line1="l", city="c", postal_code="1", country="DE"),
        account_id=account,
    )  # fmt: skip
    cid = uuid.uuid4()
    meta = EventMetadata(
        event_id=uuid.uuid4(), aggregate_type="order", aggregate_id=order, aggregate_version=1,
        occurred_at=datetime.now(UTC), command_id=cid, correlation_id=correlation or cid, causation_id=cid,
    )  # fmt: skip
    return CODEC.encode(EventEnvelope(metadata=meta, event=event))


def answer(
    cmd: CommandEnvelope, status: str, reason: str | None = None, correlation: UUID | None = None
) -> Msg:
    m = cmd.metadata
    result = CommandResult(
        command_id=m.command_id, status=status,
        aggregate_type=m.aggregate_type, aggregate_id=str(m.aggregate_id), version=1, reason=reason,
        correlation_id=correlation or m.correlation_id, processed_at=datetime.now(UTC),
    )  # fmt: skip
    key = answer_key(m.aggregate_type, str(m.aggregate_id), str(m.command_id))
    return Msg(TOPICS.results, key, result.to_bytes())


def commands(out: Iterable[Outgoing]) -> list[CommandEnvelope]:
    found = []
    for o in out:
        if o.topic.startswith("t.commands."):
            env = CODEC.decode(o.value or b"", kind="command")
            assert o.key == str(env.metadata.aggregate_id).encode()
            assert o.headers == CODEC.headers(env)  # what the SDK writes for the same envelope
            found.append(env)
    return found


def inbox(out: Iterable[Outgoing]) -> list[Msg]:
    """The routed records, as the manager half would consume them."""
    return [Msg(o.topic, o.key, o.value) for o in out if o.topic == TOPICS.inbox]


def run(step: ProcessStep, loader: Loader, msgs: list[Msg], now: float) -> list[Outgoing]:
    """One committed turn: route, then handle what was routed (as the next turn would)."""
    out = list(step.process(msgs, now))
    step.committed()
    loader.keep(out, TOPICS.state)
    routed = inbox(out)
    if routed:
        more = list(step.process(routed, now))
        step.committed()
        loader.keep(more, TOPICS.state)
        out += more
    return out


def start(step: ProcessStep, loader: Loader) -> tuple[UUID, UUID, CommandEnvelope]:
    order, account = uuid.uuid4(), uuid.uuid4()
    out = run(step, loader, [Msg(TOPICS.events("order"), str(order).encode(), placed(order, account))], T0)
    (charge,) = commands(out)
    return order, account, charge


def test_an_event_is_routed_by_instance_and_starts_it_with_a_deterministic_command() -> None:
    step, loader = make_step()
    order, account, charge = start(step, loader)
    meta = charge.metadata
    assert meta.command_id == command_id("charge", order, "charge", 1)
    assert (meta.aggregate_type, meta.aggregate_id, meta.correlation_id) == ("account", account, order)
    record = step.instance(order)
    assert record is not None and record.status == "running" and "payment" in record.timers
    assert meta.causation_id == record.history[0].id  # the OrderPlaced event's id
    assert step.next_due() == pytest.approx(T0 + 3)  # the answer timeout comes before the deadline


def test_events_that_start_nothing_are_not_routed() -> None:
    step, _ = make_step()
    order = uuid.uuid4()
    out = step.process([Msg(TOPICS.events("order"), str(order).encode(), placed(order, None))], T0)
    assert not inbox(out) or all(step.instance(order) is None for _ in [0])
    # correlate() names the order, but no instance exists: the manager drops it
    assert not step.process(inbox(out), T0) and step.instance(order) is None


def test_an_accepted_answer_completes_and_cancels_the_deadline() -> None:
    step, loader = make_step()
    order, _, charge = start(step, loader)
    out = run(step, loader, [answer(charge, "accepted")], T0 + 1)
    assert not commands(out)
    record = step.instance(order)
    assert record is not None and record.status == "completed" and record.final and not record.timers
    assert record.ended_at is not None and not record.sends
    assert step.next_due() is None
    assert not step.due(T0 + 100)  # the deadline was cancelled: it never fires


def test_answers_are_routed_by_the_correlation_id_in_the_body_and_checked_against_the_pending_send() -> None:
    step, loader = make_step()
    order, _, charge = start(step, loader)
    # a client's own command (correlation = command id) is not routed at all
    own = CommandResult(command_id=uuid.uuid4(), status="accepted", processed_at=datetime.now(UTC))
    own = own.model_copy(update={"correlation_id": own.command_id})
    assert not step.process([Msg(TOPICS.results, b"k", own.to_bytes())], T0)
    # a dead-letter report is keyed by position: not routed
    assert not step.process([Msg(TOPICS.results, report_key("x", 0, 1), b"{}")], T0)
    # an answer claiming the instance but for a command id it never sent changes nothing
    forged = charge.model_copy(
        update={"metadata": charge.metadata.model_copy(update={"command_id": uuid.uuid4()})}
    )
    before = step.instance(order)
    out = run(step, loader, [answer(forged, "rejected", "insufficient_funds")], T0 + 1)
    assert not commands(out) and step.instance(order) == before


def test_a_rejection_compensates_and_the_compensation_answer_ends_it() -> None:
    step, loader = make_step()
    order, _, charge = start(step, loader)
    out = run(step, loader, [answer(charge, "rejected", "insufficient_funds")], T0 + 1)
    (cancel,) = commands(out)
    assert cancel.metadata.aggregate_id == order and cancel.command.type_name() == "CancelOrder"
    assert cancel.metadata.causation_id == charge.metadata.command_id
    run(step, loader, [answer(cancel, "accepted")], T0 + 2)
    record = step.instance(order)
    assert record is not None and record.status == "compensated"
    assert record.reason == "payment rejected: insufficient_funds"


def test_a_retryable_rejection_is_retried_with_backoff_under_the_next_attempts_id() -> None:
    step, loader = make_step()
    order, _, charge = start(step, loader)
    run(step, loader, [answer(charge, "rejected", "version_conflict")], T0 + 1)
    assert not step.due(T0 + 1.4)  # back-off 0.5 s not over yet
    out = step.due(T0 + 1.6)
    step.committed()
    (retry,) = commands(out)
    assert retry.metadata.command_id == command_id("charge", order, "charge", 2)
    assert retry.metadata.causation_id == charge.metadata.causation_id
    run(step, loader, [answer(retry, "accepted")], T0 + 2)
    record = step.instance(order)
    assert record is not None and record.status == "completed" and record.attempts == 1


def test_no_answer_resends_the_same_id_then_gives_up_as_timeout() -> None:
    loader = Loader()
    step = ProcessStep(ChargeOrder(deadline_s=60), CODEC, TOPICS, loader)
    step.assigned([(TOPICS.inbox, 0)])
    order, _, charge = start(step, loader)
    ids = []
    now = T0
    for _ in range(2):
        now += 3.1
        out = step.due(now)
        step.committed()
        (again,) = commands(out)
        ids.append(again.metadata.command_id)
    assert ids == [charge.metadata.command_id] * 2  # re-sends keep the id: the processor dedupes
    out = step.due(now + 3.1)  # max_attempts (3) tries without an answer: the final answer is a timeout
    step.committed()
    (cancel,) = commands(out)
    assert cancel.command.type_name() == "CancelOrder"
    record = step.instance(order)
    assert record is not None and record.status == "compensating"
    assert record.reason == "payment rejected: timeout" and record.attempts == 2


def test_a_deadline_fires_once_and_survives_a_restart() -> None:
    step, loader = make_step()
    order, _, _ = start(step, loader)
    # the worker dies; a new one restores the instance from the state records
    fresh, _ = make_step(loader)
    assert fresh.instance(order) == step.instance(order)
    out = fresh.due(T0 + 5.01)
    fresh.committed()
    loader.keep(out, TOPICS.state)
    cmds = commands(out)
    assert sorted(c.command.type_name() for c in cmds) == ["CancelOrder", "WithdrawFunds"]  # cancel + resend
    record = fresh.instance(order)
    assert (
        record is not None and record.status == "compensating" and record.reason == "payment deadline passed"
    )
    out = fresh.due(T0 + 5.02)
    assert not [c for c in commands(out) if c.command.type_name() == "CancelOrder"]  # fired once


def test_an_aborted_turn_leaves_the_committed_state() -> None:
    step, loader = make_step()
    order, _, charge = start(step, loader)
    before = step.instance(order)
    out = step.process([answer(charge, "accepted")], T0 + 1)
    step.committed()  # the routing turn
    step.process(inbox(out), T0 + 1)
    step.aborted()
    assert step.instance(order) == before
    # the re-read input is handled as if for the first time
    step.process(inbox(out), T0 + 1)
    step.committed()
    record = step.instance(order)
    assert record is not None and record.status == "completed"


def test_the_state_record_goes_to_the_inbox_partition() -> None:
    step, _ = make_step()
    order, account = uuid.uuid4(), uuid.uuid4()
    out = step.process([Msg(TOPICS.events("order"), str(order).encode(), placed(order, account))], T0)
    step.committed()
    routed = [Msg(m._topic, m._key, m._value, _partition=4) for m in inbox(out)]
    step.assigned([(TOPICS.inbox, 4)])
    out = step.process(routed, T0)
    step.committed()
    (state,) = [o for o in out if o.topic == TOPICS.state]
    assert state.partition == 4 and state.key == str(order).encode()
    assert InstanceRecord.from_bytes(state.value or b"").instance_id == order
    step.revoked([(TOPICS.inbox, 4)])
    assert step.instance(order) is None


def test_a_second_start_event_for_an_existing_instance_does_not_restart_it() -> None:
    step, loader = make_step()
    order, account = uuid.uuid4(), uuid.uuid4()
    event = Msg(TOPICS.events("order"), str(order).encode(), placed(order, account))
    run(step, loader, [event], T0)
    out = run(step, loader, [event], T0 + 1)
    assert not commands(out)
    record: Any = step.instance(order)
    assert record.inputs == 2 and len(record.sends) == 1


def test_unsubscribed_or_misrouted_events_are_dropped() -> None:
    step, _ = make_step()
    order, other = uuid.uuid4(), uuid.uuid4()
    misrouted = Msg(TOPICS.inbox, str(other).encode(), placed(order, uuid.uuid4()))
    assert not step.process([misrouted], T0)
    paid = OrderPaid(payment_ref="p", amount=Money(amount=Decimal(1), currency="EUR"))
    assert paid.aggregate_type == "order"


def test_the_timeline_nests_commands_under_their_causes() -> None:
    from processors.process.timeline import render, tree

    step, loader = make_step()
    order, _, charge = start(step, loader)
    out = run(step, loader, [answer(charge, "rejected", "insufficient_funds")], T0 + 1)
    (cancel,) = commands(out)
    run(step, loader, [answer(cancel, "accepted")], T0 + 2)
    record = step.instance(order)
    assert record is not None
    (root,) = tree(record.history)  # the OrderPlaced event
    assert root.entry.kind == "event"
    (sent,) = root.children  # WithdrawFunds, caused by the event
    assert sent.entry.what == "WithdrawFunds"
    (rejected,) = sent.children  # its answer
    assert rejected.entry.what == "rejected (insufficient_funds)"
    (cancelling,) = rejected.children  # CancelOrder, caused by the answer
    assert cancelling.entry.what == "CancelOrder" and cancelling.children[0].entry.kind == "answer"
    text = render(record)
    assert (
        text.splitlines()[0]
        == f"charge {order}: compensated (step cancelled) - payment rejected: insufficient_funds"
    )
    assert "            `-- out command CancelOrder [cancel]" in text
