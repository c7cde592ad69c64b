"""What the processor writes to the compacted ``command-results`` topic: answers and dead-letter reports.

Two key spaces that can never collide (docs/domain.md, "Who may answer"):

- an **answer** (:class:`CommandResult`) to a command the processor decided, keyed by
  :func:`answer_key` = ``<aggregate_type>/<aggregate_id>/<command_id>``. Only the partition that owns the
  aggregate writes under it, and a repeated command id within the aggregate's idempotency window gets the
  same bytes again, so a key's answer cannot be replaced by anything a producer sends;
- a **dead-letter report** (:class:`DeadLetterReport`) for input the processor refused before any
  aggregate decided it, keyed by :func:`report_key` = ``dead-letter/<topic>/<partition>/<offset>``, the
  position of the refused record: only that record can cause it, whatever ids its body or headers claim.

JSON rather than Avro: results are a request/response channel between producers and the processor, never
part of the event log, and the processor stores recent answers verbatim inside aggregate snapshots (the
idempotency window), so re-sending one is a byte copy.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Literal, NamedTuple
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

Status = Literal["accepted", "rejected"]
REPORT_STATUS = "dead_lettered"

RESULT_CONTENT_TYPE = "application/vnd.esflow.command-result+json"
HEADER_STATUS = "esflow-result-status"
HEADER_REASON = "esflow-result-reason"
HEADER_REPLAYED = "esflow-result-replayed"
"""Set (to ``1``) on an answer re-sent for a repeated command id: the same bytes as the first answer."""

# Reason codes of results that no aggregate decided (bad input found before the aggregate was asked).
UNDECODABLE = "undecodable"
UNKNOWN_COMMAND_TYPE = "unknown_command_type"
INVALID_COMMAND = "invalid_command"
WRONG_TOPIC = "wrong_topic"
WRONG_KEY = "wrong_key"
WRONG_PARTITION = "wrong_partition"
PROCESSING_ERROR = "processing_error"


def answer_key(aggregate_type: str, aggregate_id: str, command_id: str) -> bytes:
    """The ``command-results`` key of the answer to a decided command."""
    return f"{aggregate_type}/{aggregate_id}/{command_id}".encode()


def report_key(topic: str, partition: int, offset: int) -> bytes:
    """The ``command-results`` key of the dead-letter report for the record at that position.

    Kafka topic names hold only ``[a-zA-Z0-9._-]``, so this can never equal an :func:`answer_key`
    (aggregate type names hold no ``-``; the first segment here is ``dead-letter``).
    """
    return f"dead-letter/{topic}/{partition}/{offset}".encode()


class EventRef(BaseModel):
    """Where one appended event landed."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    event_id: UUID
    type: str
    aggregate_version: int
    topic: str
    partition: int
    offset: int


class AppendedEvent(NamedTuple):
    """:class:`EventRef`'s fields as a plain tuple, for the processor's hot path.

    The processor appends events for every accepted command; building a pydantic model per event only
    to serialise it again cost more than encoding the event. ``offset`` is -1 until the broker's delivery
    report names it.
    """

    event_id: str
    type: str
    aggregate_version: int
    topic: str
    partition: int
    offset: int


