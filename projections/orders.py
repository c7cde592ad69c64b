"""``orders``: one row per order with its status, totals and the time of every stage.

Events of one order share a key, hence a partition, hence one worker and log order: the projection
loads the batch's orders, folds the events in memory and writes each changed row back once. The order's
lines are kept in a JSONB column because ``OrderItemRemoved`` names only the product: the total must
forget that line's amount, and the ``order_items`` read model is another projection, with its own pace.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.postgresql import UUID as PG_UUID

from esflow.domain.messages import EventEnvelope
from esflow.domain.order import (
    OrderCancelled,
    OrderConfirmed,
    OrderDelivered,
    OrderItemAdded,
    OrderItemRemoved,
    OrderPaid,
    OrderPlaced,
    OrderRefunded,
    OrderShipped,
    ShippingAddressUpdated,
)
from esflow.domain.values import OrderItem
from esflow.readmodel.bulk import UpsertMethod, upsert
from esflow.readmodel.contract import Column, View, freshness
from esflow.readmodel.migrations import ReadModelDDL
from esflow.readmodel.model import ReadModel
from esflow.readmodel.tables import MONEY, ts
from projections.common import Events, Row, event_types, fold_by_aggregate, json_text, metadata, values

# ------------------------------------------------------------------------------ the read model

orders = sa.Table(
    "orders",
    metadata,
    sa.Column("order_id", PG_UUID(as_uuid=True), primary_key=True),
    sa.Column("customer_id", PG_UUID(as_uuid=True), nullable=False),
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
    ts("placed_at", nullable=False),
    ts("confirmed_at"),
    ts("paid_at"),
    ts("shipped_at"),
    ts("delivered_at"),
    ts("cancelled_at"),
    ts("last_refunded_at"),
    sa.Column("version", sa.BigInteger, nullable=False),
    ts("updated_at", nullable=False),
)

DDL_V1 = ReadModelDDL(
    tables=(
        """
            CREATE TABLE orders (
                order_id          uuid          PRIMARY KEY,
                customer_id       uuid          NOT NULL,
                status            text          NOT NULL,
                sales_channel     text          NOT NULL,
                currency          char(3),
                item_count        integer       NOT NULL,
                items_total       numeric(20,2) NOT NULL,
                paid_amount       numeric(20,2) NOT NULL,
                refunded_amount   numeric(20,2) NOT NULL,
                lines             jsonb         NOT NULL,
                shipping_city     text,
                shipping_country  char(2),
                payment_ref       text,
                carrier           text,
                tracking_number   text,
                cancel_reason     text,
                placed_at         timestamptz   NOT NULL,
                confirmed_at      timestamptz,
                paid_at           timestamptz,
                shipped_at        timestamptz,
                delivered_at      timestamptz,
                cancelled_at      timestamptz,
                last_refunded_at  timestamptz,
                version           bigint        NOT NULL,
                updated_at        timestamptz   NOT NULL,
                CONSTRAINT orders_status_known CHECK (
                    status IN ('PLACED', 'CONFIRMED', 'PAID', 'SHIPPED', 'DELIVERED', 'CANCELLED')
                )
            )
        """,
    ),
    indexes=(
        "CREATE INDEX orders_customer_idx ON orders (customer_id)",
        "CREATE INDEX orders_status_idx ON orders (status)",
    ),
    frozen="9d7390d5bdece1f1c1b6f5b78f37d60f0444ecd801ff47fea5817dd584827062",
)
"""Code version 1, released: frozen (a change of these tables is a new code version)."""

VIEW = View(
    name="orders",
    projection="orders",
    table="orders",
    grain="one row per order (order_id)",
    comment=(
        "Orders with their current status, totals, shipping destination, payment, shipment and the time "
        "of every stage, folded from the order events. Amounts are in the order's currency. The lines "
        "are in the lines JSON column, and one row per line in order_items, which is another projection "
        "with its own freshness."
    ),
    freshness=freshness("orders", "the order event topic"),
    columns=(
        Column("order_id", "Order id (the order aggregate's id, chosen by the sender of PlaceOrder)."),
        Column("customer_id", "Customer who placed the order, from OrderPlaced."),
        Column(
            "status",
            "Life-cycle stage - PLACED, CONFIRMED, PAID, SHIPPED, DELIVERED or CANCELLED - set by the "
            "latest stage event. A refund does not change it, and a paid order can still be CANCELLED "
            "(see paid_at).",
        ),
        Column(
            "sales_channel",
            "Where the order was placed - WEB, MOBILE, STORE or UNKNOWN (UNKNOWN also for orders placed "
            "before the channel was recorded, OrderPlaced v1).",
        ),
        Column(
            "currency",
            "ISO 4217 code of every price and amount of the order (all its lines share it), from its first "
            "line. Null only for an order placed without lines, which the order aggregate refuses.",
        ),
        Column(
            "item_count",
            "Units ordered - the sum of the quantities of the current lines, not the number of lines; "
            "changes with OrderItemAdded and OrderItemRemoved.",
        ),
        Column(
            "items_total",
            "Sum of quantity x unit price over the current lines, in currency: the amount the payment "
            "must equal.",
        ),
        Column(
            "paid_amount", "Amount paid (OrderPaid), in currency; 0.00 until paid. Refunds do not reduce it."
        ),
        Column(
            "refunded_amount",
            "Sum of the refunds (OrderRefunded), in currency; 0.00 when none. What the order finally "
            "brought in is paid_amount - refunded_amount.",
        ),
        Column(
            "lines",
            "The current lines as a JSON object keyed by product id, each "
            '{"sku", "quantity", "unit_price" (a decimal as a string), "currency"}; a removed line is gone.',
        ),
        Column(
            "shipping_city",
            "City of the shipping address, from OrderPlaced, replaced by ShippingAddressUpdated.",
        ),
        Column(
            "shipping_country",
            "Two-letter country code of the shipping address (same events as shipping_city).",
        ),
        Column("payment_ref", "Payment reference from OrderPaid; null until paid."),
        Column("carrier", "Carrier the order was handed to (OrderShipped); null until shipped."),
        Column("tracking_number", "The carrier's tracking number (OrderShipped); null until shipped."),
        Column(
            "cancel_reason", "Reason given when the order was cancelled (OrderCancelled); null otherwise."
        ),
        Column("placed_at", "When the order was placed (OrderPlaced)."),
        Column("confirmed_at", "When the order was confirmed (OrderConfirmed); null until then."),
        Column("paid_at", "When the order was paid (OrderPaid); null until then."),
        Column("shipped_at", "When the order was shipped (OrderShipped); null until then."),
        Column("delivered_at", "When the order was delivered (OrderDelivered); null until then."),
        Column("cancelled_at", "When the order was cancelled (OrderCancelled); null unless cancelled."),
        Column("last_refunded_at", "When the most recent refund happened (OrderRefunded); null when none."),
        Column(
            "version",
            "The order's aggregate version after the last event applied, i.e. how many events the order "
            "has had (1 after OrderPlaced).",
        ),
        Column(
            "updated_at",
            "Event time of the last event applied to the order, not the time the row was written.",
        ),
    ),
)

READ_MODEL = ReadModel(name="orders", tables=(orders,), ddl={1: DDL_V1}, views=(VIEW,))
"""The read model this projection builds, as `esflow db migrate`, the bi views and docs/bi.md see it."""

# ------------------------------------------------------------------------------ the projection

COLUMNS: Sequence[str] = tuple(c.name for c in orders.columns)


def _add_line(lines: dict[str, Any], item: OrderItem) -> None:
    key = str(item.product_id)
    line = lines.get(key)
    quantity = item.quantity + (line["quantity"] if line else 0)
    lines[key] = {
        "sku": item.sku,
        "quantity": quantity,
        "unit_price": str(item.unit_price.amount),
        "currency": item.unit_price.currency,
    }


def _totals(row: Row) -> None:
    lines = row["lines"]
    row["item_count"] = sum(line["quantity"] for line in lines.values())
    row["items_total"] = sum(
        (Decimal(line["unit_price"]) * line["quantity"] for line in lines.values()), Decimal("0.00")
    )


def fold(row: Row | None, envelope: EventEnvelope) -> Row:
    """The order row after one event (a new dict; ``row`` is not changed)."""
    if row is None or isinstance(envelope.event, OrderPlaced):
        return step(None, envelope)
    new = dict(row)
    new["lines"] = dict(row["lines"])
    return step(new, envelope)


_LINE_EVENTS = (OrderPlaced, OrderItemAdded, OrderItemRemoved)


def step(row: Row | None, envelope: EventEnvelope) -> Row:
    """Apply one event to ``row`` in place (a row the caller owns) and return it.

    The projection folds with this (``fold_by_aggregate`` hands it rows it owns): a replay folds many
    events per order in one batch, and copying the row (and its lines) per event, as the pure
    :func:`fold` must, and re-summing the lines after events that cannot change them, cost more than
    the rest of the projection.
    """
    meta = envelope.metadata
    event = envelope.event
    at = meta.occurred_at
    if isinstance(event, OrderPlaced):
        new: Row = dict.fromkeys(COLUMNS)
        new.update(
            order_id=meta.aggregate_id,
            customer_id=event.customer_id,
            status="PLACED",
            sales_channel=event.sales_channel.value,
            currency=event.items[0].unit_price.currency if event.items else None,
            paid_amount=Decimal("0.00"),
            refunded_amount=Decimal("0.00"),
            lines={},
            shipping_city=event.shipping_address.city,
            shipping_country=event.shipping_address.country,
            placed_at=at,
        )
        for item in event.items:
            _add_line(new["lines"], item)
    else:
        if row is None:
            raise ValueError(f"{event.type_name()} for order {meta.aggregate_id} before OrderPlaced")
        new = row
        match event:
            case OrderItemAdded(item=item):
                _add_line(new["lines"], item)
                new["currency"] = new["currency"] or item.unit_price.currency
            case OrderItemRemoved(product_id=product_id):
                new["lines"].pop(str(product_id), None)
            case ShippingAddressUpdated(shipping_address=address):
                new.update(shipping_city=address.city, shipping_country=address.country)
            case OrderConfirmed():
                new.update(status="CONFIRMED", confirmed_at=at)
            case OrderPaid(amount=amount, payment_ref=ref):
                new.update(
                    status="PAID", paid_at=at, payment_ref=ref, paid_amount=new["paid_amount"] + amount.amount
                )
            case OrderShipped(carrier=carrier, tracking_number=tracking):
                new.update(status="SHIPPED", shipped_at=at, carrier=carrier, tracking_number=tracking)
            case OrderDelivered():
                new.update(status="DELIVERED", delivered_at=at)
            case OrderCancelled(reason=reason):
                new.update(status="CANCELLED", cancelled_at=at, cancel_reason=reason)
            case OrderRefunded(amount=amount):
                new.update(last_refunded_at=at, refunded_amount=new["refunded_amount"] + amount.amount)
            case _:
                raise ValueError(f"orders does not handle {event.type_name()}")
    if isinstance(event, _LINE_EVENTS) or new["item_count"] is None:
        _totals(new)
    new["version"] = meta.aggregate_version
    new["updated_at"] = at
    return new


def _parse_lines(row: Row) -> None:
    if isinstance(row["lines"], str):  # pragma: no cover - psycopg returns jsonb as dicts
        row["lines"] = orjson.loads(row["lines"])


class OrdersProjection:
    """Builds ``orders`` from ``events.order``."""

    name = "orders"
    version = 1
    read_model = READ_MODEL
    aggregates = ("order",)
    _known = event_types("order")

    def knows(self, type_name: str) -> bool:
        """Every order event."""
        return type_name in self._known

    def apply(self, conn: sa.Connection, events: Events, *, method: UpsertMethod) -> None:
        """Fold the batch into the stored rows and upsert the changed ones."""
        changed = fold_by_aggregate(conn, orders, "order_id", events, step, loaded=_parse_lines)
        out = []
        for row in changed:
            record = dict(row)
            record["lines"] = json_text(row["lines"])
            out.append(values(record, COLUMNS))
        upsert(conn, orders, COLUMNS, out, conflict=["order_id"], update=COLUMNS[1:], method=method)
