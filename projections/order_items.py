"""``order_items``: one row per order line (product, quantity, agreed unit price, line total)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

import sqlalchemy as sa

from esflow.domain.order import OrderItemAdded, OrderItemRemoved, OrderPlaced
from esflow.domain.values import OrderItem
from esflow.readmodel.bulk import UpsertMethod, upsert
from esflow.readmodel.tables import order_items
from projections.common import Events, Row, event_types, values

COLUMNS: Sequence[str] = tuple(c.name for c in order_items.columns)
Key = tuple[UUID, UUID]


def _line(lines: dict[Key, Row], order_id: UUID, item: OrderItem, at: datetime) -> None:
    key = (order_id, item.product_id)
    old = lines.get(key)
    quantity = item.quantity + (old["quantity"] if old else 0)
    lines[key] = {
        "order_id": order_id,
        "product_id": item.product_id,
        "sku": item.sku,
        "quantity": quantity,
        "unit_price": item.unit_price.amount,
        "currency": item.unit_price.currency,
        "line_total": item.unit_price.amount * quantity,
        "added_at": old["added_at"] if old else at,
        "updated_at": at,
    }


class OrderItemsProjection:
    """Builds ``order_items`` from ``events.order`` (other order events are known and ignored)."""

    name = "order_items"
    version = 1
    aggregates = ("order",)
    _known = event_types("order")

    def knows(self, type_name: str) -> bool:
        """Every order event."""
        return type_name in self._known

    def apply(self, conn: sa.Connection, events: Events, *, method: UpsertMethod) -> None:
        """Fold line changes per order; upsert the lines left, delete the ones removed."""
        relevant = [
            e for e in events if isinstance(e.payload.event, OrderPlaced | OrderItemAdded | OrderItemRemoved)
        ]
        if not relevant:
            return
        order_ids = {e.payload.metadata.aggregate_id for e in relevant}
        lines: dict[Key, Row] = {}
        if order_ids:
            query = sa.select(order_items).where(
                order_items.c.order_id
                == sa.any_(sa.bindparam("ids", list(order_ids), type_=sa.ARRAY(sa.Uuid())))
            )
            for row in conn.execute(query).mappings():
                lines[(row["order_id"], row["product_id"])] = dict(row)
        before = set(lines)
        touched: set[Key] = set()
        for decoded in relevant:
            meta = decoded.payload.metadata
            event: Any = decoded.payload.event
            if isinstance(event, OrderPlaced):
                for item in event.items:
                    _line(lines, meta.aggregate_id, item, meta.occurred_at)
                    touched.add((meta.aggregate_id, item.product_id))
            elif isinstance(event, OrderItemAdded):
                _line(lines, meta.aggregate_id, event.item, meta.occurred_at)
                touched.add((meta.aggregate_id, event.item.product_id))
            else:
                key = (meta.aggregate_id, event.product_id)
                lines.pop(key, None)
                touched.add(key)
        gone = sorted((before | touched) - set(lines))
        if gone:
            conn.execute(
                sa.text(
                    "DELETE FROM order_items WHERE (order_id, product_id) IN "
                    "(SELECT * FROM unnest(CAST(:orders AS uuid[]), CAST(:products AS uuid[])))"
                ),
                {"orders": [o for o, _ in gone], "products": [p for _, p in gone]},
            )
        keep = [values(lines[k], COLUMNS) for k in sorted(touched) if k in lines]
        upsert(
            conn,
            order_items,
            COLUMNS,
            keep,
            conflict=["order_id", "product_id"],
            update=COLUMNS[2:],
            method=method,
        )
