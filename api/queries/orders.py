"""Handlers of the order queries, over ``bi.orders`` (SQLAlchemy Core; nothing built from strings).

Lists are keyset pages, newest first on ``(placed_at, order_id)``: the cursor holds the last row's
pair and the next page starts strictly below it, so rows placed meanwhile never shift a page.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from api.queries.views import orders
from esflow.errors import EsflowError
from esflow.query.base import BadCursor, Page, Query, decode_cursor, encode_cursor
from esflow.query.bus import Handler
from esflow.query.numbers import BadOrderNumber, order_id_range, order_number
from esflow.query.queries import (
    CountOrders,
    OrderById,
    OrderByNumber,
    OrderDetails,
    OrderFilter,
    OrderLine,
    OrdersOfCustomer,
    OrderStatistics,
    OrderStatisticsQuery,
    OrderStatus,
    OrderSummary,
    SearchOrders,
    StatusTotals,
)
from esflow.query.sql import fetch


class AmbiguousOrderNumber(EsflowError):
    """Two orders share a number (their ids agree in the first 60 bits)."""


o = orders.c
SUMMARY = (
    o.order_id, o.customer_id, o.status, o.sales_channel, o.currency, o.item_count, o.items_total,
    o.placed_at, o.updated_at, o.version,
)  # fmt: skip
DETAILS = (
    *SUMMARY, o.lines, o.paid_amount, o.refunded_amount, o.shipping_city, o.shipping_country,
    o.payment_ref, o.carrier, o.tracking_number, o.cancel_reason, o.confirmed_at, o.paid_at,
    o.shipped_at, o.delivered_at, o.cancelled_at, o.last_refunded_at,
)  # fmt: skip


_SUMMARY_NAMES = tuple(c.name for c in SUMMARY)


def _summary(row: Mapping[str, Any]) -> OrderSummary:
    # Lists build many of these: constructed without validation, since the view's column types are
    # already the model's (uuid, numeric, timestamptz); only the status text becomes its enum.
    fields = dict(zip(_SUMMARY_NAMES, (row[n] for n in _SUMMARY_NAMES), strict=True))
    fields["status"] = OrderStatus(fields["status"])
    return OrderSummary.model_construct(number=order_number(fields["order_id"]), **fields)


def _details(row: Mapping[str, Any]) -> OrderDetails:
    fields: dict[str, Any] = {c.name: row[c.name] for c in DETAILS}
    lines = fields.pop("lines") or {}
    fields["lines"] = tuple(
        OrderLine(
            product_id=UUID(pid),
            sku=line["sku"],
            quantity=line["quantity"],
            unit_price=Decimal(line["unit_price"]),
            currency=line["currency"],
        )
        for pid, line in sorted(lines.items(), key=lambda kv: kv[1]["sku"])
    )
    return OrderDetails(number=order_number(row["order_id"]), **fields)


# Built once: the hottest queries run on the driver connection (esflow.query.sql), compiled once.
_BY_ID = sa.select(*DETAILS).where(o.order_id == sa.bindparam("order_id"))
_BY_NUMBER = sa.select(*DETAILS).where(o.order_id.between(sa.bindparam("lo"), sa.bindparam("hi"))).limit(2)
_OF_CUSTOMER = sa.select(*SUMMARY).where(o.customer_id == sa.bindparam("customer_id"))


async def order_by_id(conn: AsyncConnection, query: OrderById) -> OrderDetails | None:
    """One order by id."""
    rows = await fetch(conn, _BY_ID, {"order_id": query.order_id})
    return _details(rows[0]) if rows else None


async def order_by_number(conn: AsyncConnection, query: OrderByNumber) -> OrderDetails | None:
    """One order by number: an index range scan of the ids that number stands for."""
    lo, hi = order_id_range(query.number)
    rows = await fetch(conn, _BY_NUMBER, {"lo": lo, "hi": hi})
    if len(rows) > 1:
        raise AmbiguousOrderNumber(
            f"two orders have the number {query.number}", hint="ask for the order by its id instead"
        )
    return _details(rows[0]) if rows else None


def conditions(f: OrderFilter) -> list[sa.ColumnElement[bool]]:
    """The WHERE conditions of a filter (all must hold)."""
    where: list[sa.ColumnElement[bool]] = []
    if f.statuses:
        where.append(o.status.in_([s.value for s in f.statuses]))
    if f.customer_id is not None:
        where.append(o.customer_id == f.customer_id)
    if f.placed_from is not None:
        where.append(o.placed_at >= f.placed_from)
    if f.placed_to is not None:
        where.append(o.placed_at < f.placed_to)
    if f.min_total is not None:
        where.append(o.items_total >= f.min_total)
    if f.max_total is not None:
        where.append(o.items_total <= f.max_total)
    if f.currency is not None:
        where.append(o.currency == f.currency)
    if f.search is not None:
        text = f.search.strip()
        matches = [
            column.icontains(text, autoescape=True)
            for column in (o.shipping_city, o.payment_ref, o.carrier, o.tracking_number)
        ]
        try:
            lo, hi = order_id_range(text)
        except BadOrderNumber:
            pass
        else:
            matches.append(o.order_id.between(lo, hi))
        where.append(sa.or_(*matches))
    return where


def _newest_first(select: sa.Select[Any], after: str | None, first: int) -> sa.Select[Any]:
    if after is not None:
        at, oid = decode_cursor(after, 2)
        try:
            below = sa.tuple_(o.placed_at, o.order_id) < sa.tuple_(
                sa.literal(datetime.fromisoformat(at), sa.DateTime(timezone=True)),
                sa.literal(UUID(oid), o.order_id.type),
            )
        except (TypeError, ValueError) as exc:
            raise BadCursor(f"cursor {after[:40]!r} does not belong to this query") from exc
        select = select.where(below)
    return select.order_by(o.placed_at.desc(), o.order_id.desc()).limit(first + 1)


def _to_page(rows: Sequence[Mapping[str, Any]], first: int) -> Page[OrderSummary]:
    items = [_summary(r) for r in rows[:first]]
    more = len(rows) > first
    cursor = encode_cursor(items[-1].placed_at.isoformat(), str(items[-1].order_id)) if more else None
    return Page[OrderSummary](items=tuple(items), next_cursor=cursor)


async def _page(
    conn: AsyncConnection, where: list[sa.ColumnElement[bool]], after: str | None, first: int
) -> Page[OrderSummary]:
    select = _newest_first(sa.select(*SUMMARY).where(*where), after, first)
    return _to_page((await conn.execute(select)).mappings().all(), first)


_OF_CUSTOMER_FIRST_PAGE = _OF_CUSTOMER.order_by(o.placed_at.desc(), o.order_id.desc()).limit(
    sa.bindparam("limit")
)


async def orders_of_customer(conn: AsyncConnection, query: OrdersOfCustomer) -> Page[OrderSummary]:
    """A customer's orders, newest first."""
    if query.after is None:
        params = {"customer_id": query.customer_id, "limit": query.first + 1}
        return _to_page(await fetch(conn, _OF_CUSTOMER_FIRST_PAGE, params), query.first)
    return await _page(conn, [o.customer_id == query.customer_id], query.after, query.first)


