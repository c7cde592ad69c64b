"""The Order aggregate: its lines, where it ships, and its life cycle.

Life cycle (anything else is an ``invalid_state`` rejection)::

    PLACED -Confirm-> CONFIRMED -MarkPaid-> PAID -Ship-> SHIPPED -Deliver-> DELIVERED
      |                 |                     |
      +-----------------+------CancelOrder----+--> CANCELLED

Rules:
- an order is placed once, with at least one line; every line has a positive quantity and a
  non-negative unit price, one line per product, and all prices in one currency;
- lines are added and removed only while PLACED; the last line cannot be removed;
- the shipping address changes until the order ships;
- the payment must equal the order total, in its currency;
- refunds need a payment, a positive amount in the order's currency, and never exceed what was paid
  minus what was refunded already (a cancelled paid order can be refunded).
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal
from enum import StrEnum

from esflow.domain.aggregates.base import (
    Aggregate,
    Decision,
    already_exists,
    currency_mismatch,
    invalid_state,
    not_found,
    positive,
    reject,
)
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
from esflow.domain.reasons import (
    AMOUNT_MISMATCH,
    DUPLICATE_ITEM,
    EMPTY_ORDER,
    INVALID_AMOUNT,
    INVALID_PRICE,
    INVALID_QUANTITY,
    ITEM_NOT_FOUND,
    NOT_PAID,
    REFUND_EXCEEDS_PAYMENT,
    UNKNOWN_COMMAND,
)
from esflow.domain.values import Address, Frozen, OrderItem


class OrderStatus(StrEnum):
    """Where an order is in its life cycle."""

    PLACED = "PLACED"
    CONFIRMED = "CONFIRMED"
    PAID = "PAID"
    SHIPPED = "SHIPPED"
    DELIVERED = "DELIVERED"
    CANCELLED = "CANCELLED"


class OrderState(Frozen):
    """A placed order."""

    status: OrderStatus
    items: tuple[OrderItem, ...]
    shipping_address: Address
    currency: str
    paid: Decimal = Decimal(0)
    refunded: Decimal = Decimal(0)

    @property
    def total(self) -> Decimal:
        """Sum of quantity times unit price over the lines."""
        return sum((i.unit_price.amount * i.quantity for i in self.items), Decimal(0))


def _check_items(
    items: Iterable[OrderItem], currency: str, existing: Iterable[OrderItem] = ()
) -> Decision | None:
    seen = {i.product_id for i in existing}
    for item in items:
        if item.quantity <= 0:
            return reject(INVALID_QUANTITY, "every line needs a positive quantity", sku=item.sku)
        if item.unit_price.amount < 0:
            return reject(INVALID_PRICE, "a unit price cannot be negative", sku=item.sku)
        if item.unit_price.currency != currency:
            return currency_mismatch(currency, item.unit_price.currency)
        if item.product_id in seen:
            return reject(DUPLICATE_ITEM, "one line per product", product_id=str(item.product_id))
        seen.add(item.product_id)
    return None


def decide(state: OrderState | None, command: Command) -> Decision:
    """The events an order command appends, or why it is refused."""
    if isinstance(command, PlaceOrder):
        if state is not None:
            return already_exists("order")
        if not command.items:
            return reject(EMPTY_ORDER, "an order needs at least one line")
        problem = _check_items(command.items, command.items[0].unit_price.currency)
        if problem is not None:
            return problem
        return (
            OrderPlaced(
                customer_id=command.customer_id,
                items=command.items,
                shipping_address=command.shipping_address,
                sales_channel=command.sales_channel,
                account_id=command.account_id,
            ),
        )
    if state is None:
        return not_found("order")
    status = state.status
    match command:
        case AddOrderItem(item=item):
            if status is not OrderStatus.PLACED:
                return invalid_state("order", command, status)
            problem = _check_items((item,), state.currency, state.items)
            return problem if problem is not None else (OrderItemAdded(item=item),)
        case RemoveOrderItem(product_id=product_id):
            if status is not OrderStatus.PLACED:
                return invalid_state("order", command, status)
            if all(i.product_id != product_id for i in state.items):
                return reject(
                    ITEM_NOT_FOUND, "the order has no line for this product", product_id=str(product_id)
                )
            if len(state.items) == 1:
                return reject(EMPTY_ORDER, "the last line cannot be removed; cancel the order instead")
            return (OrderItemRemoved(product_id=product_id),)
        case UpdateShippingAddress(shipping_address=address):
            if status in (OrderStatus.SHIPPED, OrderStatus.DELIVERED, OrderStatus.CANCELLED):
                return invalid_state("order", command, status)
            return (ShippingAddressUpdated(shipping_address=address),)
        case ConfirmOrder():
            if status is not OrderStatus.PLACED:
                return invalid_state("order", command, status)
            return (OrderConfirmed(),)
        case MarkOrderPaid(payment_ref=ref, amount=amount):
            if status is not OrderStatus.CONFIRMED:
                return invalid_state("order", command, status)
            if amount.currency != state.currency:
                return currency_mismatch(state.currency, amount.currency)
            if amount.amount != state.total:
                return reject(
                    AMOUNT_MISMATCH,
                    f"the payment must equal the order total {state.total}",
                    expected=str(state.total),
                    got=str(amount.amount),
                )
            return (OrderPaid(payment_ref=ref, amount=amount),)
        case ShipOrder(carrier=carrier, tracking_number=tracking):
            if status is not OrderStatus.PAID:
                return invalid_state("order", command, status)
            return (OrderShipped(carrier=carrier, tracking_number=tracking),)
        case DeliverOrder():
            if status is not OrderStatus.SHIPPED:
                return invalid_state("order", command, status)
            return (OrderDelivered(),)
        case CancelOrder(reason=reason):
            if status not in (OrderStatus.PLACED, OrderStatus.CONFIRMED, OrderStatus.PAID):
                return invalid_state("order", command, status)
            return (OrderCancelled(reason=reason),)
        case RefundOrder(amount=amount, reason=reason):
            if state.paid <= 0:
                return reject(NOT_PAID, "nothing was paid for this order")
            if amount.currency != state.currency:
                return currency_mismatch(state.currency, amount.currency)
            if not positive(amount):
                return reject(INVALID_AMOUNT, "a refund must be positive", amount=str(amount.amount))
            left = state.paid - state.refunded
            if amount.amount > left:
                return reject(
                    REFUND_EXCEEDS_PAYMENT,
                    f"only {left} of the payment is left to refund",
                    refundable=str(left),
                    requested=str(amount.amount),
                )
            return (OrderRefunded(amount=amount, reason=reason),)
    return reject(UNKNOWN_COMMAND, f"{command.type_name()} is not an order command")


def _status(state: OrderState, status: OrderStatus) -> OrderState:
    return state.model_copy(update={"status": status})


def evolve(state: OrderState | None, event: Event) -> OrderState:
    """The order after ``event``."""
    if isinstance(event, OrderPlaced):
        currency = event.items[0].unit_price.currency if event.items else "XXX"
        return OrderState(
            status=OrderStatus.PLACED,
            items=event.items,
            shipping_address=event.shipping_address,
            currency=currency,
        )
    if state is None:
        raise ValueError(f"{event.type_name()} before OrderPlaced")
    match event:
        case OrderItemAdded(item=item):
            return state.model_copy(update={"items": (*state.items, item)})
        case OrderItemRemoved(product_id=product_id):
            return state.model_copy(
                update={"items": tuple(i for i in state.items if i.product_id != product_id)}
            )
        case ShippingAddressUpdated(shipping_address=address):
            return state.model_copy(update={"shipping_address": address})
        case OrderConfirmed():
            return _status(state, OrderStatus.CONFIRMED)
        case OrderPaid(amount=amount):
            return state.model_copy(update={"status": OrderStatus.PAID, "paid": state.paid + amount.amount})
        case OrderShipped():
            return _status(state, OrderStatus.SHIPPED)
        case OrderDelivered():
            return _status(state, OrderStatus.DELIVERED)
        case OrderCancelled():
            return _status(state, OrderStatus.CANCELLED)
        case OrderRefunded(amount=amount):
            return state.model_copy(update={"refunded": state.refunded + amount.amount})
    raise ValueError(f"{event.type_name()} is not an order event")


ORDER: Aggregate[OrderState] = Aggregate("order", OrderState, decide, evolve)
"""The Order aggregate."""
