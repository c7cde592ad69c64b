"""Product (inventory): commands and events."""

from __future__ import annotations

from typing import ClassVar
from uuid import UUID

from esflow.domain.messages import AggregateType, Command, Event
from esflow.domain.values import Int32, Money


class _Product:
    aggregate_type: ClassVar[AggregateType] = "product"


class RegisterProduct(_Product, Command):
    """Add a product to the catalogue."""

    sku: str
    name: str
    category: str
    price: Money


class ChangePrice(_Product, Command):
    """Set a new unit price."""

    price: Money


class ReceiveStock(_Product, Command):
    """Book goods received into stock."""

    quantity: Int32


class ReserveStock(_Product, Command):
    """Hold units for an order (idempotent per order)."""

    order_id: UUID
    quantity: Int32


class ReleaseStock(_Product, Command):
    """Give back the units held for an order."""

    order_id: UUID


class DiscontinueProduct(_Product, Command):
    """Stop selling a product: no new reservations."""

    reason: str | None = None


class ProductRegistered(_Product, Event):
    """A product was added to the catalogue."""

    sku: str
    name: str
    category: str
    price: Money


class PriceChanged(_Product, Event):
    """The unit price changed (v2: decimal + currency; v1 integer cents are upcast)."""

    schema_version: ClassVar[int] = 2

    price: Money


class StockReceived(_Product, Event):
    """Goods were booked into stock."""

    quantity: Int32


class StockReserved(_Product, Event):
    """Units were held for an order."""

    order_id: UUID
    quantity: Int32


class StockReleased(_Product, Event):
    """The units held for an order were given back."""

    order_id: UUID
    quantity: Int32


class ProductDiscontinued(_Product, Event):
    """The product accepts no new reservations."""

    reason: str | None = None
