from __future__ import annotations

from decimal import Decimal
from typing import Any
from uuid import uuid4

import pytest

from esflow.domain.aggregates import ORDER
from esflow.domain.aggregates.order import OrderStatus
from esflow.domain.messages import Command, Event
from esflow.domain.order import (
    AddOrderItem,
    CancelOrder,
    ConfirmOrder,
    DeliverOrder,
    MarkOrderPaid,
    OrderCancelled,
    OrderConfirmed,
    OrderDelivered,
    OrderItemAdded,
    OrderItemRemoved,
    OrderPaid,
    OrderPlaced,
    OrderRefunded,
    OrderShipped,
    PlaceOrder,
    RefundOrder,
    RemoveOrderItem,
    ShipOrder,
    ShippingAddressUpdated,
    UpdateShippingAddress,
)
from esflow.domain.values import Address, Money, OrderItem, SalesChannel
from tests.unit.domain.gwt import given


def eur(amount: str) -> Money:
    return Money(amount=Decimal(amount), currency="EUR")


def item(qty: int = 2, price: str = "5.00", currency: str = "EUR") -> OrderItem:
    return OrderItem(
        product_id=uuid4(),
        sku="SKU",
        quantity=qty,
        unit_price=Money(amount=Decimal(price), currency=currency),
    )


CUSTOMER = uuid4()
HOME = Address(recipient="Ada", line1="1 Main St", city="Berlin", postal_code="10115", country="DE")
WORK = Address(recipient="Ada", line1="2 Work St", city="Berlin", postal_code="10117", country="DE")
LINE = item(2, "5.00")  # total 10.00
PLACED = OrderPlaced(
    customer_id=CUSTOMER, items=(LINE,), shipping_address=HOME, sales_channel=SalesChannel.WEB
)
CONFIRMED = (PLACED, OrderConfirmed())
PAID = (*CONFIRMED, OrderPaid(payment_ref="p-1", amount=eur("10.00")))
SHIPPED = (*PAID, OrderShipped(carrier="DHL", tracking_number="T1"))
DELIVERED = (*SHIPPED, OrderDelivered())
CANCELLED = (PLACED, OrderCancelled(reason="changed mind"))
HISTORIES: dict[OrderStatus, tuple[Event, ...]] = {
    OrderStatus.PLACED: (PLACED,),
    OrderStatus.CONFIRMED: CONFIRMED,
    OrderStatus.PAID: PAID,
    OrderStatus.SHIPPED: SHIPPED,
    OrderStatus.DELIVERED: DELIVERED,
    OrderStatus.CANCELLED: CANCELLED,
}


def place(*items: OrderItem) -> PlaceOrder:
    return PlaceOrder(
        customer_id=CUSTOMER, items=items, shipping_address=HOME, sales_channel=SalesChannel.WEB
    )


def test_place() -> None:
    state = given(ORDER).when(place(LINE)).then(PLACED)
    assert state.status is OrderStatus.PLACED
    assert state.total == Decimal("10.00")
    assert state.currency == "EUR"


def test_place_names_the_paying_account_in_the_event() -> None:
    account = uuid4()
    command = place(LINE).model_copy(update={"account_id": account})
    given(ORDER).when(command).then(PLACED.model_copy(update={"account_id": account}))


def test_place_twice_is_refused() -> None:
    given(ORDER, PLACED).when(place(LINE)).then_rejected("already_exists")


def test_place_needs_a_line() -> None:
    given(ORDER).when(place()).then_rejected("empty_order")


@pytest.mark.parametrize(
    ("lines", "code"),
    [
        ((item(0),), "invalid_quantity"),
        ((item(-1),), "invalid_quantity"),
        ((item(1, "-0.01"),), "invalid_price"),
        ((item(1, "1.00", "EUR"), item(1, "1.00", "USD")), "currency_mismatch"),
    ],
)
def test_place_checks_every_line(lines: tuple[OrderItem, ...], code: str) -> None:
    given(ORDER).when(place(*lines)).then_rejected(code)


