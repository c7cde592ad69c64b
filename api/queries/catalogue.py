"""Handlers of the catalogue and revenue queries, over ``bi.product_catalog`` and ``bi.daily_revenue``."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from api.queries.views import daily_revenue, product_catalog
from esflow.query.base import BadCursor, Page, Query, decode_cursor, encode_cursor
from esflow.query.bus import Handler
from esflow.query.queries import Product, ProductById, ProductCatalogue, RevenuePeriod, RevenueReport

p = product_catalog.c
PRODUCT = (
    p.product_id, p.sku, p.name, p.category, p.price, p.currency, p.on_hand, p.reserved, p.available,
    p.discontinued, p.updated_at, p.version,
)  # fmt: skip


async def product_by_id(conn: AsyncConnection, query: ProductById) -> Product | None:
    """One product."""
    row = (await conn.execute(sa.select(*PRODUCT).where(p.product_id == query.product_id))).mappings().first()
    return None if row is None else Product.model_validate(dict(row))


async def product_catalogue(conn: AsyncConnection, query: ProductCatalogue) -> Page[Product]:
    """The catalogue by SKU (then id: SKUs are unique per product, the id only makes the order total)."""
    select = sa.select(*PRODUCT)
    if query.search is not None:
        text = query.search.strip()
        select = select.where(
            sa.or_(*(c.icontains(text, autoescape=True) for c in (p.sku, p.name, p.category)))
        )
    if query.category is not None:
        select = select.where(sa.func.lower(p.category) == query.category.strip().lower())
    if query.low_stock_below is not None:
        select = select.where(p.available < query.low_stock_below)
    if not query.include_discontinued:
        select = select.where(sa.not_(p.discontinued))
    if query.after is not None:
        sku, pid = decode_cursor(query.after, 2)
        try:
            select = select.where(
                sa.tuple_(p.sku, p.product_id)
                > sa.tuple_(sa.literal(str(sku)), sa.literal(UUID(pid), p.product_id.type))
            )
        except (TypeError, ValueError) as exc:
            raise BadCursor(f"cursor {query.after[:40]!r} does not belong to this query") from exc
    rows = (await conn.execute(select.order_by(p.sku, p.product_id).limit(query.first + 1))).mappings().all()
    items = tuple(Product.model_validate(dict(r)) for r in rows[: query.first])
    more = len(rows) > query.first
    return Page[Product](
        items=items, next_cursor=encode_cursor(items[-1].sku, str(items[-1].product_id)) if more else None
    )


async def revenue_report(conn: AsyncConnection, query: RevenueReport) -> tuple[RevenuePeriod, ...]:
    """Revenue per period and currency; ISO weeks start on Monday (Postgres ``date_trunc('week')``)."""
    r = daily_revenue.c
    period = sa.cast(sa.func.date_trunc(query.granularity, r.day), sa.Date).label("period_start")
    select = (
        sa.select(
            period,
            r.currency,
            sa.func.sum(r.gross).label("gross"),
            sa.func.sum(r.refunds).label("refunds"),
            sa.func.sum(r.net).label("net"),
            sa.func.sum(r.orders).label("orders"),
            sa.func.sum(r.refund_count).label("refund_count"),
        )
        .where(r.day >= query.from_day, r.day <= query.to_day)
        .group_by(period, r.currency)
        .order_by(period, r.currency)
    )
    if query.currency is not None:
        select = select.where(r.currency == query.currency)
    rows = (await conn.execute(select)).mappings().all()
    return tuple(RevenuePeriod.model_validate(dict(row)) for row in rows)


HANDLERS: dict[type[Query[Any]], Handler] = {
    ProductById: product_by_id,
    ProductCatalogue: product_catalogue,
    RevenueReport: revenue_report,
}
"""The catalogue and revenue queries' handlers, by query type."""
