"""``product_catalog``: per product its price, stock on hand, reserved and available, discontinued."""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import UUID as PG_UUID

from esflow.domain.messages import EventEnvelope
from esflow.domain.product import (
    PriceChanged,
    ProductDiscontinued,
    ProductRegistered,
    StockReceived,
    StockReleased,
    StockReserved,
)
from esflow.readmodel.bulk import UpsertMethod, upsert
from esflow.readmodel.contract import Column, View, freshness
from esflow.readmodel.migrations import ReadModelDDL
from esflow.readmodel.model import ReadModel
from esflow.readmodel.tables import PRICE, ts
from projections.common import Events, Row, event_types, fold_by_aggregate, metadata, values

# ------------------------------------------------------------------------------ the read model

product_catalog = sa.Table(
    "product_catalog",
    metadata,
    sa.Column("product_id", PG_UUID(as_uuid=True), primary_key=True),
    sa.Column("sku", sa.Text, nullable=False),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("category", sa.Text, nullable=False),
    sa.Column("price", PRICE, nullable=False),
    sa.Column("currency", sa.CHAR(3), nullable=False),
    sa.Column("on_hand", sa.Integer, nullable=False),
    sa.Column("reserved", sa.Integer, nullable=False),
    sa.Column("available", sa.Integer, sa.Computed("on_hand - reserved", persisted=True)),
    sa.Column("discontinued", sa.Boolean, nullable=False),
    ts("discontinued_at"),
    ts("registered_at", nullable=False),
    sa.Column("version", sa.BigInteger, nullable=False),
    ts("updated_at", nullable=False),
)

DDL_V1 = ReadModelDDL(
    tables=(
        """
            CREATE TABLE product_catalog (
                product_id       uuid          PRIMARY KEY,
                sku              text          NOT NULL,
                name             text          NOT NULL,
                category         text          NOT NULL,
                price            numeric(18,2) NOT NULL,
                currency         char(3)       NOT NULL,
                on_hand          integer       NOT NULL,
                reserved         integer       NOT NULL,
                available        integer       GENERATED ALWAYS AS (on_hand - reserved) STORED,
                discontinued     boolean       NOT NULL,
                discontinued_at  timestamptz,
                registered_at    timestamptz   NOT NULL,
                version          bigint        NOT NULL,
                updated_at       timestamptz   NOT NULL
            )
        """,
    ),
    frozen="a412f6dd202a939c0f4857434b51257a16d809ef3f243b74ffbc865a28857cc3",
)
"""Code version 1, released: frozen (a change of these tables is a new code version)."""

VIEW = View(
    name="product_catalog",
    projection="product_catalog",
    table="product_catalog",
    grain="one row per registered product (product_id)",
    comment=(
        "The product catalogue with current price and stock - registration data, latest price, units "
        "received, reserved and available, and whether the product is discontinued. Folded from the "
        "product events."
    ),
    freshness=freshness("product_catalog", "the product event topic"),
    columns=(
        Column("product_id", "Product id (the product aggregate's id)."),
        Column("sku", "Stock-keeping unit code given at registration (ProductRegistered)."),
        Column("name", "Product name given at registration (ProductRegistered)."),
        Column("category", "Category given at registration (ProductRegistered)."),
        Column(
            "price",
            "Current unit price in currency - from ProductRegistered, replaced by each PriceChanged "
            "(prices changed before PriceChanged v2 were integer euro cents and read as EUR).",
        ),
        Column("currency", "ISO 4217 code of price."),
        Column(
            "on_hand",
            "Units received so far (sum of StockReceived). No event takes stock out, so it never "
            "decreases; shipping an order does not change it.",
        ),
        Column(
            "reserved",
            "Units currently reserved for orders - StockReserved adds, StockReleased gives them back.",
        ),
        Column(
            "available",
            "on_hand - reserved, computed by Postgres (a generated column): what can still be reserved.",
        ),
        Column(
            "discontinued",
            "True once the product was discontinued (ProductDiscontinued); it then takes no new "
            "reservations.",
        ),
        Column("discontinued_at", "When the product was discontinued; null while it is still sold."),
        Column("registered_at", "When the product was registered (ProductRegistered)."),
        Column(
            "version",
            "The product's aggregate version after the last event applied, i.e. how many events it has had.",
        ),
        Column(
            "updated_at",
            "Event time of the last event applied to the product, not the time the row was written.",
        ),
    ),
)

READ_MODEL = ReadModel(name="product_catalog", tables=(product_catalog,), ddl={1: DDL_V1}, views=(VIEW,))
"""The read model this projection builds, as `esflow db migrate`, the bi views and docs/bi.md see it."""

# ------------------------------------------------------------------------------ the projection

# ``available`` is a generated column: Postgres computes it, nobody writes it.
COLUMNS: Sequence[str] = tuple(c.name for c in product_catalog.columns if c.name != "available")


def fold(row: Row | None, envelope: EventEnvelope) -> Row:
    """The product row after one event (a new dict)."""
    meta = envelope.metadata
    event = envelope.event
    at = meta.occurred_at
    if isinstance(event, ProductRegistered):
        new: Row = {
            "product_id": meta.aggregate_id,
            "sku": event.sku,
            "name": event.name,
            "category": event.category,
            "price": event.price.amount,
            "currency": event.price.currency,
            "on_hand": 0,
            "reserved": 0,
            "discontinued": False,
            "discontinued_at": None,
            "registered_at": at,
        }
    else:
        if row is None:
            raise ValueError(f"{event.type_name()} for product {meta.aggregate_id} before ProductRegistered")
        new = dict(row)
        match event:
            case PriceChanged(price=price):
                new.update(price=price.amount, currency=price.currency)
            case StockReceived(quantity=quantity):
                new["on_hand"] += quantity
            case StockReserved(quantity=quantity):
                new["reserved"] += quantity
            case StockReleased(quantity=quantity):
                new["reserved"] -= quantity
            case ProductDiscontinued():
                new.update(discontinued=True, discontinued_at=at)
            case _:
                raise ValueError(f"product_catalog does not handle {event.type_name()}")
    new["version"] = meta.aggregate_version
    new["updated_at"] = at
    return new


class ProductCatalogProjection:
    """Builds ``product_catalog`` from ``events.product``."""

    name = "product_catalog"
    version = 1
    read_model = READ_MODEL
    aggregates = ("product",)
    _known = event_types("product")

    def knows(self, type_name: str) -> bool:
        """Every product event."""
        return type_name in self._known

    def apply(self, conn: sa.Connection, events: Events, *, method: UpsertMethod) -> None:
        """Fold the batch into the stored rows and upsert the changed ones."""
        changed = fold_by_aggregate(conn, product_catalog, "product_id", events, fold)
        out = [values(row, COLUMNS) for row in changed]
        upsert(
            conn, product_catalog, COLUMNS, out, conflict=["product_id"], update=COLUMNS[1:], method=method
        )
