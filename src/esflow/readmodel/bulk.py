"""Batched writes for the projections: COPY into a staging table then one upsert, or upsert from unnest.

Both run on the psycopg 3 connection under the SQLAlchemy one, so they join the caller's transaction
(the batch's single transaction, with its checkpoint). ``ops/bench/projections.py`` measures the two;
COPY is the default because it was faster here (figures in the bench output and the README).

Rows handed to :func:`upsert` must be unique per conflict key: Postgres refuses to update one row twice
in one statement, so projections fold a batch per key first.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import psycopg
import sqlalchemy as sa
from psycopg import sql
from sqlalchemy.dialects import postgresql

UpsertMethod = Literal["copy", "unnest", "auto"]
"""How :func:`upsert` ships rows: COPY into a staging table (four round trips, fastest for many rows),
one ``INSERT … SELECT FROM unnest(arrays)`` (one round trip), or ``auto``: unnest up to
:data:`UNNEST_MAX_ROWS` rows, COPY beyond."""

UNNEST_MAX_ROWS = 200
"""Where ``auto`` switches to COPY. A live batch of a few events is one statement instead of CREATE
TEMP … IF NOT EXISTS, COPY, INSERT … SELECT and a TRUNCATE (a new file for the temp table each time);
the bulk paths (rebuilds, catch-up) apply thousands of rows a batch and keep COPY."""

_DIALECT = postgresql.dialect()  # type: ignore[no-untyped-call]


def driver_connection(conn: sa.Connection) -> psycopg.Connection[Any]:
    """The psycopg connection under a SQLAlchemy one (same session, same transaction)."""
    raw = conn.connection.driver_connection
    if not isinstance(raw, psycopg.Connection):  # pragma: no cover - esflow only uses psycopg 3
        raise TypeError(f"expected a psycopg 3 connection, got {type(raw).__name__}")
    return raw


def _sql_type(table: sa.Table, column: str) -> str:
    return str(table.c[column].type.compile(dialect=_DIALECT))


def copy_rows(
    conn: sa.Connection, table: sa.Table | str, columns: Sequence[str], rows: Sequence[Sequence[Any]]
) -> None:
    """COPY ``rows`` (tuples in ``columns`` order) into ``table``; plain inserts, no conflict handling."""
    if not rows:
        return
    name = table if isinstance(table, str) else table.name
    stmt = sql.SQL("COPY {} ({}) FROM STDIN").format(
        sql.Identifier(name), sql.SQL(", ").join(sql.Identifier(c) for c in columns)
    )
    with driver_connection(conn).cursor() as cur, cur.copy(stmt) as copy:
        for row in rows:
            copy.write_row(row)


def _chosen(method: UpsertMethod, rows: Sequence[object]) -> UpsertMethod:
    """``copy`` or ``unnest``: what ``auto`` means for this many rows."""
    if method == "auto":
        return "unnest" if len(rows) <= UNNEST_MAX_ROWS else "copy"
    return method


def insert_rows(
    conn: sa.Connection,
    table: sa.Table,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    method: UpsertMethod = "copy",
) -> None:
    """Insert ``rows`` (tuples in ``columns`` order) into ``table``; plain inserts, a conflict raises.

    ``auto`` ships a live batch (up to :data:`UNNEST_MAX_ROWS`) as one ``INSERT … SELECT FROM unnest``,
    one round trip where COPY is two (the COPY, then its data); larger ones by COPY.
    """
    if not rows:
        return
    if _chosen(method, rows) == "copy":
        copy_rows(conn, table, columns, rows)
        return
    stmt = _unnest_statement(table, tuple(columns), (), None, None)
    with driver_connection(conn).cursor() as cur:
        cur.execute(stmt, [list(col) for col in zip(*rows, strict=True)])


def _conflict_clause(
    conflict: Sequence[str], update: Mapping[str, str] | Sequence[str] | None
) -> sql.Composable:
    target = sql.SQL(", ").join(sql.Identifier(c) for c in conflict)
    if not update:
        return sql.SQL("ON CONFLICT ({}) DO NOTHING").format(target)
    if isinstance(update, Mapping):
        sets = [sql.SQL("{} = {}").format(sql.Identifier(c), sql.SQL(expr)) for c, expr in update.items()]
    else:
        sets = [sql.SQL("{} = excluded.{}").format(sql.Identifier(c), sql.Identifier(c)) for c in update]
    return sql.SQL("ON CONFLICT ({}) DO UPDATE SET {}").format(target, sql.SQL(", ").join(sets))


def upsert(
    conn: sa.Connection,
    table: sa.Table,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    conflict: Sequence[str],
    update: Mapping[str, str] | Sequence[str] | None = None,
    method: UpsertMethod = "copy",
) -> None:
    """Insert ``rows`` into ``table``, resolving key conflicts with ``update``.

    ``update`` is either column names (take the new value) or ``{column: SQL expression}`` where the
    expression may use the target row as ``t`` and the new one as ``excluded``, e.g.
    ``{"orders": "t.orders + excluded.orders"}``; ``None`` keeps the existing row.
    """
    if not rows:
        return
    method = _chosen(method, rows)
    raw = driver_connection(conn)
    with raw.cursor() as cur:
        if method == "copy":
            cols = sql.SQL(", ").join(sql.Identifier(c) for c in columns)
            on_conflict = _conflict_clause(conflict, update)
            stage = f"_stage_{table.name}"
            # The staging table lives as long as the connection; ON COMMIT DELETE ROWS empties it.
            cur.execute(
                sql.SQL(
                    "CREATE TEMP TABLE IF NOT EXISTS {} (LIKE {} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
                ).format(sql.Identifier(stage), sql.Identifier(table.name))
            )
            with cur.copy(sql.SQL("COPY {} ({}) FROM STDIN").format(sql.Identifier(stage), cols)) as copy:
                for row in rows:
                    copy.write_row(row)
            cur.execute(
                sql.SQL("INSERT INTO {} AS t ({}) SELECT {} FROM {} {}").format(
                    sql.Identifier(table.name), cols, cols, sql.Identifier(stage), on_conflict
                )
            )
            # A second upsert into the same table in this transaction must not see these rows again.
            cur.execute(sql.SQL("TRUNCATE {}").format(sql.Identifier(stage)))
        else:
            as_map = tuple(update.items()) if isinstance(update, Mapping) else None
            as_cols = tuple(update) if update and not isinstance(update, Mapping) else None
            stmt = _unnest_statement(table, tuple(columns), tuple(conflict), as_map, as_cols)
            cur.execute(stmt, [list(col) for col in zip(*rows, strict=True)])


@functools.lru_cache(maxsize=256)
def _unnest_statement(
    table: sa.Table,
    columns: tuple[str, ...],
    conflict: tuple[str, ...],
    update_map: tuple[tuple[str, str], ...] | None,
    update_cols: tuple[str, ...] | None,
) -> bytes:
    """The unnest upsert of ``table`` (no ``conflict``: a plain insert), built once.

    Composing it per batch was a tenth of a live host's CPU.
    """
    cols = sql.SQL(", ").join(sql.Identifier(c) for c in columns)
    arrays = []
    for c in columns:
        sql_type = _sql_type(table, c)
        # psycopg cannot infer an array type from dicts/str for jsonb: ship text, cast per element.
        # %b: binary parameters. psycopg dumps a list as text by escaping every element with a regular
        # expression, in Python: 1.9 ms for the 25 columns of 25 orders rows, against 0.35 ms binary,
        # and a fifth of a projector host's CPU at 450 commands/s.
        arrays.append(sql.SQL("%b::{}[]").format(sql.SQL("text" if sql_type == "JSONB" else sql_type)))
    selects = [
        sql.SQL("u.{}::jsonb" if _sql_type(table, c) == "JSONB" else "u.{}").format(sql.Identifier(c))
        for c in columns
    ]
    updates: Mapping[str, str] | Sequence[str] | None = dict(update_map) if update_map else update_cols
    stmt = sql.SQL("INSERT INTO {} AS t ({}) SELECT {} FROM unnest({}) AS u ({}) {}").format(
        sql.Identifier(table.name),
        cols,
        sql.SQL(", ").join(selects),
        sql.SQL(", ").join(arrays),
        cols,
        _conflict_clause(conflict, updates) if conflict else sql.SQL(""),  # none: a plain insert
    )
    return stmt.as_bytes(None)
