"""Scheduled commands on the wire: the headers that say when and where a command is to be delivered.

A scheduled command is the command record exactly as its command topic would hold it (same key, value
and headers), published to ``scheduled-commands`` instead, with two more headers: the command topic it
is for and the earliest delivery time. The scheduler (``esflow scheduler run``) delivers it unchanged, so
it keeps its command id and the processor's idempotency absorbs a re-send.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import NamedTuple

HEADER_NOT_BEFORE = "esflow-not-before"
"""Earliest delivery, milliseconds since the epoch (decimal ASCII)."""
HEADER_TARGET = "esflow-target-topic"
"""The command topic the command is delivered to."""
HEADER_KEY = "esflow-scheduled-key"
"""In the scheduler's state only: the command's own key (the state record's key is its source position)."""
SCHEDULING_HEADERS = frozenset({HEADER_NOT_BEFORE, HEADER_TARGET, HEADER_KEY})


def due_millis(not_before: datetime) -> int:
    """``not_before`` in milliseconds since the epoch; a naive datetime is refused (ValueError)."""
    if not_before.tzinfo is None or not_before.utcoffset() is None:
        raise ValueError("not_before must be timezone-aware (e.g. datetime.now(UTC) + timedelta(...))")
    return int(not_before.timestamp() * 1000)


def schedule_headers(not_before: datetime, target_topic: str) -> list[tuple[str, bytes]]:
    """The headers that make a command record a scheduled one (``not_before`` must be timezone-aware)."""
    return [(HEADER_NOT_BEFORE, str(due_millis(not_before)).encode()), (HEADER_TARGET, target_topic.encode())]


class Schedule(NamedTuple):
    """What a scheduled record's headers say."""

    not_before: float
    """Epoch seconds."""
    target_topic: str
    key: bytes | None
    """From :data:`HEADER_KEY` when present (state records), else None."""
    headers: list[tuple[str, bytes]]
    """The command's own headers, without the scheduling ones."""


def read_schedule(headers: Iterable[tuple[str, bytes | str | None]] | None) -> Schedule:
    """Parse a scheduled record's headers; raises ValueError naming what is missing or malformed."""
    not_before: float | None = None
    target: str | None = None
    key: bytes | None = None
    own: list[tuple[str, bytes]] = []
    for name, raw in headers or ():
        value = raw if isinstance(raw, bytes) else (raw or "").encode()
        if name == HEADER_NOT_BEFORE:
            not_before = int(value.decode("ascii")) / 1000  # ValueError on garbage
        elif name == HEADER_TARGET:
            target = value.decode("utf-8")
        elif name == HEADER_KEY:
            key = value
        else:
            own.append((name, value))
    if not_before is None or not target:
        raise ValueError(f"a scheduled command needs the headers {HEADER_NOT_BEFORE} and {HEADER_TARGET}")
    return Schedule(not_before, target, key, own)


def state_headers(
    own: Iterable[tuple[str, bytes]], not_before: float, target_topic: str, key: bytes | None
) -> list[tuple[str, bytes]]:
    """The headers of the scheduler's state record of a command: its own, the schedule and its key."""
    out = [
        *own,
        (HEADER_NOT_BEFORE, str(round(not_before * 1000)).encode()),
        (HEADER_TARGET, target_topic.encode()),
    ]
    if key is not None:
        out.append((HEADER_KEY, key))
    return out