async def search_orders(conn: AsyncConnection, query: SearchOrders) -> Page[OrderSummary]:
    """Orders matching a filter, newest first."""
    return await _page(conn, conditions(query.filter), query.after, query.first)


async def count_orders(conn: AsyncConnection, query: CountOrders) -> int:
    """How many orders match a filter."""
    count = await conn.execute(
        sa.select(sa.func.count()).select_from(orders).where(*conditions(query.filter))
    )
    return int(count.scalar_one())


async def order_statistics(conn: AsyncConnection, query: OrderStatisticsQuery) -> OrderStatistics:
    """Counts and totals by status and currency."""
    select = (
        sa.select(
            o.status,
            o.currency,
            sa.func.count().label("orders"),
            sa.func.coalesce(sa.func.sum(o.items_total), 0).label("items_total"),
            sa.func.coalesce(sa.func.sum(o.paid_amount), 0).label("paid_amount"),
            sa.func.coalesce(sa.func.sum(o.refunded_amount), 0).label("refunded_amount"),
        )
        .where(*conditions(query.filter))
        .group_by(o.status, o.currency)
        .order_by(o.status, o.currency)
    )
    rows = (await conn.execute(select)).mappings().all()
    totals = tuple(StatusTotals.model_validate(dict(r)) for r in rows)
    return OrderStatistics(orders=sum(t.orders for t in totals), by_status=totals)


HANDLERS: dict[type[Query[Any]], Handler] = {
    OrderById: order_by_id,
    OrderByNumber: order_by_number,
    OrdersOfCustomer: orders_of_customer,
    SearchOrders: search_orders,
    CountOrders: count_orders,
    OrderStatisticsQuery: order_statistics,
}
"""The order queries' handlers, by query type."""
