"""Order: commands and events."""

from __future__ import annotations

from typing import ClassVar
from uuid import UUID

from esflow.domain.messages import AggregateType, Command, Event
from esflow.domain.values import Address, Money, OrderItem, SalesChannel


class _Order:
    aggregate_type: ClassVar[AggregateType] = "order"


class PlaceOrder(_Order, Command):
    """Place a new order (v3 added the paying ``account_id``)."""

    schema_version: ClassVar[int] = 3

    customer_id: UUID
    items: tuple[OrderItem, ...]
    shipping_address: Address
    sales_channel: SalesChannel = SalesChannel.UNKNOWN
    account_id: UUID | None = None


class AddOrderItem(_Order, Command):
    """Add a line to an order before it is confirmed."""

    item: OrderItem


class RemoveOrderItem(_Order, Command):
    """Remove a product's line from an order before it is confirmed."""

    product_id: UUID


class UpdateShippingAddress(_Order, Command):
    """Change where an order is shipped, before it ships."""

    shipping_address: Address


class ConfirmOrder(_Order, Command):
    """Confirm an order: its lines are final."""


class MarkOrderPaid(_Order, Command):
    """Record the payment of a confirmed order."""

    payment_ref: str
    amount: Money


class ShipOrder(_Order, Command):
    """Hand a paid order to a carrier."""

    carrier: str
    tracking_number: str


class DeliverOrder(_Order, Command):
    """Record that a shipped order was delivered."""


class CancelOrder(_Order, Command):
    """Cancel an order that has not shipped."""

    reason: str


class RefundOrder(_Order, Command):
    """Refund (part of) what was paid for an order."""

    amount: Money
    reason: str


class OrderPlaced(_Order, Event):
    """An order was placed (v2 added ``sales_channel``, v3 ``account_id``; older ones read the defaults)."""

    schema_version: ClassVar[int] = 3

    customer_id: UUID
    items: tuple[OrderItem, ...]
    shipping_address: Address
    sales_channel: SalesChannel = SalesChannel.UNKNOWN
    account_id: UUID | None = None


class OrderItemAdded(_Order, Event):
    """A line was added to an order."""

    item: OrderItem


class OrderItemRemoved(_Order, Event):
    """A product's line was removed from an order."""

    product_id: UUID


class ShippingAddressUpdated(_Order, Event):
    """The shipping address of an order changed."""

    shipping_address: Address


class OrderConfirmed(_Order, Event):
    """An order was confirmed; its lines are final."""


class OrderPaid(_Order, Event):
    """An order was paid."""

    payment_ref: str
    amount: Money


class OrderShipped(_Order, Event):
    """An order was handed to a carrier."""

    carrier: str
    tracking_number: str


class OrderDelivered(_Order, Event):
    """An order was delivered."""


class OrderCancelled(_Order, Event):
    """An order was cancelled before shipping."""

    reason: str


class OrderRefunded(_Order, Event):
    """(Part of) what was paid for an order was refunded."""

    amount: Money
    reason: str
