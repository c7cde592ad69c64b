"""``order_items``: one row per order line (product, quantity, agreed unit price, line total)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import UUID as PG_UUID

from esflow.domain.order import OrderItemAdded, OrderItemRemoved, OrderPlaced
from esflow.domain.values import OrderItem
from esflow.readmodel.bulk import UpsertMethod, upsert
from esflow.readmodel.contract import Column, View, freshness
from esflow.readmodel.migrations import ReadModelDDL
from esflow.readmodel.model import ReadModel
from esflow.readmodel.tables import MONEY, PRICE, ts
from projections.common import Events, Row, event_types, metadata, values

# ------------------------------------------------------------------------------ the read model

order_items = sa.Table(
    "order_items",
    metadata,
    sa.Column("order_id", PG_UUID(as_uuid=True), primary_key=True),
    sa.Column("product_id", PG_UUID(as_uuid=True), primary_key=True),
    sa.Column("sku", sa.Text, nullable=False),
    sa.Column("quantity", sa.Integer, nullable=False),
    sa.Column("unit_price", PRICE, nullable=False),
    sa.Column("currency", sa.CHAR(3), nullable=False),
    sa.Column("line_total", MONEY, nullable=False),
    ts("added_at", nullable=False),
    ts("updated_at", nullable=False),
)

DDL_V1 = ReadModelDDL(
    tables=(
        """
            CREATE TABLE order_items (
                order_id    uuid          NOT NULL,
                product_id  uuid          NOT NULL,
                sku         text          NOT NULL,
                quantity    integer       NOT NULL,
                unit_price  numeric(18,2) NOT NULL,
                currency    char(3)       NOT NULL,
                line_total  numeric(20,2) NOT NULL,
                added_at    timestamptz   NOT NULL,
                updated_at  timestamptz   NOT NULL,
                PRIMARY KEY (order_id, product_id),
                CONSTRAINT order_items_quantity_positive CHECK (quantity > 0)
            )
        """,
    ),
    indexes=("CREATE INDEX order_items_product_idx ON order_items (product_id)",),
    frozen="5845ae64b9ddb65e28449da40e1115b92db59fb8edc056f68e4e6cda374df897",
)
"""Code version 1, released: frozen (a change of these tables is a new code version)."""

VIEW = View(
    name="order_items",
    projection="order_items",
    table="order_items",
    grain="one row per order line (order_id, product_id)",
    comment=(
        "The current lines of every order, one row per product on the order, with the unit price agreed "
        "when the line was added. Built from OrderPlaced, OrderItemAdded and OrderItemRemoved: a removed "
        "line's row is deleted, and the lines of cancelled orders stay. Join orders on order_id and "
        "product_catalog on product_id, remembering that each is a separate projection with its own "
        "freshness."
    ),
    freshness=freshness("order_items", "the order event topic"),
    columns=(
        Column("order_id", "Order the line belongs to (orders.order_id)."),
        Column(
            "product_id",
            "Product ordered (product_catalog.product_id); an order has at most one line per product.",
        ),
        Column(
            "sku", "SKU as written on the order line when it was ordered, not looked up in the catalogue."
        ),
        Column("quantity", "Units ordered; always positive."),
        Column(
            "unit_price",
            "Price of one unit agreed when the line was added, in currency (not the catalogue's current "
            "price).",
        ),
        Column("currency", "ISO 4217 code of unit_price and line_total (the order's currency)."),
        Column("line_total", "quantity x unit_price, in currency."),
        Column("added_at", "When the line was added (its OrderPlaced or OrderItemAdded)."),
        Column(
            "updated_at",
            "Event time of the last event that changed the line. Equal to added_at, since a line does not "
            "change once added (a product removed and added again gets a new row).",
        ),
    ),
)

READ_MODEL = ReadModel(name="order_items", tables=(order_items,), ddl={1: DDL_V1}, views=(VIEW,))
"""The read model this projection builds, as `esflow db migrate`, the bi views and docs/bi.md see it."""

# ------------------------------------------------------------------------------ the projection

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
    read_model = READ_MODEL
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
