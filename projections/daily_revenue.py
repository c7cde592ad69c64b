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
from esflow.readmodel.tables import daily_revenue
from projections.common import Events, event_types

COLUMNS: Sequence[str] = ("day", "currency", "gross", "refunds", "orders", "refund_count")
UPDATE = {c: f"t.{c} + excluded.{c}" for c in ("gross", "refunds", "orders", "refund_count")}


class DailyRevenueProjection:
    """Builds ``daily_revenue`` from ``OrderPaid`` and ``OrderRefunded``."""

    name = "daily_revenue"
    version = 1
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
