"""What a projection is, independent of Faust: decoded events in, rows out, inside the batch's transaction.

The runtime (``projections/``) feeds batches of :class:`RawEvent` from Kafka; a :class:`Decoder` turns
bytes into :class:`Decoded` events (or fails: the event becomes a :class:`Rejected` dead letter); the
:class:`Projection` writes its rows on the connection it is given, which already holds the batch's
transaction and the checkpoint locks. Projections never commit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, Protocol, TypeVar

import sqlalchemy as sa

from esflow.readmodel.bulk import UpsertMethod
from esflow.readmodel.model import ReadModel

TP = tuple[str, int]
"""A (topic, partition) pair."""

E = TypeVar("E")


@dataclass(frozen=True, slots=True)
class RawEvent:
    """One Kafka record as the runtime received it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int | None = None

    @property
    def tp(self) -> TP:
        """The record's (topic, partition)."""
        return (self.topic, self.partition)


@dataclass(frozen=True, slots=True)
class Decoded(Generic[E]):
    """A record decoded into the newest model of its type."""

    raw: RawEvent
    type_name: str
    occurred_at: datetime
    payload: E


@dataclass(frozen=True, slots=True)
class Rejected:
    """A record a projection cannot apply: undecodable, or of a type it does not handle."""

    raw: RawEvent
    reason: str
    error_type: str


Item = Decoded[Any] | Rejected


class Decoder(Protocol[E]):
    """Turns a raw record into a decoded event; raises on anything it cannot decode."""

    def __call__(self, raw: RawEvent) -> Decoded[E]:
        """Decode ``raw`` or raise (any exception makes the record a dead letter)."""
        ...


class Projection(Protocol[E]):
    """A read model built from the event topics of some aggregates."""

    @property
    def name(self) -> str:
        """Unique name; also the checkpoint key and the suffix of the consumer group."""
        ...

    @property
    def version(self) -> int:
        """Code version, bumped whenever the projection's tables or logic change.

        A new code version is a new projection version, rebuilt blue-green into its own schema; its DDL is
        keyed by this number.
        """
        ...

    @property
    def read_model(self) -> ReadModel:
        """What the projection writes: its tables, their DDL per code version, its BI views."""
        ...

    @property
    def aggregates(self) -> tuple[str, ...]:
        """Aggregates whose event topics (``events.<aggregate>``) the projection reads."""
        ...

    def knows(self, type_name: str) -> bool:
        """True for every event type of its topics it handles (applying or deliberately ignoring it)."""
        ...

    def apply(self, conn: sa.Connection, events: Sequence[Decoded[E]], *, method: UpsertMethod) -> None:
        """Write the effect of ``events`` (in log order per partition) on ``conn``; never commit."""
        ...


def records_left(last: int, end: int | None, *, at_end: bool = False) -> int | None:
    """The records still to apply in a partition after offset ``last``: its ``lag``.

    ``end`` is where a read_committed consumer stops (the last stable offset: the high watermark when
    no transaction is open); None when not known yet, which makes the lag unknown. ``at_end``: the
    consumer has read everything before ``end`` and delivered nothing after ``last``, so whatever
    offsets remain are transaction markers or records of aborted transactions: nothing to apply.

    Otherwise the count is the offsets after ``last`` up to ``end``, less one for the commit marker
    that closes the log: the event topics are written in Kafka transactions (the command processor's),
    and every committed transaction takes one offset for its marker after its records. So a caught-up
    partition (``last`` = ``end`` - 2) shows 0, and one whose remaining records are one transaction
    shows their exact number; each further transaction among them adds its marker (the count is an
    upper bound then), as do records of aborted transactions.
    """
    if at_end:
        return 0
    if end is None or end < 0:
        return None
    return max(0, end - last - 2)


def prepare(projection: Projection[E], decoder: Decoder[E], raws: Sequence[RawEvent]) -> list[Item]:
    """Decode a batch; failures and unknown types become :class:`Rejected` items, in place."""
    items: list[Item] = []
    for raw in raws:
        if raw.value is None:
            items.append(Rejected(raw, "record has no value (tombstone)", "EmptyRecord"))
            continue
        try:
            decoded = decoder(raw)
        except Exception as exc:  # untrusted bytes: every failure to decode is a dead letter, never a crash
            items.append(Rejected(raw, str(exc) or repr(exc), type(exc).__name__))
            continue
        if not projection.knows(decoded.type_name):
            reason = f"projection {projection.name} does not handle {decoded.type_name}"
            items.append(Rejected(raw, reason, "UnknownEventType"))
            continue
        items.append(decoded)
    return items
