"""``daily_revenue``: per UTC day (of the event) and currency: gross, refunds, net, orders paid, refunds.

Many partitions add to one day: every column is a commutative delta, upserted in key order.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from esflow.domain.order import OrderPaid, OrderRefunded
from esflow.readmodel.bulk import UpsertMethod, upsert
from esflow.readmodel.contract import Column, View, freshness
from esflow.readmodel.migrations import ReadModelDDL
from esflow.readmodel.model import ReadModel
from esflow.readmodel.tables import MONEY
from projections.common import Events, event_types, metadata

# ------------------------------------------------------------------------------ the read model

daily_revenue = sa.Table(
    "daily_revenue",
    metadata,
    sa.Column("day", sa.Date, primary_key=True),
    sa.Column("currency", sa.CHAR(3), primary_key=True),
    sa.Column("gross", MONEY, nullable=False),
    sa.Column("refunds", MONEY, nullable=False),
    sa.Column("net", MONEY, sa.Computed("gross - refunds", persisted=True)),
    sa.Column("orders", sa.Integer, nullable=False),
    sa.Column("refund_count", sa.Integer, nullable=False),
)

DDL_V1 = ReadModelDDL(
    tables=(
        """
            CREATE TABLE daily_revenue (
                day           date          NOT NULL,
                currency      char(3)       NOT NULL,
                gross         numeric(20,2) NOT NULL,
                refunds       numeric(20,2) NOT NULL,
                net           numeric(20,2) GENERATED ALWAYS AS (gross - refunds) STORED,
                orders        integer       NOT NULL,
                refund_count  integer       NOT NULL,
                PRIMARY KEY (day, currency)
            )
        """,
    ),
    frozen="3a5c685f3694262eaf35507bc1aa0d02a0152bd014dfe6c1ebef9b5b68a3d913",
)
"""Code version 1, released: frozen (a change of these tables is a new code version)."""

VIEW = View(
    name="daily_revenue",
    projection="daily_revenue",
    table="daily_revenue",
    grain="one row per UTC day and currency with at least one payment or refund (day, currency)",
    comment=(
        "Order revenue per UTC day and currency - what was paid, what was refunded and the difference, "
        "with the number of payments and refunds. Built from OrderPaid and OrderRefunded: a payment "
        "counts on the day it was paid and a refund on the day it was refunded, so a day's net can be "
        "negative. Currencies are never converted; sum across rows of one currency only."
    ),
    freshness=freshness("daily_revenue", "the order event topic"),
    columns=(
        Column("day", "UTC calendar day of the payments and refunds in the row (from their event time)."),
        Column("currency", "ISO 4217 code of every amount in the row."),
        Column("gross", "Sum of the payments made that day (OrderPaid amounts), in currency."),
        Column(
            "refunds",
            "Sum of the refunds made that day (OrderRefunded amounts), in currency, whatever day the "
            "orders were paid.",
        ),
        Column("net", "gross - refunds, in currency, computed by Postgres (a generated column)."),
        Column("orders", "Orders paid that day (OrderPaid events; an order is paid once)."),
        Column(
            "refund_count",
            "Refunds made that day (OrderRefunded events; one order can be refunded several times).",
        ),
    ),
)

READ_MODEL = ReadModel(name="daily_revenue", tables=(daily_revenue,), ddl={1: DDL_V1}, views=(VIEW,))
"""The read model this projection builds, as `esflow db migrate`, the bi views and docs/bi.md see it."""

# ------------------------------------------------------------------------------ the projection

COLUMNS: Sequence[str] = ("day", "currency", "gross", "refunds", "orders", "refund_count")
UPDATE = {c: f"t.{c} + excluded.{c}" for c in ("gross", "refunds", "orders", "refund_count")}


class DailyRevenueProjection:
    """Builds ``daily_revenue`` from ``OrderPaid`` and ``OrderRefunded``."""

    name = "daily_revenue"
    version = 1
    read_model = READ_MODEL
    aggregates = ("order",)
    _known = event_types("order")

    def knows(self, type_name: str) -> bool:
        """Every order event (only paid and refunded count)."""
        return type_name in self._known

    def apply(self, conn: sa.Connection, events: Events, *, method: UpsertMethod) -> None:
        """Add the batch's sums per day and currency."""
        sums: dict[tuple[date, str], list[Any]] = {}
        for decoded in events:
            event = decoded.payload.event
            if not isinstance(event, OrderPaid | OrderRefunded):
                continue
            key = (decoded.payload.metadata.occurred_at.date(), event.amount.currency)
            acc = sums.setdefault(key, [Decimal("0.00"), Decimal("0.00"), 0, 0])
            if isinstance(event, OrderPaid):
                acc[0] += event.amount.amount
                acc[2] += 1
            else:
                acc[1] += event.amount.amount
                acc[3] += 1
        rows = [(day, currency, *acc) for (day, currency), acc in sorted(sums.items())]
        upsert(conn, daily_revenue, COLUMNS, rows, conflict=["day", "currency"], update=UPDATE, method=method)
