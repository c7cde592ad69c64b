"""The hot path of the query side: prebuilt SQLAlchemy Core statements run on the psycopg connection.

Statements are still built with SQLAlchemy Core (nothing is written as SQL text), and compiled by
SQLAlchemy's psycopg dialect once per statement object. Running them on the pooled connection's psycopg
connection directly skips SQLAlchemy's async layer (a greenlet switch and result processing per call),
which was most of an uncached ask's time (``ops/bench/api.py``); psycopg returns uuid, numeric and
timestamptz as the Python types the answers use. The connection's transaction is the caller's: inside a
REPEATABLE READ snapshot the statement reads that snapshot.

Only statements built once (module constants, whose parameters are all bind parameters) belong here:
the compiled text is cached by the statement's identity.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import psycopg
import sqlalchemy as sa
from psycopg.rows import dict_row
from sqlalchemy.dialects.postgresql import psycopg as pg_psycopg
from sqlalchemy.ext.asyncio import AsyncConnection

_DIALECT = pg_psycopg.dialect()  # type: ignore[no-untyped-call]
_TEXTS: dict[int, tuple[sa.Executable, str, dict[str, Any]]] = {}


def compiled(statement: sa.Executable) -> tuple[str, dict[str, Any]]:
    """The SQL text of ``statement`` (psycopg's ``%(name)s`` style, compiled once) and its own values.

    The values are those of the parameters the statement fixes itself (``limit(2)`` becomes one too).
    """
    cached = _TEXTS.get(id(statement))
    if cached is None or cached[0] is not statement:
        done = cast(sa.ClauseElement, statement).compile(dialect=_DIALECT)
        fixed = {k: v for k, v in done.params.items() if v is not None}
        cached = _TEXTS[id(statement)] = (statement, str(done), fixed)
    return cached[1], cached[2]


async def fetch(
    conn: AsyncConnection, statement: sa.Executable, params: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """The rows of a prebuilt ``statement`` as dicts by column name, run on ``conn``'s psycopg connection."""
    text, fixed = compiled(statement)
    raw = await conn.get_raw_connection()
    driver = cast(psycopg.AsyncConnection[Any], raw.driver_connection)
    async with driver.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(text, {**fixed, **params}, prepare=True)
        return await cursor.fetchall()


__all__ = ["compiled", "fetch"]
