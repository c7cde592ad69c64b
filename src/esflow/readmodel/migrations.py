"""The database layout of the read models: base-schema migrations and per-version read-model DDL.

Two kinds of schema, both created by code, never by hand-run DDL:

- the **base schema** (``ESFLOW_PROJECTION_DB_SCHEMA``) holds the registry of projection versions. It
  evolves by numbered, forward-only migrations, frozen once released, applied by `esflow db migrate`
  in order, each in its own transaction with its row in ``esflow_migrations``, under an advisory lock
  so two workers starting at once do not race;
- a **version schema** (``rm_<projection>_v<N>``) holds one projection version's tables and its own
  bookkeeping. It is created whole, from :data:`BOOKKEEPING` and the projection's :data:`READ_MODELS`
  DDL at its code version, and is never altered afterwards: a changed projection is a new version,
  rebuilt blue-green into a new schema (:mod:`esflow.readmodel.versions`).

The SQLAlchemy tables in :mod:`esflow.readmodel.tables` mirror the DDL; a test creates a schema with
every read model and compares the two, so they cannot drift apart silently.
"""

from __future__ import annotations

import contextlib
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import sqlalchemy as sa

from esflow.errors import MigrationError, translated


@dataclass(frozen=True)
class Migration:
    """One step of the schema's history."""

    version: int
    name: str
    statements: tuple[str, ...]


BOOKKEEPING: tuple[str, ...] = (
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
)
"""The projection's own tables, created in every schema that holds read models: checkpoints, freshness,
dead letters. A version schema has its own, so a rebuild never touches the live version's positions."""


@dataclass(frozen=True)
class ReadModelDDL:
    """The tables of one projection at one code version, and the indexes a bulk load may defer."""

    tables: tuple[str, ...]
    indexes: tuple[str, ...] = ()


READ_MODELS: Mapping[str, Mapping[int, ReadModelDDL]] = {
    "orders": {
        1: ReadModelDDL(
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
        )
    },
    "order_items": {
        1: ReadModelDDL(
            tables=(
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
            ),
            indexes=("CREATE INDEX order_items_product_idx ON order_items (product_id)",),
        )
    },
    "customer_order_stats": {
        1: ReadModelDDL(
            tables=(
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
            ),
        )
    },
    "product_catalog": {
        1: ReadModelDDL(
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
            )
        )
    },
    "account_balances": {
        1: ReadModelDDL(
            tables=(
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
            )
        )
    },
    "daily_revenue": {
        1: ReadModelDDL(
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
            )
        )
    },
    "event_log": {
        1: ReadModelDDL(
            tables=(
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
            ),
            indexes=(
                "CREATE INDEX event_log_aggregate_idx ON event_log (aggregate_id, aggregate_version)",
                "CREATE INDEX event_log_type_time_idx ON event_log (event_type, occurred_at)",
                "CREATE INDEX event_log_correlation_idx ON event_log (correlation_id)",
            ),
        )
    },
}
"""Each projection's DDL by code version. A version's DDL is frozen once released: a projection whose
tables change declares a new code version (and is rebuilt into a new schema), it never alters the old."""

_REGISTRY = (
    """
    CREATE TABLE projection_versions (
        projection    text        NOT NULL,
        version       integer     NOT NULL,
        schema_name   text        NOT NULL UNIQUE,
        code_version  integer     NOT NULL,
        aggregates    text[]      NOT NULL,
        state         text        NOT NULL,
        created_at    timestamptz NOT NULL DEFAULT now(),
        live_since    timestamptz,
        retired_at    timestamptz,
        error         text,
        PRIMARY KEY (projection, version),
        CONSTRAINT projection_versions_state_known CHECK (
            state IN ('building', 'live', 'standby', 'failed', 'dropped')
        )
    )
    """,
    # At most one live and one building version per projection, enforced by the database itself.
    "CREATE UNIQUE INDEX projection_versions_one_live ON projection_versions (projection) "
    "WHERE state = 'live'",
    "CREATE UNIQUE INDEX projection_versions_one_building ON projection_versions (projection) "
    "WHERE state = 'building'",
)

MIGRATIONS: tuple[Migration, ...] = (Migration(1, "projection versions registry", _REGISTRY),)
"""Migrations of the base schema (``ESFLOW_PROJECTION_DB_SCHEMA``), oldest first; versions are 1, 2, 3...
without gaps. The read models themselves live in versioned schemas (:data:`READ_MODELS`)."""


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
    with translated(f"migrating schema {schema}"), engine.connect() as conn:
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
                        f"schema {schema} is at version {max(unknown)}, newer than this esflow ({newest})",
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
    return applied


def _ddl(projection: str, code_version: int) -> ReadModelDDL:
    try:
        return READ_MODELS[projection][code_version]
    except KeyError:
        known = {name: sorted(versions) for name, versions in READ_MODELS.items()}
        raise MigrationError(
            f"no DDL for projection {projection!r} at code version {code_version}", hint=f"known: {known}"
        ) from None


def create_schema(
    conn: sa.Connection,
    schema: str,
    projections: Mapping[str, int] | None = None,
    *,
    indexes: bool = True,
) -> None:
    """Create ``schema`` with the bookkeeping tables and the read models of ``projections``.

    ``projections`` maps names to code versions (None: every read model at its newest code version).
    ``indexes=False`` leaves out the secondary indexes, for a bulk load that adds them afterwards with
    :func:`create_indexes`. Runs on the caller's transaction.
    """
    chosen = (
        dict(projections)
        if projections is not None
        else {name: max(versions) for name, versions in READ_MODELS.items()}
    )
    conn.execute(sa.text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
    with _search_path(conn, schema):
        for statement in BOOKKEEPING:
            conn.execute(sa.text(statement))
        for name, code_version in chosen.items():
            ddl = _ddl(name, code_version)
            for statement in ddl.tables:
                conn.execute(sa.text(statement))
            if indexes:
                for statement in ddl.indexes:
                    conn.execute(sa.text(statement))


def create_indexes(conn: sa.Connection, schema: str, projections: Mapping[str, int]) -> int:
    """Create the deferred secondary indexes of ``projections`` in ``schema``; returns how many."""
    count = 0
    with _search_path(conn, schema):
        for name, code_version in projections.items():
            for statement in _ddl(name, code_version).indexes:
                conn.execute(sa.text(statement.replace("CREATE INDEX ", "CREATE INDEX IF NOT EXISTS ", 1)))
                count += 1
    return count


@contextlib.contextmanager
def _search_path(conn: sa.Connection, schema: str) -> Iterator[None]:
    # The DDL names its tables unqualified (it is the same for every version schema); point the
    # transaction at the target schema for its duration only, so the caller's statements around it
    # still resolve against the caller's own search path.
    before = conn.execute(sa.text("SELECT current_setting('search_path')")).scalar_one()
    conn.execute(sa.text(f'SET LOCAL search_path TO "{schema}"'))
    try:
        yield
    finally:
        conn.execute(sa.text("SELECT set_config('search_path', :p, true)"), {"p": before})
