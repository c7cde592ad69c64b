"""``process_instances``: one row per process-manager instance, its status, step, deadline and retries.

Its input is not an event topic but the compacted ``process.<name>.state`` topic of every registered
process (:mod:`esflow.messaging.process_records`): the process runtime writes an instance's whole record
there in the same Kafka transaction as the commands it sends, so the latest record of an instance *is*
its state, and a row here is that record flattened. A batch may hold several records of one instance
(always on one partition, in log order): the last one wins. Rebuilding reads the compacted topic, which
keeps the latest record of every instance: the same rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.postgresql import UUID as PG_UUID

from esflow.domain.process.registry import PROCESS_NAMES
from esflow.messaging.process_records import InstanceRecord
from esflow.messaging.topics import process_source
from esflow.readmodel.bulk import UpsertMethod, upsert
from esflow.readmodel.contract import Column, View, freshness
from esflow.readmodel.migrations import ReadModelDDL
from esflow.readmodel.model import ReadModel
from esflow.readmodel.projection import Decoded
from esflow.readmodel.tables import ts
from projections.common import json_text, metadata

RECORD_TYPE = "ProcessInstance"
"""The type name the decoder gives a state-topic record (:class:`projections.registry.SourceDecoder`)."""

# ------------------------------------------------------------------------------ the read model

process_instances = sa.Table(
    "process_instances",
    metadata,
    sa.Column("process", sa.Text, primary_key=True),
    sa.Column("instance_id", PG_UUID(as_uuid=True), primary_key=True),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("step", sa.Text, nullable=False),
    sa.Column("reason", sa.Text),
    ts("started_at", nullable=False),
    ts("updated_at", nullable=False),
    ts("ended_at"),
    ts("deadline"),
    sa.Column("deadline_name", sa.Text),
    sa.Column("pending_commands", sa.Integer, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("inputs", sa.Integer, nullable=False),
    sa.Column("state", JSONB, nullable=False),
)

DDL_V1 = ReadModelDDL(
    tables=(
        """
            CREATE TABLE process_instances (
                process           text        NOT NULL,
                instance_id       uuid        NOT NULL,
                status            text        NOT NULL,
                step              text        NOT NULL,
                reason            text,
                started_at        timestamptz NOT NULL,
                updated_at        timestamptz NOT NULL,
                ended_at          timestamptz,
                deadline          timestamptz,
                deadline_name     text,
                pending_commands  integer     NOT NULL,
                attempts          integer     NOT NULL,
                inputs            integer     NOT NULL,
                state             jsonb       NOT NULL,
                PRIMARY KEY (process, instance_id)
            )
        """,
    ),
    indexes=(
        "CREATE INDEX process_instances_status_idx ON process_instances (process, status, started_at)",
        "CREATE INDEX process_instances_instance_idx ON process_instances (instance_id)",
    ),
    frozen="979c2d9859ae0fdd50d0a95f3571ec72d42677273f5cd2d1946a845314a111d2",
)
"""Code version 1, released: frozen (a change of these tables is a new code version)."""

VIEW = View(
    name="process_instances",
    projection="process_instances",
    table="process_instances",
    grain="one row per process-manager instance (process, instance_id)",
    comment=(
        "Every instance of the process managers (sagas) - order fulfilment, funds transfer - with its "
        "status, current step, deadline, re-sends and, when it compensated or failed, why. Flattened from "
        "the latest record of the instance on its process's state topic, which the process runtime writes "
        "in the same Kafka transaction as the commands the instance sends."
    ),
    freshness=freshness("process_instances", "every process state topic"),
    columns=(
        Column("process", "Process name (its definition): order_fulfilment or funds_transfer."),
        Column(
            "instance_id",
            "Instance id: the id of the aggregate the process is about (the order id for order_fulfilment, "
            "the transfer id for funds_transfer). Every command the instance sends carries it as its "
            "correlation id.",
        ),
        Column(
            "status",
            "running, completed, compensating (undoing what it did), compensated (undone; reason says "
            "why) or failed (it could not finish nor undo; a person must look).",
        ),
        Column("step", "The step the instance is at, named by its definition (e.g. reserve, charge, done)."),
        Column(
            "reason", "Why it compensated or failed (a rejection reason or deadline name); null otherwise."
        ),
        Column("started_at", "When the input that started the instance was handled."),
        Column(
            "updated_at", "When the instance last changed (an input handled, a command re-sent, a timer)."
        ),
        Column("ended_at", "When it reached completed, compensated or failed; null while it runs."),
        Column(
            "deadline",
            "The earliest timer the instance waits for (e.g. the payment deadline); null when none is set.",
        ),
        Column("deadline_name", "The name of that timer, as its definition calls it."),
        Column("pending_commands", "Commands sent that have no final answer yet."),
        Column(
            "attempts",
            "Re-sends so far over all steps: retries after a retryable rejection and re-sends after no "
            "answer came in time. 0 when every command was answered at the first try.",
        ),
        Column("inputs", "Inputs handled: the events and command answers that reached the instance."),
        Column(
            "state", "The definition's own state of the instance, as JSON (what it has reserved, charged...)."
        ),
    ),
)

READ_MODEL = ReadModel(name="process_instances", tables=(process_instances,), ddl={1: DDL_V1}, views=(VIEW,))
"""The read model this projection builds, as `esflow db migrate`, the bi views and docs/bi.md see it."""

# ------------------------------------------------------------------------------ the projection

COLUMNS: Sequence[str] = tuple(c.name for c in process_instances.columns)


def row(record: InstanceRecord) -> tuple[Any, ...]:
    """The ``process_instances`` row of one instance record, in ``COLUMNS`` order."""
    deadline = min(record.timers.items(), key=lambda kv: kv[1]) if record.timers else None
    return (
        record.process,
        record.instance_id,
        record.status,
        record.step,
        record.reason,
        record.started_at,
        record.updated_at,
        record.ended_at,
        deadline[1] if deadline else None,
        deadline[0] if deadline else None,
        len(record.sends),
        record.attempts,
        record.inputs,
        json_text(record.state),
    )


class ProcessInstancesProjection:
    """Builds ``process_instances`` from the state topic of every registered process."""

    name = "process_instances"
    version = 1
    read_model = READ_MODEL
    aggregates = tuple(process_source(p) for p in PROCESS_NAMES)

    def knows(self, type_name: str) -> bool:
        """Only instance records."""
        return type_name == RECORD_TYPE

    def apply(
        self, conn: sa.Connection, events: Sequence[Decoded[InstanceRecord]], *, method: UpsertMethod
    ) -> None:
        """Upsert the newest record of every instance in the batch."""
        latest: dict[tuple[str, Any], InstanceRecord] = {}
        for decoded in events:
            record = decoded.payload
            latest[(record.process, record.instance_id)] = record
        rows = [row(record) for record in latest.values()]
        upsert(
            conn, process_instances, COLUMNS, rows, conflict=COLUMNS[:2], update=COLUMNS[2:], method=method
        )
