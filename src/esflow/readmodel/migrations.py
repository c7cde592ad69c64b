"""The database layout of the read models: base-schema migrations and per-version read-model DDL.

Two kinds of schema, both created by code, never by hand-run DDL:

- the **base schema** (``ESFLOW_PROJECTION_DB_SCHEMA``) holds the registry of projection versions. It
  evolves by numbered, forward-only migrations, frozen once released, applied by `esflow db migrate`
  in order, each in its own transaction with its row in ``esflow_migrations``, under an advisory lock
  so two workers starting at once do not race;
- a **version schema** (``rm_<projection>_v<N>``) holds one projection version's tables and its own
  bookkeeping. It is created whole, from :data:`BOOKKEEPING` and the :class:`ReadModelDDL` of the
  projection's code version (declared beside the projection, see :mod:`esflow.readmodel.model`), and
  is never altered afterwards: a changed projection is a new version, rebuilt blue-green into a new
  schema (:mod:`esflow.readmodel.versions`).
"""

from __future__ import annotations

import contextlib
import hashlib
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from psycopg import sql

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
    """The tables of one projection at one code version, and the indexes a bulk load may defer.

    ``frozen`` is the :attr:`digest` of the statements as released: once a version has been deployed
    its DDL never changes (a changed read model is a new code version), and a test compares the two so
    an edit of a released version cannot slip through. Whitespace does not count.
    """

    tables: tuple[str, ...]
    indexes: tuple[str, ...] = ()
    frozen: str | None = None

    @property
    def digest(self) -> str:
        """SHA-256 of the statements with their whitespace collapsed (what ``frozen`` must equal)."""
        text = "\n".join(" ".join(statement.split()) for statement in (*self.tables, *self.indexes))
        return hashlib.sha256(text.encode()).hexdigest()


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
without gaps. The read models themselves live in versioned schemas (:func:`create_schema`)."""


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
        conn.execute(sa.text(f"CREATE SCHEMA IF NOT EXISTS {sql.Identifier(schema).as_string()}"))
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


def create_schema(
    conn: sa.Connection, schema: str, read_models: Iterable[ReadModelDDL] = (), *, indexes: bool = True
) -> None:
    """Create ``schema`` with the bookkeeping tables and the tables of ``read_models``.

    ``indexes=False`` leaves out the secondary indexes, for a bulk load that adds them afterwards with
    :func:`create_indexes`. Runs on the caller's transaction.
    """
    conn.execute(sa.text(f"CREATE SCHEMA IF NOT EXISTS {sql.Identifier(schema).as_string()}"))
    with _search_path(conn, schema):
        for statement in BOOKKEEPING:
            conn.execute(sa.text(statement))
        for ddl in read_models:
            for statement in ddl.tables:
                conn.execute(sa.text(statement))
            if indexes:
                for statement in ddl.indexes:
                    conn.execute(sa.text(statement))


def create_indexes(conn: sa.Connection, schema: str, read_models: Iterable[ReadModelDDL]) -> int:
    """Create the deferred secondary indexes of ``read_models`` in ``schema``; returns how many."""
    count = 0
    with _search_path(conn, schema):
        for ddl in read_models:
            for statement in ddl.indexes:
                conn.execute(sa.text(statement.replace("CREATE INDEX ", "CREATE INDEX IF NOT EXISTS ", 1)))
                count += 1
    return count


@contextlib.contextmanager
def _search_path(conn: sa.Connection, schema: str) -> Iterator[None]:
    # The DDL names its tables unqualified (it is the same for every version schema); point the
    # transaction at the target schema for its duration only, so the caller's statements around it
    # still resolve against the caller's own search path.
    before = conn.execute(sa.text("SELECT current_setting('search_path')")).scalar_one()
    conn.execute(sa.text(f"SET LOCAL search_path TO {sql.Identifier(schema).as_string()}"))
    try:
        yield
    finally:
        conn.execute(sa.text("SELECT set_config('search_path', :p, true)"), {"p": before})
