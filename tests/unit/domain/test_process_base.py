"""The process-manager contract: deterministic command ids, the retry schedule, the stored shapes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from uuid import UUID, uuid4

import pytest
from pydantic import ValidationError

from esflow.domain.account import DepositFunds, FundsDeposited
from esflow.domain.messages import EventEnvelope, EventMetadata
from esflow.domain.process import (
    AnswerIn,
    CancelTimer,
    EventIn,
    RetryPolicy,
    Send,
    SetTimer,
    command_id,
)
from esflow.domain.process.fulfilment import FulfilmentState, OrderFulfilment
from esflow.domain.process.funds_transfer import FundsTransfer
from esflow.domain.values import Money

INSTANCE = UUID("0b7f1a52-38c4-4a7e-9f55-2d1c6f0e9a11")


def test_command_ids_are_a_function_of_process_instance_step_and_attempt() -> None:
    first = command_id("order_fulfilment", INSTANCE, "charge")
    assert first == command_id("order_fulfilment", INSTANCE, "charge", 1)
    # A fixed value: changing the derivation would re-execute every in-flight step after an upgrade.
    assert first == UUID("4298f2a2-af64-5d2e-bf93-6e83aac15759")
    others = {
        command_id("order_fulfilment", INSTANCE, "charge", 2),
        command_id("order_fulfilment", INSTANCE, "refund"),
        command_id("funds_transfer", INSTANCE, "charge"),
        command_id("order_fulfilment", uuid4(), "charge"),
    }
    assert first not in others and len(others) == 4


def test_the_retry_delay_doubles_up_to_its_cap() -> None:
    policy = RetryPolicy(first_delay_s=0.5, max_delay_s=3.0)
    assert [policy.delay_s(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert RetryPolicy().retryable == frozenset({"version_conflict", "timeout"})
    with pytest.raises(ValidationError):
        RetryPolicy(max_attempts=0)


def test_definitions_name_themselves_and_their_state() -> None:
    assert OrderFulfilment.name == "order_fulfilment" and OrderFulfilment.state_type is FulfilmentState
    assert FundsTransfer.name == "funds_transfer"
    assert OrderFulfilment.retry == RetryPolicy()


def test_actions_are_frozen_and_times_are_utc() -> None:
    at = datetime(2026, 12, 4, 13, 0, tzinfo=timezone(timedelta(hours=1)))
    assert SetTimer(name="t", at=at).at == datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
    with pytest.raises(ValidationError):
        SetTimer(name="t", at=datetime(2026, 12, 4, 12, 0))  # naive: its zone is a guess
    with pytest.raises(ValidationError):
        Send(
            step="",
            aggregate_id=uuid4(),
            command=DepositFunds(amount=Money(amount=Decimal(1), currency="EUR")),
        )
    with pytest.raises(ValidationError):
        CancelTimer(name="t").name = "u"  # type: ignore[misc]


def test_a_send_serialises_its_command_with_the_command_s_own_fields() -> None:
    deposit = DepositFunds(amount=Money(amount=Decimal("1.50"), currency="EUR"), reference="r")
    dumped = Send(step="s", aggregate_id=INSTANCE, command=deposit).model_dump(mode="json")
    assert dumped["command"] == {"amount": {"amount": "1.50", "currency": "EUR"}, "reference": "r"}


def test_an_answer_knows_whether_it_was_accepted() -> None:
    assert AnswerIn(step="s", outcome="accepted").accepted
    assert not AnswerIn(step="s", outcome="rejected", reason="insufficient_funds").accepted


def test_an_event_input_carries_its_envelope_s_ids() -> None:
    deposited = FundsDeposited(amount=Money(amount=Decimal("2.00"), currency="EUR"))
    meta = EventMetadata(
        event_id=uuid4(),
        aggregate_type="account",
        aggregate_id=uuid4(),
        aggregate_version=2,
        occurred_at=datetime(2026, 12, 4, 12, 0, tzinfo=UTC),
        command_id=uuid4(),
        correlation_id=uuid4(),
        causation_id=uuid4(),
    )
    message = EventIn.from_envelope(EventEnvelope(metadata=meta, event=deposited))
    assert message.event is deposited
    assert (message.aggregate_type, message.aggregate_id, message.event_id) == (
        "account",
        meta.aggregate_id,
        meta.event_id,
    )
    assert (message.correlation_id, message.causation_id, message.occurred_at) == (
        meta.correlation_id,
        meta.causation_id,
        meta.occurred_at,
    )
