"""The ``bi`` views the query handlers read, as SQLAlchemy Core selectables.

The API is a deployable and never imports another one, so it does not use the projections' own table
objects: it reads the published contract instead, the views of the ``bi`` schema (docs/bi.md), whose
columns only ever grow. The views point at each projection's live version and a version switch
rewrites them in one transaction, so a handler reads exactly what BI tools read. The bus's connections
put the ``bi`` schema first on their search path, so these names carry no schema (tests run each
installation under its own prefix).
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.postgresql import UUID as PG_UUID

MONEY = sa.Numeric(20, 2)


def _ts(name: str) -> sa.ColumnClause[object]:
    return sa.column(name, sa.DateTime(timezone=True))


def _uuid(name: str) -> sa.ColumnClause[object]:
    return sa.column(name, PG_UUID(as_uuid=True))


orders = sa.table(
    "orders",
    _uuid("order_id"),
    _uuid("customer_id"),
    sa.column("status", sa.Text),
    sa.column("sales_channel", sa.Text),
    sa.column("currency", sa.Text),
    sa.column("item_count", sa.Integer),
    sa.column("items_total", MONEY),
    sa.column("paid_amount", MONEY),
    sa.column("refunded_amount", MONEY),
    sa.column("lines", JSONB),
    sa.column("shipping_city", sa.Text),
    sa.column("shipping_country", sa.Text),
    sa.column("payment_ref", sa.Text),
    sa.column("carrier", sa.Text),
    sa.column("tracking_number", sa.Text),
    sa.column("cancel_reason", sa.Text),
    _ts("placed_at"),
    _ts("confirmed_at"),
    _ts("paid_at"),
    _ts("shipped_at"),
    _ts("delivered_at"),
    _ts("cancelled_at"),
    _ts("last_refunded_at"),
    sa.column("version", sa.BigInteger),
    _ts("updated_at"),
)
"""``bi.orders``: one row per order."""

daily_revenue = sa.table(
    "daily_revenue",
    sa.column("day", sa.Date),
    sa.column("currency", sa.Text),
    sa.column("gross", MONEY),
    sa.column("refunds", MONEY),
    sa.column("net", MONEY),
    sa.column("orders", sa.Integer),
    sa.column("refund_count", sa.Integer),
)
"""``bi.daily_revenue``: one row per day and currency."""

product_catalog = sa.table(
    "product_catalog",
    _uuid("product_id"),
    sa.column("sku", sa.Text),
    sa.column("name", sa.Text),
    sa.column("category", sa.Text),
    sa.column("price", MONEY),
    sa.column("currency", sa.Text),
    sa.column("on_hand", sa.Integer),
    sa.column("reserved", sa.Integer),
    sa.column("available", sa.Integer),
    sa.column("discontinued", sa.Boolean),
    _ts("discontinued_at"),
    _ts("registered_at"),
    sa.column("version", sa.BigInteger),
    _ts("updated_at"),
)
"""``bi.product_catalog``: one row per product."""

account_balances = sa.table(
    "account_balances",
    _uuid("account_id"),
    _uuid("owner_id"),
    sa.column("currency", sa.Text),
    sa.column("balance", MONEY),
    sa.column("deposits_total", MONEY),
    sa.column("withdrawals_total", MONEY),
    sa.column("status", sa.Text),
    _ts("opened_at"),
    _ts("closed_at"),
    _ts("last_activity_at"),
    sa.column("version", sa.BigInteger),
)
"""``bi.account_balances``: one row per account."""

event_log = sa.table(
    "event_log",
    sa.column("topic", sa.Text),
    sa.column("partition", sa.Integer),
    sa.column("offset", sa.BigInteger),
    _uuid("event_id"),
    sa.column("event_type", sa.Text),
    sa.column("aggregate_type", sa.Text),
    _uuid("aggregate_id"),
    sa.column("aggregate_version", sa.BigInteger),
    _ts("occurred_at"),
    sa.column("payload", JSONB),
)
"""``bi.event_log``: one row per event (the columns the handlers use)."""

process_instances = sa.table(
    "process_instances",
    sa.column("process", sa.Text),
    _uuid("instance_id"),
    sa.column("status", sa.Text),
    sa.column("step", sa.Text),
    sa.column("reason", sa.Text),
    _ts("started_at"),
    _ts("updated_at"),
    _ts("ended_at"),
    _ts("deadline"),
    sa.column("deadline_name", sa.Text),
    sa.column("pending_commands", sa.Integer),
    sa.column("attempts", sa.Integer),
    sa.column("inputs", sa.Integer),
)
"""``bi.process_instances``: one row per process-manager instance (the columns the handlers use)."""
