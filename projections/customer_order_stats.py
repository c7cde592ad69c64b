"""``customer_order_stats``: per customer, orders placed and paid, lifetime value, first and last order.

A customer's orders live on many partitions (the key is the order id), so two workers may update one
customer at once: every column is written as a commutative delta (counts and sums add, times take the
min or max), and the order's customer, which ``OrderPaid`` and ``OrderRefunded`` do not carry, comes
from this projection's own ``customer_order_stats_orders`` map (same partition as the order's events).
Lifetime value is what was paid minus what was refunded, in the order's currency: the reference
domain assumes one currency per customer.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import UUID as PG_UUID

from esflow.domain.order import OrderPaid, OrderPlaced, OrderRefunded
from esflow.readmodel.bulk import UpsertMethod, upsert
from esflow.readmodel.contract import Column, View, freshness
from esflow.readmodel.migrations import ReadModelDDL
from esflow.readmodel.model import ReadModel
from esflow.readmodel.tables import MONEY, ts
from projections.common import Events, Row, event_types, load_rows, metadata, values

# ------------------------------------------------------------------------------ the read model

customer_order_stats = sa.Table(
    "customer_order_stats",
    metadata,
    sa.Column("customer_id", PG_UUID(as_uuid=True), primary_key=True),
    sa.Column("order_count", sa.Integer, nullable=False),
    sa.Column("paid_orders", sa.Integer, nullable=False),
    sa.Column("lifetime_value", MONEY, nullable=False),
    ts("first_order_at"),
    ts("last_order_at"),
    sa.Column("last_order_id", PG_UUID(as_uuid=True)),
    ts("updated_at", nullable=False),
)

customer_order_stats_orders = sa.Table(
    "customer_order_stats_orders",
    metadata,
    sa.Column("order_id", PG_UUID(as_uuid=True), primary_key=True),
    sa.Column("customer_id", PG_UUID(as_uuid=True), nullable=False),
)

DDL_V1 = ReadModelDDL(
    tables=(
        """
            CREATE TABLE customer_order_stats (
                customer_id     uuid          PRIMARY KEY,
                order_count     integer       NOT NULL,
                paid_orders     integer       NOT NULL,
                lifetime_value  numeric(20,2) NOT NULL,
                first_order_at  timestamptz,
                last_order_at   timestamptz,
                last_order_id   uuid,
                updated_at      timestamptz   NOT NULL
            )
        """,
        # Which customer placed an order: OrderPaid and OrderRefunded carry only the order id.
        """
            CREATE TABLE customer_order_stats_orders (
                order_id     uuid PRIMARY KEY,
                customer_id  uuid NOT NULL
            )
        """,
    ),
    frozen="7309c4449d7b21168286a34ac071031f5b5355c94d96e12bd488b98d1c1da831",
)
"""Code version 1, released: frozen (a change of these tables is a new code version)."""

VIEW = View(
    name="customer_order_stats",
    projection="customer_order_stats",
    table="customer_order_stats",
    grain="one row per customer who has placed an order (customer_id)",
    comment=(
        "Per customer - orders placed and paid, lifetime value, first and last order. Built from "
        "OrderPlaced, OrderPaid and OrderRefunded; cancelling an order changes nothing here. There is no "
        "currency column: the amounts of all the customer's orders are added as they are, which is "
        "meaningful only when they share one currency (nothing enforces that)."
    ),
    freshness=freshness("customer_order_stats", "the order event topic"),
    columns=(
        Column("customer_id", "Customer (the customer_id of OrderPlaced, as in orders.customer_id)."),
        Column("order_count", "Orders the customer placed, cancelled ones included (OrderPlaced)."),
        Column(
            "paid_orders",
            "Orders of the customer that were paid (OrderPaid), including ones cancelled or refunded later.",
        ),
        Column(
            "lifetime_value",
            "Everything paid minus everything refunded over the customer's orders (OrderPaid and "
            "OrderRefunded amounts), in the orders' currency; different currencies are added unconverted.",
        ),
        Column(
            "first_order_at",
            "When the customer's earliest order was placed (OrderPlaced); set with the row.",
        ),
        Column("last_order_at", "When the customer's most recent order was placed (OrderPlaced)."),
        Column(
            "last_order_id",
            "The customer's most recently placed order (orders.order_id); on equal times, the greatest id.",
        ),
        Column(
            "updated_at",
            "Event time of the latest event counted for the customer (OrderPlaced, OrderPaid or "
            "OrderRefunded), not the time the row was written.",
        ),
    ),
)

READ_MODEL = ReadModel(
    name="customer_order_stats",
    tables=(customer_order_stats, customer_order_stats_orders),
    ddl={1: DDL_V1},
    views=(VIEW,),
)
"""The read model this projection builds, as `esflow db migrate`, the bi views and docs/bi.md see it."""

# ------------------------------------------------------------------------------ the projection

COLUMNS: Sequence[str] = tuple(c.name for c in customer_order_stats.columns)

UPDATE = {
    "order_count": "t.order_count + excluded.order_count",
    "paid_orders": "t.paid_orders + excluded.paid_orders",
    "lifetime_value": "t.lifetime_value + excluded.lifetime_value",
    "first_order_at": "LEAST(t.first_order_at, excluded.first_order_at)",
    # SET expressions all see the old row, so last_order_id compares against the old last_order_at.
    "last_order_id": (
        "CASE WHEN excluded.last_order_at IS NOT NULL AND (t.last_order_at IS NULL OR "
        "(excluded.last_order_at, excluded.last_order_id) > (t.last_order_at, t.last_order_id)) "
        "THEN excluded.last_order_id ELSE t.last_order_id END"
    ),
    "last_order_at": "GREATEST(t.last_order_at, excluded.last_order_at)",
    "updated_at": "GREATEST(t.updated_at, excluded.updated_at)",
}


def _delta(deltas: dict[UUID, Row], customer: UUID, at: datetime) -> Row:
    row = deltas.get(customer)
    if row is None:
        row = {
            "customer_id": customer,
            "order_count": 0,
            "paid_orders": 0,
            "lifetime_value": Decimal("0.00"),
            "first_order_at": None,
            "last_order_at": None,
            "last_order_id": None,
            "updated_at": at,
        }
        deltas[customer] = row
    row["updated_at"] = max(row["updated_at"], at)
    return row


class CustomerOrderStatsProjection:
    """Builds ``customer_order_stats`` from ``events.order``."""

    name = "customer_order_stats"
    version = 1
    read_model = READ_MODEL
    aggregates = ("order",)
    _known = event_types("order")

    def knows(self, type_name: str) -> bool:
        """Every order event (only placed, paid and refunded change the stats)."""
        return type_name in self._known

    def apply(self, conn: sa.Connection, events: Events, *, method: UpsertMethod) -> None:
        """Add the batch's deltas to the customers' rows."""
        relevant = [e for e in events if isinstance(e.payload.event, OrderPlaced | OrderPaid | OrderRefunded)]
        if not relevant:
            return
        needs_lookup = {
            e.payload.metadata.aggregate_id for e in relevant if not isinstance(e.payload.event, OrderPlaced)
        }
        owners: dict[UUID, UUID] = {
            k: r["customer_id"]
            for k, r in load_rows(conn, customer_order_stats_orders, "order_id", needs_lookup).items()
        }
        new_owners: dict[UUID, UUID] = {}
        deltas: dict[UUID, Row] = {}
        for decoded in relevant:
            meta = decoded.payload.metadata
            event: Any = decoded.payload.event
            order_id = meta.aggregate_id
            at = meta.occurred_at
            if isinstance(event, OrderPlaced):
                owners[order_id] = new_owners[order_id] = event.customer_id
                row = _delta(deltas, event.customer_id, at)
                row["order_count"] += 1
                row["first_order_at"] = min(row["first_order_at"] or at, at)
                if row["last_order_at"] is None or (at, order_id) > (
                    row["last_order_at"],
                    row["last_order_id"],
                ):
                    row["last_order_at"], row["last_order_id"] = at, order_id
                continue
            customer = owners.get(order_id)
            if customer is None:
                raise ValueError(
                    f"{event.type_name()} for order {order_id}, whose OrderPlaced was never seen"
                )
            row = _delta(deltas, customer, at)
            if isinstance(event, OrderPaid):
                row["paid_orders"] += 1
                row["lifetime_value"] += event.amount.amount
            else:
                row["lifetime_value"] -= event.amount.amount
        if new_owners:
            upsert(
                conn,
                customer_order_stats_orders,
                ["order_id", "customer_id"],
                sorted(new_owners.items()),
                conflict=["order_id"],
                method=method,
            )
        # Sorted keys: two workers lock shared customers in the same order, so they cannot deadlock.
        rows = [values(deltas[c], COLUMNS) for c in sorted(deltas)]
        upsert(
            conn, customer_order_stats, COLUMNS, rows, conflict=["customer_id"], update=UPDATE, method=method
        )
