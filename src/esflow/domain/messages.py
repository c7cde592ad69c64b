"""Base classes of commands and events, and the envelopes that carry their metadata.

A message class holds the business payload only; who, when and why (ids, versions, times) travel in
the envelope beside it. Aggregates (issue 4) decide payloads and never invent ids or clocks; the
processor wraps payloads in envelopes. Each message class records which aggregate it belongs to and
which schema version it is the Python face of: always the newest, because older versions are upcast
at the edge before the domain sees them.
"""

from __future__ import annotations

from typing import ClassVar, Literal, get_args
from uuid import UUID

from pydantic import SerializeAsAny, model_validator

from esflow.domain.values import Frozen, Int64, UtcDatetime

AggregateType = Literal["product", "order", "account", "transfer"]
AGGREGATE_TYPES: tuple[AggregateType, ...] = get_args(AggregateType)
"""Every aggregate type, in catalogue order: the one list topics, projections and tools derive from."""
MessageKind = Literal["command", "event"]


class Message(Frozen):
    """A command or an event payload."""

    kind: ClassVar[MessageKind]
    aggregate_type: ClassVar[AggregateType]
    schema_version: ClassVar[int] = 1

    @classmethod
    def type_name(cls) -> str:
        """The message's type name, e.g. ``OrderPlaced`` (also the Avro record's name)."""
        return cls.__name__


class Command(Message):
    """A request to change one aggregate; it may be refused."""

    kind: ClassVar[MessageKind] = "command"


class Event(Message):
    """A fact one aggregate recorded; it is never refused, only read."""

    kind: ClassVar[MessageKind] = "event"


class EventMetadata(Frozen):
    """Who, when and why of one event; stored in the Avro record so the log reads on its own."""

    event_id: UUID
    aggregate_type: str
    aggregate_id: UUID
    aggregate_version: Int64
    occurred_at: UtcDatetime
    command_id: UUID
    correlation_id: UUID
    causation_id: UUID


class CommandMetadata(Frozen):
    """Who, when and why of one command."""

    command_id: UUID
    aggregate_type: str
    aggregate_id: UUID
    correlation_id: UUID
    causation_id: UUID | None = None
    expected_version: Int64 | None = None
    issued_at: UtcDatetime


class EventEnvelope(Frozen):
    """An event with its metadata: the unit written to an event topic."""

    metadata: EventMetadata
    event: SerializeAsAny[Event]

    @model_validator(mode="after")
    def _same_aggregate_type(self) -> EventEnvelope:
        if self.metadata.aggregate_type != self.event.aggregate_type:
            raise ValueError(
                f"{self.event.type_name()} belongs to {self.event.aggregate_type!r}, "
                f"metadata says {self.metadata.aggregate_type!r}"
            )
        return self


class CommandEnvelope(Frozen):
    """A command with its metadata: the unit written to a command topic."""

    metadata: CommandMetadata
    command: SerializeAsAny[Command]

    @model_validator(mode="after")
    def _same_aggregate_type(self) -> CommandEnvelope:
        if self.metadata.aggregate_type != self.command.aggregate_type:
            raise ValueError(
                f"{self.command.type_name()} belongs to {self.command.aggregate_type!r}, "
                f"metadata says {self.metadata.aggregate_type!r}"
            )
        return self


Envelope = EventEnvelope | CommandEnvelope
"""Either envelope; the codec encodes and decodes both."""
