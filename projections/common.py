"""Helpers shared by the read-model projections: typed access to envelopes, loading rows by key."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from decimal import Decimal
from typing import Any
from uuid import UUID

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import UUID as PG_UUID

from esflow.domain.catalog import events_of
from esflow.domain.messages import AggregateType, EventEnvelope
from esflow.readmodel.projection import Decoded

metadata = sa.MetaData()
"""The read models' SQLAlchemy tables (declared in their projections' modules; no schema: the engine's
search path names the version schema)."""

Row = dict[str, Any]
Events = Sequence[Decoded[EventEnvelope]]


def event_types(*aggregates: AggregateType) -> frozenset[str]:
    """Every event type the given aggregates emit."""
    return frozenset(spec.name for aggregate in aggregates for spec in events_of(aggregate))


def load_rows(conn: sa.Connection, table: sa.Table, key: str, ids: Iterable[UUID]) -> dict[UUID, Row]:
    """The rows of ``table`` whose ``key`` column is in ``ids``, by key."""
    wanted = list(set(ids))
    if not wanted:
        return {}
    column = table.c[key]
    query = sa.select(table).where(column == sa.any_(sa.bindparam("ids", wanted, type_=ARRAY(PG_UUID()))))
    return {row[key]: dict(row) for row in conn.execute(query).mappings()}


def fold_by_aggregate(
    conn: sa.Connection,
    table: sa.Table,
    key: str,
    events: Events,
    fold: Callable[[Row | None, EventEnvelope], Row],
    *,
    loaded: Callable[[Row], None] | None = None,
) -> list[Row]:
    """Fold a batch into one row per aggregate: the stored row (``key`` = aggregate id) plus its events.

    Returns the rows the batch changed, in first-touched order; ``loaded`` may adjust each stored row
    before folding. The rows handed to ``fold`` belong to this call (loaded afresh, or returned by an
    earlier ``fold``), so a fold may change its input in place rather than copy it per event.
    """
    rows = load_rows(conn, table, key, (e.payload.metadata.aggregate_id for e in events))
    if loaded is not None:
        for row in rows.values():
            loaded(row)
    touched: dict[Any, Row] = {}
    for decoded in events:
        agg = decoded.payload.metadata.aggregate_id
        rows[agg] = changed = fold(rows.get(agg), decoded.payload)
        touched[agg] = changed
    return list(touched.values())


def _default(value: Any) -> Any:
    if isinstance(value, Decimal | UUID):
        return str(value)
    raise TypeError(f"cannot serialise {type(value).__name__} to JSON")


def json_text(value: Any) -> str:
    """JSON text for a jsonb column (decimals as strings, so no precision is lost)."""
    return orjson.dumps(value, default=_default).decode()


def values(row: Row, columns: Sequence[str]) -> tuple[Any, ...]:
    """A row dict as a tuple in ``columns`` order."""
    return tuple(row[c] for c in columns)
