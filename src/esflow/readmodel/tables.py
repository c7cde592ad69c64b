"""SQLAlchemy Core tables of the read models and of the projections' own bookkeeping.

The DDL lives in :mod:`esflow.readmodel.migrations` (versioned, applied by `esflow db migrate`); these
objects are how code reads and writes the tables. Tables carry no schema: the engine's search path
points at the configured one (``ESFLOW_PROJECTION_DB_SCHEMA``), so tests can run in throwaway schemas.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB, UUID

metadata = sa.MetaData()


def _ts(name: str, *, nullable: bool = True) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


MONEY = sa.Numeric(20, 2)
PRICE = sa.Numeric(18, 2)

checkpoints = sa.Table(
    "projection_checkpoints",
    metadata,
    sa.Column("projection", sa.Text, primary_key=True),
    sa.Column("topic", sa.Text, primary_key=True),
    sa.Column("partition", sa.Integer, primary_key=True),
    sa.Column("offset", sa.BigInteger, nullable=False),
    _ts("updated_at", nullable=False),
)

status = sa.Table(
    "projection_status",
    metadata,
    sa.Column("projection", sa.Text, primary_key=True),
    sa.Column("topic", sa.Text, primary_key=True),
    sa.Column("partition", sa.Integer, primary_key=True),
    sa.Column("last_offset", sa.BigInteger, nullable=False),
    _ts("last_event_at"),
    _ts("updated_at", nullable=False),
    sa.Column("lag", sa.BigInteger),
    sa.Column("events_applied", sa.BigInteger, nullable=False),
    sa.Column("halted", sa.Boolean, nullable=False),
    sa.Column("error", sa.Text),
)

dead_letters = sa.Table(
    "projection_dead_letters",
    metadata,
    sa.Column("id", sa.BigInteger, primary_key=True),
    sa.Column("projection", sa.Text, nullable=False),
    sa.Column("topic", sa.Text, nullable=False),
    sa.Column("partition", sa.Integer, nullable=False),
    sa.Column("offset", sa.BigInteger, nullable=False),
    sa.Column("key", sa.LargeBinary),
    sa.Column("value", sa.LargeBinary),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("error_type", sa.Text, nullable=False),
    _ts("recorded_at", nullable=False),
)

orders = sa.Table(
    "orders",
    metadata,
    sa.Column("order_id", UUID(as_uuid=True), primary_key=True),
    sa.Column("customer_id", UUID(as_uuid=True), nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("sales_channel", sa.Text, nullable=False),
    sa.Column("currency", sa.CHAR(3)),
    sa.Column("item_count", sa.Integer, nullable=False),
    sa.Column("items_total", MONEY, nullable=False),
    sa.Column("paid_amount", MONEY, nullable=False),
    sa.Column("refunded_amount", MONEY, nullable=False),
    sa.Column("lines", JSONB, nullable=False),
    sa.Column("shipping_city", sa.Text),
    sa.Column("shipping_country", sa.CHAR(2)),
    sa.Column("payment_ref", sa.Text),
    sa.Column("carrier", sa.Text),
    sa.Column("tracking_number", sa.Text),
    sa.Column("cancel_reason", sa.Text),
    _ts("placed_at", nullable=False),
    _ts("confirmed_at"),
    _ts("paid_at"),
    _ts("shipped_at"),
    _ts("delivered_at"),
    _ts("cancelled_at"),
    _ts("last_refunded_at"),
    sa.Column("version", sa.BigInteger, nullable=False),
    _ts("updated_at", nullable=False),
)

order_items = sa.Table(
    "order_items",
    metadata,
    sa.Column("order_id", UUID(as_uuid=True), primary_key=True),
    sa.Column("product_id", UUID(as_uuid=True), primary_key=True),
    sa.Column("sku", sa.Text, nullable=False),
    sa.Column("quantity", sa.Integer, nullable=False),
    sa.Column("unit_price", PRICE, nullable=False),
    sa.Column("currency", sa.CHAR(3), nullable=False),
    sa.Column("line_total", MONEY, nullable=False),
    _ts("added_at", nullable=False),
    _ts("updated_at", nullable=False),
)

customer_order_stats = sa.Table(
    "customer_order_stats",
    metadata,
    sa.Column("customer_id", UUID(as_uuid=True), primary_key=True),
    sa.Column("order_count", sa.Integer, nullable=False),
    sa.Column("paid_orders", sa.Integer, nullable=False),
    sa.Column("lifetime_value", MONEY, nullable=False),
    _ts("first_order_at"),
    _ts("last_order_at"),
    sa.Column("last_order_id", UUID(as_uuid=True)),
    _ts("updated_at", nullable=False),
)

customer_order_stats_orders = sa.Table(
    "customer_order_stats_orders",
    metadata,
    sa.Column("order_id", UUID(as_uuid=True), primary_key=True),
    sa.Column("customer_id", UUID(as_uuid=True), nullable=False),
)

product_catalog = sa.Table(
    "product_catalog",
    metadata,
    sa.Column("product_id", UUID(as_uuid=True), primary_key=True),
    sa.Column("sku", sa.Text, nullable=False),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("category", sa.Text, nullable=False),
    sa.Column("price", PRICE, nullable=False),
    sa.Column("currency", sa.CHAR(3), nullable=False),
    sa.Column("on_hand", sa.Integer, nullable=False),
    sa.Column("reserved", sa.Integer, nullable=False),
    sa.Column("available", sa.Integer, sa.Computed("on_hand - reserved", persisted=True)),
    sa.Column("discontinued", sa.Boolean, nullable=False),
    _ts("discontinued_at"),
    _ts("registered_at", nullable=False),
    sa.Column("version", sa.BigInteger, nullable=False),
    _ts("updated_at", nullable=False),
)

account_balances = sa.Table(
    "account_balances",
    metadata,
    sa.Column("account_id", UUID(as_uuid=True), primary_key=True),
    sa.Column("owner_id", UUID(as_uuid=True), nullable=False),
    sa.Column("currency", sa.CHAR(3), nullable=False),
    sa.Column("balance", MONEY, nullable=False),
    sa.Column("deposits_total", MONEY, nullable=False),
    sa.Column("withdrawals_total", MONEY, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    _ts("opened_at", nullable=False),
    _ts("closed_at"),
    _ts("last_activity_at", nullable=False),
    sa.Column("version", sa.BigInteger, nullable=False),
)

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

event_log = sa.Table(
    "event_log",
    metadata,
    sa.Column("topic", sa.Text, primary_key=True),
    sa.Column("partition", sa.Integer, primary_key=True),
    sa.Column("offset", sa.BigInteger, primary_key=True),
    sa.Column("event_id", UUID(as_uuid=True), nullable=False, unique=True),
    sa.Column("event_type", sa.Text, nullable=False),
    sa.Column("schema_version", sa.Integer, nullable=False),
    sa.Column("aggregate_type", sa.Text, nullable=False),
    sa.Column("aggregate_id", UUID(as_uuid=True), nullable=False),
    sa.Column("aggregate_version", sa.BigInteger, nullable=False),
    _ts("occurred_at", nullable=False),
    sa.Column("command_id", UUID(as_uuid=True), nullable=False),
    sa.Column("correlation_id", UUID(as_uuid=True), nullable=False),
    sa.Column("causation_id", UUID(as_uuid=True), nullable=False),
    sa.Column("payload", JSONB, nullable=False),
    _ts("recorded_at", nullable=False),
)

READ_MODEL_TABLES: tuple[str, ...] = (
    "orders",
    "order_items",
    "customer_order_stats",
    "product_catalog",
    "account_balances",
    "daily_revenue",
    "event_log",
)
"""The tables BI tools query, one per projection of the same name."""
