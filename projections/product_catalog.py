"""``product_catalog``: per product its price, stock on hand, reserved and available, discontinued."""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

from esflow.domain.messages import EventEnvelope
from esflow.domain.product import (
    PriceChanged,
    ProductDiscontinued,
    ProductRegistered,
    StockReceived,
    StockReleased,
    StockReserved,
)
from esflow.readmodel.bulk import UpsertMethod, upsert
from esflow.readmodel.tables import product_catalog
from projections.common import Events, Row, event_types, fold_by_aggregate, values

# ``available`` is a generated column: Postgres computes it, nobody writes it.
COLUMNS: Sequence[str] = tuple(c.name for c in product_catalog.columns if c.name != "available")


def fold(row: Row | None, envelope: EventEnvelope) -> Row:
    """The product row after one event (a new dict)."""
    meta = envelope.metadata
    event = envelope.event
    at = meta.occurred_at
    if isinstance(event, ProductRegistered):
        new: Row = {
            "product_id": meta.aggregate_id,
            "sku": event.sku,
            "name": event.name,
            "category": event.category,
            "price": event.price.amount,
            "currency": event.price.currency,
            "on_hand": 0,
            "reserved": 0,
            "discontinued": False,
            "discontinued_at": None,
            "registered_at": at,
        }
    else:
        if row is None:
            raise ValueError(f"{event.type_name()} for product {meta.aggregate_id} before ProductRegistered")
        new = dict(row)
        match event:
            case PriceChanged(price=price):
                new.update(price=price.amount, currency=price.currency)
            case StockReceived(quantity=quantity):
                new["on_hand"] += quantity
            case StockReserved(quantity=quantity):
                new["reserved"] += quantity
            case StockReleased(quantity=quantity):
                new["reserved"] -= quantity
            case ProductDiscontinued():
                new.update(discontinued=True, discontinued_at=at)
            case _:
                raise ValueError(f"product_catalog does not handle {event.type_name()}")
    new["version"] = meta.aggregate_version
    new["updated_at"] = at
    return new


class ProductCatalogProjection:
    """Builds ``product_catalog`` from ``events.product``."""

    name = "product_catalog"
    version = 1
    aggregates = ("product",)
    _known = event_types("product")

    def knows(self, type_name: str) -> bool:
        """Every product event."""
        return type_name in self._known

    def apply(self, conn: sa.Connection, events: Events, *, method: UpsertMethod) -> None:
        """Fold the batch into the stored rows and upsert the changed ones."""
        changed = fold_by_aggregate(conn, product_catalog, "product_id", events, fold)
        out = [values(row, COLUMNS) for row in changed]
        upsert(
            conn, product_catalog, COLUMNS, out, conflict=["product_id"], update=COLUMNS[1:], method=method
        )
