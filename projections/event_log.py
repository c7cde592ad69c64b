"""``event_log``: every event once, with ids, type, versions, times and its payload as JSONB.

The audit trail and the ad-hoc search table. Rows are COPYed straight in: the checkpoint already keeps
redelivered events out, so a duplicate (same position or same event id) is a bug and breaks a unique
constraint, which halts the partition instead of hiding it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.postgresql import UUID as PG_UUID

from esflow.domain.messages import AGGREGATE_TYPES
from esflow.readmodel.bulk import UpsertMethod, insert_rows
from esflow.readmodel.contract import Column, View, freshness
from esflow.readmodel.migrations import ReadModelDDL
from esflow.readmodel.model import ReadModel
from esflow.readmodel.tables import ts
from projections.common import Events, event_types, json_text, metadata

# ------------------------------------------------------------------------------ the read model

event_log = sa.Table(
    "event_log",
    metadata,
    sa.Column("topic", sa.Text, primary_key=True),
    sa.Column("partition", sa.Integer, primary_key=True),
    sa.Column("offset", sa.BigInteger, primary_key=True),
    sa.Column("event_id", PG_UUID(as_uuid=True), nullable=False, unique=True),
    sa.Column("event_type", sa.Text, nullable=False),
    sa.Column("schema_version", sa.Integer, nullable=False),
    sa.Column("aggregate_type", sa.Text, nullable=False),
    sa.Column("aggregate_id", PG_UUID(as_uuid=True), nullable=False),
    sa.Column("aggregate_version", sa.BigInteger, nullable=False),
    ts("occurred_at", nullable=False),
    sa.Column("command_id", PG_UUID(as_uuid=True), nullable=False),
    sa.Column("correlation_id", PG_UUID(as_uuid=True), nullable=False),
    sa.Column("causation_id", PG_UUID(as_uuid=True), nullable=False),
    sa.Column("payload", JSONB, nullable=False),
    ts("recorded_at", nullable=False),
)

DDL_V1 = ReadModelDDL(
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
    frozen="678aadaa392e6d34459715863a36834f61b07d038c130afcd933538a232c5947",
)
"""Code version 1, released: frozen (a change of these tables is a new code version)."""

VIEW = View(
    name="event_log",
    projection="event_log",
    table="event_log",
    grain="one row per event (topic, partition, offset); event_id is unique too",
    comment=(
        "Every event of every aggregate exactly once, with its Kafka position, its metadata and its "
        "payload as JSON - the audit trail, and the place for questions no other view answers. Payloads "
        "are in the newest schema version (older events are upcast when read)."
    ),
    freshness=freshness("event_log", "every event topic"),
    columns=(
        Column(
            "topic",
            "Kafka topic the event was read from - the order, product or account event topic (events.order "
            "... with the installation's topic prefix).",
        ),
        Column("partition", "Kafka partition of the event; all events of one aggregate share it."),
        Column(
            "offset",
            'Kafka offset of the event in its partition. A reserved word in SQL - write it "offset".',
        ),
        Column("event_id", "Unique id of the event, given by the command processor."),
        Column("event_type", "Event type name, e.g. OrderPlaced, PriceChanged, FundsDeposited."),
        Column(
            "schema_version",
            "Schema version of payload - the newest esflow knows for the type, which is not necessarily "
            "the version the event was written with (older ones are upcast when read).",
        ),
        Column("aggregate_type", "Kind of aggregate the event belongs to - order, product or account."),
        Column(
            "aggregate_id",
            "Id of the aggregate the event belongs to (orders.order_id, product_catalog.product_id or "
            "account_balances.account_id).",
        ),
        Column(
            "aggregate_version",
            "Position of the event in its aggregate's history - 1, 2, 3 ... without gaps.",
        ),
        Column(
            "occurred_at",
            "When the command processor recorded the event (UTC); every event of one command shares it.",
        ),
        Column("command_id", "Id of the command that produced the event."),
        Column(
            "correlation_id",
            "Id shared by the commands and events of one business flow, set by the sender (the command's "
            "own id when it set none).",
        ),
        Column(
            "causation_id", "Id of the message that caused the event - the command's, so equal to command_id."
        ),
        Column(
            "payload",
            "The event's own fields as a JSON object, without the metadata; decimal amounts and ids are "
            "strings, times ISO 8601 strings.",
        ),
        Column(
            "recorded_at",
            "When the row was written to Postgres (the start of the projection's transaction), not the "
            "event time.",
        ),
    ),
)

READ_MODEL = ReadModel(name="event_log", tables=(event_log,), ddl={1: DDL_V1}, views=(VIEW,))
"""The read model this projection builds, as `esflow db migrate`, the bi views and docs/bi.md see it."""

# ------------------------------------------------------------------------------ the projection

COLUMNS: Sequence[str] = (
    "topic",
    "partition",
    "offset",
    "event_id",
    "event_type",
    "schema_version",
    "aggregate_type",
    "aggregate_id",
    "aggregate_version",
    "occurred_at",
    "command_id",
    "correlation_id",
    "causation_id",
    "payload",
)


class EventLogProjection:
    """Appends every event of every aggregate to ``event_log``."""

    name = "event_log"
    version = 1
    read_model = READ_MODEL
    aggregates = AGGREGATE_TYPES
    _known = event_types(*AGGREGATE_TYPES)

    def knows(self, type_name: str) -> bool:
        """Every event type of the reference domain."""
        return type_name in self._known

    def apply(self, conn: sa.Connection, events: Events, *, method: UpsertMethod) -> None:
        """Insert one row per event (COPY for large batches)."""
        insert_rows(conn, event_log, COLUMNS, self.rows(events), method=method)

    def rows(self, events: Events) -> list[tuple[Any, ...]]:
        """The event_log rows of ``events``, in ``COLUMNS`` order."""
        rows: list[tuple[Any, ...]] = []
        for decoded in events:
            envelope = decoded.payload
            meta = envelope.metadata
            event = envelope.event
            raw = decoded.raw
            rows.append(
                (
                    raw.topic,
                    raw.partition,
                    raw.offset,
                    meta.event_id,
                    decoded.type_name,
                    event.schema_version,
                    meta.aggregate_type,
                    meta.aggregate_id,
                    meta.aggregate_version,
                    meta.occurred_at,
                    meta.command_id,
                    meta.correlation_id,
                    meta.causation_id,
                    json_text(event.model_dump()),
                )
            )
        return rows
