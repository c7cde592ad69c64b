"""``event_log``: every event once, with ids, type, versions, times and its payload as JSONB.

The audit trail and the ad-hoc search table. Rows are COPYed straight in: the checkpoint already keeps
redelivered events out, so a duplicate (same position or same event id) is a bug and breaks a unique
constraint, which halts the partition instead of hiding it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from esflow.domain.messages import AGGREGATE_TYPES
from esflow.readmodel.bulk import UpsertMethod, copy_rows
from esflow.readmodel.tables import event_log
from projections.common import Events, event_types, json_text

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
    aggregates = AGGREGATE_TYPES
    _known = event_types(*AGGREGATE_TYPES)

    def knows(self, type_name: str) -> bool:
        """Every event type of the reference domain."""
        return type_name in self._known

    def apply(self, conn: sa.Connection, events: Events, *, method: UpsertMethod) -> None:
        """COPY one row per event."""
        copy_rows(conn, event_log, COLUMNS, self.rows(events))

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
