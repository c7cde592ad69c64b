"""Versioned, forward-only migrations of the read-model schema, applied by `esflow db migrate`.

Each migration is a numbered list of SQL statements, frozen once released: a change to a table is a new
migration, never an edit of an old one. `migrate` applies the missing ones in order, each in its own
transaction together with its row in ``esflow_migrations``, under an advisory lock so two workers
starting at once do not race. The SQLAlchemy tables in :mod:`esflow.readmodel.tables` mirror the result;
a test migrates an empty schema and compares the two, so they cannot drift apart silently.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa

from esflow.errors import MigrationError, translate


@dataclass(frozen=True)
class Migration:
    """One step of the schema's history."""

    version: int
    name: str
    statements: tuple[str, ...]


_INITIAL = (
    # --- bookkeeping of the projections themselves -------------------------------------------------
    """
    CREATE TABLE projection_checkpoints (
        projection  text        NOT NULL,
        topic       text        NOT NULL,
        partition   integer     NOT NULL,
        "offset"    bigint      NOT NULL,
        updated_at  timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (projection, topic, partition)
    )
    """,
    """
    CREATE TABLE projection_status (
        projection      text        NOT NULL,
        topic           text        NOT NULL,
        partition       integer     NOT NULL,
        last_offset     bigint      NOT NULL,
        last_event_at   timestamptz,
        updated_at      timestamptz NOT NULL DEFAULT now(),
        lag             bigint,
        events_applied  bigint      NOT NULL DEFAULT 0,
        halted          boolean     NOT NULL DEFAULT false,
        error           text,
        PRIMARY KEY (projection, topic, partition)
    )
    """,
    """
    CREATE TABLE projection_dead_letters (
        id           bigserial   PRIMARY KEY,
        projection   text        NOT NULL,
        topic        text        NOT NULL,
        partition    integer     NOT NULL,
        "offset"     bigint      NOT NULL,
        key          bytea,
        value        bytea,
        reason       text        NOT NULL,
        error_type   text        NOT NULL,
        recorded_at  timestamptz NOT NULL DEFAULT now(),
        UNIQUE (projection, topic, partition, "offset")
    )
    """,
    # --- read models -------------------------------------------------------------------------------
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
    "CREATE INDEX orders_customer_idx ON orders (customer_id)",
    "CREATE INDEX orders_status_idx ON orders (status)",
    """
    CREATE TABLE order_items (
        order_id    uuid          NOT NULL,
        product_id  uuid          NOT NULL,
        sku         text          NOT NULL,
        quantity    integer       NOT NULL,
        unit_price  numeric(18,2) NOT NULL,
        currency    char(3)       NOT NULL,
        line_total  numeric(20,2) NOT NULL,
        added_at    timestamptz   NOT NULL,
        updated_at  timestamptz   NOT NULL,
        PRIMARY KEY (order_id, product_id),
        CONSTRAINT order_items_quantity_positive CHECK (quantity > 0)
    )
    """,
    "CREATE INDEX order_items_product_idx ON order_items (product_id)",
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
    """
    CREATE TABLE account_balances (
        account_id         uuid          PRIMARY KEY,
        owner_id           uuid          NOT NULL,
        currency           char(3)       NOT NULL,
        balance            numeric(20,2) NOT NULL,
        deposits_total     numeric(20,2) NOT NULL,
        withdrawals_total  numeric(20,2) NOT NULL,
        status             text          NOT NULL,
        opened_at          timestamptz   NOT NULL,
        closed_at          timestamptz,
        last_activity_at   timestamptz   NOT NULL,
        version            bigint        NOT NULL,
        CONSTRAINT account_balances_status_known CHECK (status IN ('OPEN', 'FROZEN', 'CLOSED'))
    )
    """,
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
    """
    CREATE TABLE event_log (
        topic              text        NOT NULL,
        partition          integer     NOT NULL,
        "offset"           bigint      NOT NULL,
        event_id           uuid        NOT NULL,
        event_type         text        NOT NULL,
        schema_version     integer     NOT NULL,
        aggregate_type     text        NOT NULL,
        aggregate_id       uuid        NOT NULL,
        aggregate_version  bigint      NOT NULL,
        occurred_at        timestamptz NOT NULL,
        command_id         uuid        NOT NULL,
        correlation_id     uuid        NOT NULL,
        causation_id       uuid        NOT NULL,
        payload            jsonb       NOT NULL,
        recorded_at        timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (topic, partition, "offset"),
        CONSTRAINT event_log_event_id_once UNIQUE (event_id)
    )
    """,
    "CREATE INDEX event_log_aggregate_idx ON event_log (aggregate_id, aggregate_version)",
    "CREATE INDEX event_log_type_time_idx ON event_log (event_type, occurred_at)",
    "CREATE INDEX event_log_correlation_idx ON event_log (correlation_id)",
)

MIGRATIONS: tuple[Migration, ...] = (Migration(1, "projection bookkeeping and read models", _INITIAL),)
"""Every migration, oldest first; versions are 1, 2, 3... without gaps."""

_LEDGER = """
CREATE TABLE IF NOT EXISTS esflow_migrations (
    version     integer     PRIMARY KEY,
    name        text        NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)
"""


def _lock_key(schema: str) -> int:
    # One advisory lock per schema: migrations of different schemas (tests) do not wait on each other.
    return zlib.crc32(f"esflow-migrate:{schema}".encode())


def applied_versions(conn: sa.Connection) -> list[int]:
    """Versions recorded in the schema's ledger (empty when it was never migrated)."""
    exists = conn.execute(sa.text("SELECT to_regclass('esflow_migrations')")).scalar_one()
    if exists is None:
        return []
    return list(conn.execute(sa.text("SELECT version FROM esflow_migrations ORDER BY version")).scalars())


def migrate(
    engine: sa.Engine, schema: str, *, migrations: Sequence[Migration] = MIGRATIONS, target: int | None = None
) -> list[Migration]:
    """Bring ``schema`` up to ``target`` (default: the newest); return the migrations applied now.

    The engine's connections must have ``schema`` first on their search path (see
    :func:`esflow.readmodel.store.create_engine`).
    """
    newest = migrations[-1].version if migrations else 0
    goal = newest if target is None else target
    if goal > newest:
        raise MigrationError(f"no migration {goal}: the newest this esflow knows is {newest}")
    applied: list[Migration] = []
    try:
        with engine.connect() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
            conn.commit()
            for migration in migrations:
                if migration.version > goal:
                    break
                with conn.begin():
                    conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _lock_key(schema)})
                    conn.execute(sa.text(_LEDGER))
                    done = applied_versions(conn)
                    unknown = [v for v in done if v > newest]
                    if unknown:
                        raise MigrationError(
                            f"schema {schema} is at version {max(unknown)}, newer than this esflow "
                            f"({newest})",
                            hint="run the newer esflow, or restore the database",
                        )
                    if migration.version in done:
                        continue
                    for statement in migration.statements:
                        conn.execute(sa.text(statement))
                    conn.execute(
                        sa.text("INSERT INTO esflow_migrations (version, name) VALUES (:v, :n)"),
                        {"v": migration.version, "n": migration.name},
                    )
                applied.append(migration)
    except MigrationError:
        raise
    except Exception as exc:
        raise translate(exc, context=f"migrating schema {schema}") from exc
    return applied
