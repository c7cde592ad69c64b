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
from esflow.readmodel.tables import orders
from projections.common import Events, Row, event_types, fold_by_aggregate, json_text, values

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