def test_place_one_line_per_product() -> None:
    line = item()
    given(ORDER).when(place(line, line.model_copy(update={"quantity": 1}))).then_rejected("duplicate_item")


ALL_BUT_PLACE: list[Command] = [
    AddOrderItem(item=LINE),
    RemoveOrderItem(product_id=LINE.product_id),
    UpdateShippingAddress(shipping_address=WORK),
    ConfirmOrder(),
    MarkOrderPaid(payment_ref="p", amount=eur("10.00")),
    ShipOrder(carrier="DHL", tracking_number="T"),
    DeliverOrder(),
    CancelOrder(reason="r"),
    RefundOrder(amount=eur("1.00"), reason="r"),
]


@pytest.mark.parametrize("command", ALL_BUT_PLACE, ids=lambda c: type(c).__name__)
def test_every_other_command_needs_a_placed_order(command: Command) -> None:
    given(ORDER).when(command).then_rejected("not_found")


def test_add_item() -> None:
    extra = item(1, "2.50")
    state = given(ORDER, PLACED).when(AddOrderItem(item=extra)).then(OrderItemAdded(item=extra))
    assert state.items == (LINE, extra)
    assert state.total == Decimal("12.50")


@pytest.mark.parametrize(
    ("line", "code"),
    [
        (item(0), "invalid_quantity"),
        (item(1, "-1.00"), "invalid_price"),
        (item(1, "1.00", "USD"), "currency_mismatch"),
        (LINE.model_copy(update={"quantity": 9}), "duplicate_item"),
    ],
)
def test_add_item_checks_the_line(line: OrderItem, code: str) -> None:
    given(ORDER, PLACED).when(AddOrderItem(item=line)).then_rejected(code)


def test_remove_item() -> None:
    extra = item(1, "2.50")
    state = (
        given(ORDER, PLACED, OrderItemAdded(item=extra))
        .when(RemoveOrderItem(product_id=LINE.product_id))
        .then(OrderItemRemoved(product_id=LINE.product_id))
    )
    assert state.items == (extra,)


def test_remove_unknown_item_is_refused() -> None:
    given(ORDER, PLACED).when(RemoveOrderItem(product_id=uuid4())).then_rejected("item_not_found")


def test_remove_last_item_is_refused() -> None:
    given(ORDER, PLACED).when(RemoveOrderItem(product_id=LINE.product_id)).then_rejected("empty_order")


def test_update_shipping_address() -> None:
    state = (
        given(ORDER, *PAID)
        .when(UpdateShippingAddress(shipping_address=WORK))
        .then(ShippingAddressUpdated(shipping_address=WORK))
    )
    assert state.shipping_address == WORK


def test_confirm() -> None:
    assert given(ORDER, PLACED).when(ConfirmOrder()).then(OrderConfirmed()).status is OrderStatus.CONFIRMED


def test_pay() -> None:
    state = (
        given(ORDER, *CONFIRMED)
        .when(MarkOrderPaid(payment_ref="p-1", amount=eur("10.00")))
        .then(OrderPaid(payment_ref="p-1", amount=eur("10.00")))
    )
    assert state.status is OrderStatus.PAID
    assert state.paid == Decimal("10.00")


def test_pay_must_equal_the_total() -> None:
    given(ORDER, *CONFIRMED).when(MarkOrderPaid(payment_ref="p", amount=eur("9.99"))).then_rejected(
        "amount_mismatch", expected="10.00", got="9.99"
    )


def test_pay_in_the_order_currency() -> None:
    usd = Money(amount=Decimal("10.00"), currency="USD")
    given(ORDER, *CONFIRMED).when(MarkOrderPaid(payment_ref="p", amount=usd)).then_rejected(
        "currency_mismatch"
    )


def test_ship() -> None:
    cmd = ShipOrder(carrier="DHL", tracking_number="T1")
    assert given(ORDER, *PAID).when(cmd).then(SHIPPED[-1]).status is OrderStatus.SHIPPED


def test_deliver() -> None:
    assert given(ORDER, *SHIPPED).when(DeliverOrder()).then(OrderDelivered()).status is OrderStatus.DELIVERED


