"""SQLAlchemy Core tables of the projections' own bookkeeping, and column helpers for read-model tables.

The DDL lives in :mod:`esflow.readmodel.migrations` (:data:`~esflow.readmodel.migrations.BOOKKEEPING`,
created in every version schema); these objects are how code reads and writes the tables. The read
models' own tables are declared beside their projections (:class:`esflow.readmodel.model.ReadModel`).
Tables carry no schema: the engine's search path points at the configured one
(``ESFLOW_PROJECTION_DB_SCHEMA``), so tests can run in throwaway schemas.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()


def ts(name: str, *, nullable: bool = True) -> sa.Column[object]:
    """A ``timestamptz`` column."""
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


MONEY = sa.Numeric(20, 2)
"""``numeric(20,2)``: amounts and totals."""
PRICE = sa.Numeric(18, 2)
"""``numeric(18,2)``: unit prices."""

checkpoints = sa.Table(
    "projection_checkpoints",
    metadata,
    sa.Column("projection", sa.Text, primary_key=True),
    sa.Column("topic", sa.Text, primary_key=True),
    sa.Column("partition", sa.Integer, primary_key=True),
    sa.Column("offset", sa.BigInteger, nullable=False),
    ts("updated_at", nullable=False),
)

status = sa.Table(
    "projection_status",
    metadata,
    sa.Column("projection", sa.Text, primary_key=True),
    sa.Column("topic", sa.Text, primary_key=True),
    sa.Column("partition", sa.Integer, primary_key=True),
    sa.Column("last_offset", sa.BigInteger, nullable=False),
    ts("last_event_at"),
    ts("updated_at", nullable=False),
    sa.Column("lag", sa.BigInteger),
    sa.Column("events_applied", sa.BigInteger, nullable=False),
    sa.Column("halted", sa.Boolean, nullable=False),
    sa.Column("error", sa.Text),
)

dead_letters = sa.Table(
    "projection_dead_letters",
    metadata,
    sa.Column("id", sa.BigInteger, primary_key=True),
    sa.Column("projection", sa.Text, nullable=False),
    sa.Column("topic", sa.Text, nullable=False),
    sa.Column("partition", sa.Integer, nullable=False),
    sa.Column("offset", sa.BigInteger, nullable=False),
    sa.Column("key", sa.LargeBinary),
    sa.Column("value", sa.LargeBinary),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("error_type", sa.Text, nullable=False),
    ts("recorded_at", nullable=False),
)
