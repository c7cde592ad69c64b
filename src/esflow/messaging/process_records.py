"""What the process runtime keeps per instance: the record written to ``process.<name>.state``.

One JSON document per instance, keyed by the instance id on the compacted state topic, written in the
same Kafka transaction as the commands the instance sends and the offsets of the inputs it consumed. It
holds the definition's own state and everything the runtime owes it: durable timers, the commands still
waiting for an answer (with attempt, retry time and the command itself, so a re-send after a restart
needs nothing else) and a short history of what came in and went out (``esflow process show``).

It lives in the library, not in the runtime's deployable, because two deployables read the state topic:
the process runtime (its restore) and the ``process_instances`` projection.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

HISTORY_MAX = 64
"""History entries kept per instance: the newest, with the first (what started it) always kept."""


class PendingSend(BaseModel):
    """A command of one step that has no final answer yet."""

    model_config = ConfigDict(extra="forbid")

    step: str
    attempt: int = Field(1, ge=1, description="Names the command id; moves on after a retryable rejection.")
    tries: int = Field(1, ge=1, description="Times the step's command was written, re-sends included.")
    command_id: UUID
    aggregate_type: str
    aggregate_id: UUID
    command_type: str
    command: dict[str, Any] = Field(description="The command's payload (JSON mode), re-validated on re-send.")
    causation_id: UUID
    first_sent_at: datetime
    sent_at: datetime
    waiting: Literal["answer", "backoff"] = "answer"
    retry_at: datetime = Field(description="When to re-send: the answer timeout or the end of the backoff.")
    last_reason: str | None = None
    last_message: str | None = None


class HistoryEntry(BaseModel):
    """One line of an instance's timeline: an input in, a command out, a timer, a retry."""

    model_config = ConfigDict(extra="forbid")

    at: datetime
    direction: Literal["in", "out"]
    kind: str = Field(description="event, answer, timer, command, retry, resend")
    what: str = Field(description="Event or command type, timer name, answer outcome and reason.")
    id: UUID = Field(description="The input's id, or the command id sent.")
    causation_id: UUID | None = None
    step: str | None = None


class InstanceRecord(BaseModel):
    """One process instance as the state topic stores it."""

    model_config = ConfigDict(extra="forbid")

    process: str
    instance_id: UUID
    status: str
    step: str
    reason: str | None = None
    final: bool = False
    state: dict[str, Any] = Field(description="The definition's state model, JSON mode.")
    started_at: datetime
    updated_at: datetime
    ended_at: datetime | None = None
    timers: dict[str, datetime] = Field(default_factory=dict)
    sends: dict[str, PendingSend] = Field(default_factory=dict)
    attempts: int = Field(0, description="Re-sends so far, over all steps (retries and answer timeouts).")
    inputs: int = 0
    history: list[HistoryEntry] = Field(default_factory=list)

    def to_bytes(self) -> bytes:
        """The value written to the state topic."""
        return self.model_dump_json().encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> InstanceRecord:
        """Parse a state-topic value."""
        return cls.model_validate_json(data)

    def staged_copy(self) -> InstanceRecord:
        """A copy the open transaction may change while this one stays as committed.

        Copies only what the runtime mutates in place (the timer and send maps, the sends themselves, the
        history list); ``state`` is only ever replaced, and history entries never change. A deep copy or
        a re-validation of the whole record cost most of the time of handling an answer.
        """
        return self.model_copy(
            update={
                "timers": dict(self.timers),
                "sends": {k: v.model_copy() for k, v in self.sends.items()},
                "history": list(self.history),
            }
        )

    def log(self, entry: HistoryEntry) -> None:
        """Append to the history, keeping the first entry and the newest ones."""
        self.history.append(entry)
        if len(self.history) > HISTORY_MAX:
            del self.history[1 : len(self.history) - HISTORY_MAX + 1]

    def next_due(self) -> datetime | None:
        """The earliest timer or re-send this instance waits for (None when it waits for nothing timed)."""
        if self.final:
            return None
        moments = [*self.timers.values(), *(s.retry_at for s in self.sends.values())]
        return min(moments) if moments else None


def utc(moment: float) -> datetime:
    """A POSIX time as an aware UTC datetime."""
    return datetime.fromtimestamp(moment, UTC)