@pytest.mark.parametrize("status", [OrderStatus.PLACED, OrderStatus.CONFIRMED, OrderStatus.PAID])
def test_cancel_before_shipping(status: OrderStatus) -> None:
    state = given(ORDER, *HISTORIES[status]).when(CancelOrder(reason="r")).then(OrderCancelled(reason="r"))
    assert state.status is OrderStatus.CANCELLED


def test_refund_part_then_the_rest() -> None:
    first = given(ORDER, *DELIVERED).when(RefundOrder(amount=eur("4.00"), reason="damaged"))
    first.then(OrderRefunded(amount=eur("4.00"), reason="damaged"))
    history = (*DELIVERED, OrderRefunded(amount=eur("4.00"), reason="damaged"))
    given(ORDER, *history).when(RefundOrder(amount=eur("6.00"), reason="r")).then(
        OrderRefunded(amount=eur("6.00"), reason="r")
    )
    given(ORDER, *history).when(RefundOrder(amount=eur("6.01"), reason="r")).then_rejected(
        "refund_exceeds_payment", refundable="6.00", requested="6.01"
    )


def test_refund_a_cancelled_paid_order() -> None:
    history = (*PAID, OrderCancelled(reason="r"))
    given(ORDER, *history).when(RefundOrder(amount=eur("10.00"), reason="r")).then(
        OrderRefunded(amount=eur("10.00"), reason="r")
    )


@pytest.mark.parametrize("status", [OrderStatus.PLACED, OrderStatus.CONFIRMED, OrderStatus.CANCELLED])
def test_refund_needs_a_payment(status: OrderStatus) -> None:
    given(ORDER, *HISTORIES[status]).when(RefundOrder(amount=eur("1.00"), reason="r")).then_rejected(
        "not_paid"
    )


@pytest.mark.parametrize(
    ("amount", "code"),
    [(eur("0"), "invalid_amount"), (Money(amount=Decimal(1), currency="USD"), "currency_mismatch")],
)
def test_refund_checks_the_amount(amount: Money, code: str) -> None:
    given(ORDER, *PAID).when(RefundOrder(amount=amount, reason="r")).then_rejected(code)


# Every (command, status) pair the life cycle forbids: each is an illegal transition, refused as such.
ALLOWED: dict[type[Command], set[OrderStatus]] = {
    AddOrderItem: {OrderStatus.PLACED},
    RemoveOrderItem: {OrderStatus.PLACED},
    UpdateShippingAddress: {OrderStatus.PLACED, OrderStatus.CONFIRMED, OrderStatus.PAID},
    ConfirmOrder: {OrderStatus.PLACED},
    MarkOrderPaid: {OrderStatus.CONFIRMED},
    ShipOrder: {OrderStatus.PAID},
    DeliverOrder: {OrderStatus.SHIPPED},
    CancelOrder: {OrderStatus.PLACED, OrderStatus.CONFIRMED, OrderStatus.PAID},
}
ILLEGAL: list[Any] = [
    pytest.param(command, status, id=f"{type(command).__name__}-in-{status}")
    for command in ALL_BUT_PLACE
    if type(command) in ALLOWED
    for status in OrderStatus
    if status not in ALLOWED[type(command)]
]


@pytest.mark.parametrize(("command", "status"), ILLEGAL)
def test_illegal_transition_is_refused(command: Command, status: OrderStatus) -> None:
    rejection = (
        given(ORDER, *HISTORIES[status]).when(command).then_rejected("invalid_state", status=str(status))
    )
    assert type(command).__name__ in rejection.message


@pytest.mark.parametrize(
    ("command", "status"), [(c, s) for c in ALL_BUT_PLACE if type(c) in ALLOWED for s in ALLOWED[type(c)]]
)
def test_legal_transition_is_not_an_invalid_state(command: Command, status: OrderStatus) -> None:
    outcome = given(ORDER, *HISTORIES[status]).when(command)
    assert getattr(outcome.decision, "code", None) != "invalid_state"
