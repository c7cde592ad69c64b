"""The ``commands.dead-letter`` topic's contract: the headers the processor adds, and reading them back.

A dead-lettered command keeps its original bytes, key and headers; the processor adds these headers
(after removing any the record already carried under :data:`DLQ_PREFIX`, so a reader finds exactly one
reason and one source position, the processor's).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

DLQ_PREFIX = "esflow-dlq-"
DLQ_REASON = "esflow-dlq-reason"
"""The machine-readable reason code (``esflow.messaging.results``: undecodable, wrong_key, ...)."""
DLQ_ERROR = "esflow-dlq-error"
"""The error text, at most 2000 characters."""
DLQ_TOPIC = "esflow-dlq-topic"
DLQ_PARTITION = "esflow-dlq-partition"
DLQ_OFFSET = "esflow-dlq-offset"
DLQ_PROCESSOR = "esflow-dlq-processor"
"""The transactional id of the processor instance that refused the record."""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One record of the dead-letter topic, as its headers describe it."""

    at: datetime
    """When the processor wrote it (the record's timestamp)."""
    reason: str
    error: str
    topic: str
    partition: int | None
    offset: int | None
    processor: str | None

    @classmethod
    def from_record(cls, headers: Sequence[tuple[str, bytes | None]] | None, timestamp_ms: int) -> DeadLetter:
        """Read the processor's headers; a record without them (not written by esflow) says so."""
        found = {name: (value or b"").decode(errors="replace") for name, value in headers or ()}

        def number(name: str) -> int | None:
            text = found.get(name, "")
            return int(text) if text.lstrip("-").isdigit() else None

        return cls(
            at=datetime.fromtimestamp(timestamp_ms / 1000, UTC),
            reason=found.get(DLQ_REASON, "unknown"),
            error=found.get(DLQ_ERROR, "no esflow dead-letter headers"),
            topic=found.get(DLQ_TOPIC, "?"),
            partition=number(DLQ_PARTITION),
            offset=number(DLQ_OFFSET),
            processor=found.get(DLQ_PROCESSOR),
        )
