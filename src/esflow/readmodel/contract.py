"""The stable BI contract: the views of the ``bi`` schema, their columns and what each one means.

BI tools (Metabase, Superset, psql) never read the physical tables, which live in versioned schemas
(``rm_orders_v1``, ...) that a rebuild replaces; they read one view per read model in the ``bi``
schema, which :mod:`esflow.readmodel.versions` points at the live version. A :class:`View` is what
such a view promises: its name, its columns in order, and the text that becomes ``COMMENT ON VIEW`` /
``COMMENT ON COLUMN``, so a BI user finds the documentation in the database itself (psql's describe
commands, a BI tool's data model pane). Each read model declares its views beside its projection
(:class:`esflow.readmodel.model.ReadModel`); this module holds the types and the one view that is
esflow's own, :data:`PROJECTION_STATUS`. ``docs/bi.md`` is generated from the same declarations
(:mod:`esflow.readmodel.bidocs`).

The contract is written out by hand rather than derived from the tables on purpose: a change to a
table must not silently change what BI tools see. A view's columns only ever grow, at the end; a
column is never renamed, retyped or removed.

Times are event times unless a comment says otherwise: the ``occurred_at`` the command processor put
on the event (UTC), not the moment a projection wrote the row. Amounts are exact decimals with two
places, in the currency named next to them; nothing is ever converted between currencies.

Comments are plain text (no markdown), and say what a column means, its unit, when it is null and
which event sets it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Column:
    """One column of a BI view: same name as the physical column, and its documentation."""

    name: str
    comment: str


@dataclass(frozen=True, slots=True)
class View:
    """One view of the ``bi`` schema, over one table of the projection's live version schema.

    ``projection`` is ``"*"`` for the freshness view, which unions every live version's
    ``projection_status``.
    """

    name: str
    projection: str
    table: str
    grain: str
    comment: str
    freshness: str
    columns: tuple[Column, ...]

    @property
    def column_names(self) -> tuple[str, ...]:
        """The column names, in view order."""
        return tuple(c.name for c in self.columns)


def freshness(projection: str, topic: str) -> str:
    """The freshness text of a read model's view: every one answers "how fresh" the same way."""
    return (
        f"projection_status rows with projection = '{projection}', one per partition of {topic}. They "
        "are written in the same transaction as the rows of this view, so they describe exactly the "
        "data you see - last_event_at is the time of the last event included from the partition, lag "
        "what is left to read, halted a partition that stopped."
    )


PROJECTION_STATUS = View(
    name="projection_status",
    projection="*",
    table="projection_status",
    grain="one row per projection, topic and partition that the projection's live version has read",
    comment=(
        "How fresh every read model is - for the live version of each projection, one row per Kafka "
        "partition it has read, with the last offset applied, the time of the last event included, the "
        "records still to read and whether the partition halted. Filter on projection = the name of a "
        "view to say how current that view's data is; a rebuild switches these rows together with the "
        "view they describe."
    ),
    freshness=(
        "This is the freshness view itself. Each row is written in the same transaction as the read-model "
        "rows it describes; updated_at says when that last happened. A partition the projection has not "
        "read yet has no row."
    ),
    columns=(
        Column(
            "projection", "Projection the row is about, which is also the name of its view (e.g. orders)."
        ),
        Column("topic", "Kafka topic read."),
        Column("partition", "Kafka partition read."),
        Column(
            "last_offset",
            "Offset of the last record handled in the partition (applied, or set aside as a dead letter); "
            "-1 if the partition halted before handling any.",
        ),
        Column(
            "last_event_at",
            "Event time of the last event applied from the partition: the view includes every event of "
            "the partition up to it. Null until the first event is applied.",
        ),
        Column(
            "updated_at",
            "When the projection last committed a batch or recorded a halt for the partition (database "
            "time). There is no heartbeat - an idle partition keeps an old value.",
        ),
        Column(
            "lag",
            "Events still to apply in the partition after last_offset, as the projection knew when it "
            "wrote the row; null when unknown. 0 when it had read to the end of the partition (a caught-up "
            "partition shows 0: what follows the last event is only Kafka transaction markers). Otherwise "
            "counted from the end of the partition without the commit marker that closes it - exact when "
            "the events left are one transaction, one too many for each further transaction (its marker) "
            "and each event of an aborted one. Not refreshed while nothing arrives.",
        ),
        Column(
            "events_applied",
            "Records handled in the partition by the live version since it was built, dead-lettered "
            "ones included; a rebuilt version counts again from zero.",
        ),
        Column(
            "halted",
            "True when the partition stopped on a projection bug, a constraint violation or bad input "
            "(with ESFLOW_PROJECTION_ON_BAD_INPUT=halt). Nothing more is applied from it until its worker "
            "restarts; the next batch applied then sets it back to false.",
        ),
        Column("error", "Why the partition halted; null when it has not."),
    ),
)