class CommandResult(BaseModel):
    """What became of one command: accepted (new version, appended events) or rejected (reason code)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    command_id: UUID
    status: Status
    aggregate_type: str | None = None
    aggregate_id: str | None = None
    version: int | None = Field(
        None, description="The aggregate's version after the command (unchanged when rejected)."
    )
    events: tuple[EventRef, ...] = ()
    reason: str | None = Field(None, description="Machine-readable reason code when rejected.")
    message: str | None = None
    details: Mapping[str, str | int | None] = Field(default_factory=dict)
    correlation_id: UUID | None = None
    processed_at: datetime

    def to_bytes(self) -> bytes:
        """The JSON value written to ``command-results``."""
        return self.model_dump_json(exclude_defaults=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> CommandResult:
        """Parse a value of ``command-results``."""
        return cls.model_validate_json(data)

    def headers(self) -> list[tuple[str, bytes]]:
        """Headers for filtering results without parsing them."""
        out = [("content-type", RESULT_CONTENT_TYPE.encode()), (HEADER_STATUS, self.status.encode())]
        if self.reason:
            out.append((HEADER_REASON, self.reason.encode()))
        return out


class DeadLetterReport(BaseModel):
    """Why the record at ``topic``/``partition``/``offset`` was dead-lettered instead of decided.

    Written under :func:`report_key` of that position. ``claimed_command_id`` is what the record's body
    says its command id is, when the body can still be read that far: informational only (anyone can
    claim any id), which is why the report never goes under an answer's key.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    status: Literal["dead_lettered"] = "dead_lettered"
    reason: str = Field(description="Machine-readable bad-input reason code.")
    message: str
    topic: str
    partition: int
    offset: int
    aggregate_type: str = Field(description="The aggregate type whose command topic the record was on.")
    claimed_command_id: UUID | None = None
    processed_at: datetime

    def to_bytes(self) -> bytes:
        """The JSON value written to ``command-results``."""
        return self.model_dump_json(exclude_none=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> DeadLetterReport:
        """Parse a report value of ``command-results``."""
        return cls.model_validate_json(data)

    def headers(self) -> list[tuple[str, bytes]]:
        """Headers for filtering without parsing, like an answer's."""
        return [
            ("content-type", RESULT_CONTENT_TYPE.encode()),
            (HEADER_STATUS, REPORT_STATUS.encode()),
            (HEADER_REASON, self.reason.encode()),
        ]

    def as_rejection(self, command_id: UUID) -> CommandResult:
        """The rejection a sender who wrote this record sees for its command (it knows its own id)."""
        return CommandResult(
            command_id=command_id,
            status="rejected",
            aggregate_type=self.aggregate_type,
            reason=self.reason,
            message=self.message,
            processed_at=self.processed_at,
        )


def is_report_key(key: bytes | None) -> bool:
    """True for the key of a dead-letter report (no answer key starts so)."""
    return key is not None and key.startswith(b"dead-letter/")


_DATETIME_JSON = TypeAdapter(datetime).dump_json


def datetime_json(moment: datetime) -> bytes:
    """A datetime as a JSON string, exactly as the result models write it."""
    return _DATETIME_JSON(moment)


ACCEPTED_HEADERS: list[tuple[str, bytes]] = [
    ("content-type", RESULT_CONTENT_TYPE.encode()),
    (HEADER_STATUS, b"accepted"),
]
"""The headers :meth:`CommandResult.headers` gives an accepted result."""


def json_string(value: str) -> bytes:
    """``value`` as a JSON string, as pydantic writes it (UTF-8, non-ASCII characters not escaped).

    Ids and names are printable ASCII, which needs escaping only for the quote and the backslash: a few
    string checks instead of ``json.dumps`` on the hot path (results and snapshots, per command).
    """
    if value.isascii() and value.isprintable() and '"' not in value and "\\" not in value:
        return b'"' + value.encode() + b'"'
    return json.dumps(value, ensure_ascii=False).encode()


def accepted_json(
    *,
    command_id: str,
    aggregate_type: str,
    aggregate_id: str,
    version: int,
    events: Sequence[AppendedEvent],
    correlation_id: str | None,
    processed_at: datetime | bytes,
) -> bytes:
    """The bytes ``CommandResult(status="accepted", ...).to_bytes()`` writes, without building the models.

    The processor answers every accepted command; building the result and event-ref models only to dump
    them again cost more than deciding the command. ``command_id``, ``correlation_id`` and each event id
    are UUID strings in canonical form; ``events`` holds one :class:`AppendedEvent` per appended event;
    ``processed_at`` may be given as :func:`datetime_json` bytes.
    A unit test keeps the bytes equal to the model's.
    """
    out = [
        b'{"command_id":"', command_id.encode(), b'","status":"accepted","aggregate_type":',
        json_string(aggregate_type), b',"aggregate_id":', json_string(aggregate_id),
        b',"version":', str(version).encode(),
    ]  # fmt: skip
    if events:
        refs = []
        for event_id, type_name, aggregate_version, topic, partition, offset in events:
            refs.append(
                b'{"event_id":"%s","type":%s,"aggregate_version":%d,"topic":%s,"partition":%d,"offset":%d}'
                % (event_id.encode(), json_string(type_name), aggregate_version, json_string(topic),
                   partition, offset)
            )  # fmt: skip
        out += [b',"events":[', b",".join(refs), b"]"]
    if correlation_id is not None:
        out += [b',"correlation_id":"', correlation_id.encode(), b'"']
    at = processed_at if isinstance(processed_at, bytes) else _DATETIME_JSON(processed_at)
    out += [b',"processed_at":', at, b"}"]
    return b"".join(out)
