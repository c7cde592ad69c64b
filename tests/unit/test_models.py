"""The message models: frozen, registered once, validating what the wire format needs."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from pydantic import ValidationError

from esflow.domain import account, catalog, order, product, transfer
from esflow.domain.catalog import MESSAGE_TYPES, commands_of, events_of, spec_for
from esflow.domain.messages import (
    Command,
    CommandEnvelope,
    CommandMetadata,
    Event,
    EventEnvelope,
    EventMetadata,
)
from esflow.domain.order import ConfirmOrder, OrderConfirmed
from esflow.domain.values import Money

EXPECTED = {
    "product": (
        "RegisterProduct ChangePrice ReceiveStock ReserveStock ReleaseStock DiscontinueProduct",
        "ProductRegistered PriceChanged StockReceived StockReserved StockReleased ProductDiscontinued",
    ),
    "order": (
        "PlaceOrder AddOrderItem RemoveOrderItem UpdateShippingAddress ConfirmOrder MarkOrderPaid ShipOrder "
        "DeliverOrder CancelOrder RefundOrder",
        "OrderPlaced OrderItemAdded OrderItemRemoved ShippingAddressUpdated OrderConfirmed OrderPaid "
        "OrderShipped OrderDelivered OrderCancelled OrderRefunded",
    ),
    "account": (
        "OpenAccount DepositFunds WithdrawFunds FreezeAccount UnfreezeAccount CloseAccount",
        "AccountOpened FundsDeposited FundsWithdrawn AccountFrozen AccountUnfrozen AccountClosed",
    ),
    "transfer": (
        "RequestTransfer CompleteTransfer FailTransfer",
        "TransferRequested TransferCompleted TransferFailed",
    ),
}


@pytest.mark.parametrize("aggregate", ["product", "order", "account", "transfer"])
def test_the_registry_holds_the_issue_s_domain(aggregate: str) -> None:
    commands, events = EXPECTED[aggregate]
    assert {s.name for s in commands_of(aggregate)} == set(commands.split())  # type: ignore[arg-type]
    assert {s.name for s in events_of(aggregate)} == set(events.split())  # type: ignore[arg-type]


def test_every_message_class_is_registered_with_its_kind() -> None:
    classes = [
        obj
        for module in (product, order, account, transfer)
        for obj in vars(module).values()
        if isinstance(obj, type) and issubclass(obj, Command | Event) and obj.__module__ == module.__name__
    ]
    assert len(classes) == len(MESSAGE_TYPES) == 50
    for cls in classes:
        spec = spec_for(cls.__name__)
        assert spec is not None and spec.model is cls
        assert spec.kind == ("event" if issubclass(cls, Event) else "command")
    assert spec_for("Nope") is None
    assert catalog.MESSAGE_TYPES["PriceChanged"].version == 2
    assert catalog.MESSAGE_TYPES["OrderPlaced"].version == 3
    assert catalog.MESSAGE_TYPES["PlaceOrder"].version == 3


def test_models_are_frozen_and_closed() -> None:
    money = Money(amount=Decimal("1.50"), currency="EUR")
    with pytest.raises(ValidationError):
        money.amount = Decimal(2)  # type: ignore[misc]
    with pytest.raises(ValidationError, match="extra"):
        Money(amount=Decimal(1), currency="EUR", note="x")  # type: ignore[call-arg]


@pytest.mark.parametrize(
    "amount", [Decimal("0.001"), Decimal("12345678901234567.00"), Decimal("NaN"), Decimal("Infinity")]
)
def test_money_fits_decimal_18_2(amount: Decimal) -> None:
    with pytest.raises(ValidationError):
        Money(amount=amount, currency="EUR")


def test_money_never_accepts_a_float_silently_rounded() -> None:
    assert Money(amount=Decimal("9999999999999999.99"), currency="USD").amount == Decimal(
        "9999999999999999.99"
    )
    with pytest.raises(ValidationError):
        Money(amount=0.1 + 0.2, currency="EUR")  # 0.30000000000000004 has more than 2 places


@pytest.mark.parametrize("currency", ["eur", "EURO", "E1R", ""])
def test_currency_is_iso_4217_shaped(currency: str) -> None:
    with pytest.raises(ValidationError):
        Money(amount=Decimal(1), currency=currency)


def test_times_must_be_aware_and_become_utc() -> None:
    ids = {k: uuid.uuid4() for k in ("command_id", "aggregate_id", "correlation_id")}
    with pytest.raises(ValidationError, match="timezone"):
        CommandMetadata(aggregate_type="order", issued_at=datetime(2025, 1, 1), **ids)
    meta = CommandMetadata(aggregate_type="order", issued_at="2025-01-01T12:00:00+02:00", **ids)
    assert meta.issued_at == datetime(2025, 1, 1, 10, tzinfo=UTC)
    assert meta.issued_at.tzinfo is UTC


def test_envelopes_refuse_a_message_of_another_aggregate() -> None:
    ids = {k: uuid.uuid4() for k in ("command_id", "aggregate_id", "correlation_id")}
    with pytest.raises(ValidationError, match="belongs to 'order'"):
        CommandEnvelope(
            metadata=CommandMetadata(aggregate_type="product", issued_at=datetime.now(UTC), **ids),
            command=ConfirmOrder(),
        )
    ids = {
        k: uuid.uuid4() for k in ("event_id", "aggregate_id", "command_id", "correlation_id", "causation_id")
    }
    meta = EventMetadata(aggregate_type="order", aggregate_version=3, occurred_at=datetime.now(UTC), **ids)
    envelope = EventEnvelope(metadata=meta, event=OrderConfirmed())
    assert envelope.event.type_name() == "OrderConfirmed"
    # The envelope keeps the concrete class, and dumps it whole.
    assert isinstance(envelope.event, OrderConfirmed)
    assert envelope.model_dump()["metadata"]["aggregate_version"] == 3
