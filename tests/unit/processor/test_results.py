"""The processor's hand-built accepted result is byte for byte what the CommandResult model writes."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone

from hypothesis import given
from hypothesis import strategies as st

from esflow.messaging.results import ACCEPTED_HEADERS, CommandResult, EventRef, accepted_json

names = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=12)
offsets = st.integers(min_value=0, max_value=2**62)
event = st.tuples(st.uuids(), names, st.integers(1, 10**9), names, st.integers(0, 500), offsets)
moments = st.datetimes(
    min_value=datetime(1970, 1, 2), max_value=datetime(9000, 1, 1),
    timezones=st.sampled_from([UTC, timezone(timedelta(hours=2)), timezone(-timedelta(hours=5, minutes=30))]),
)  # fmt: skip


def model(
    command_id: uuid.UUID,
    aggregate_type: str,
    aggregate_id: str,
    version: int,
    events: list[tuple[uuid.UUID, str, int, str, int, int]],
    correlation_id: uuid.UUID | None,
    processed_at: datetime,
) -> CommandResult:
    return CommandResult(
        command_id=command_id,
        status="accepted",
        aggregate_type=aggregate_type,
        aggregate_id=aggregate_id,
        version=version,
        events=tuple(
            EventRef(event_id=e, type=t, aggregate_version=v, topic=tp, partition=p, offset=o)
            for e, t, v, tp, p, o in events
        ),
        correlation_id=correlation_id,
        processed_at=processed_at,
    )


@given(
    st.uuids(), names, names, st.integers(1, 10**9), st.lists(event, max_size=4),
    st.none() | st.uuids(), moments,
)  # fmt: skip
def test_accepted_json_equals_the_model(
    command_id: uuid.UUID,
    aggregate_type: str,
    aggregate_id: str,
    version: int,
    events: list[tuple[uuid.UUID, str, int, str, int, int]],
    correlation_id: uuid.UUID | None,
    processed_at: datetime,
) -> None:
    expected = model(command_id, aggregate_type, aggregate_id, version, events, correlation_id, processed_at)
    got = accepted_json(
        command_id=str(command_id),
        aggregate_type=aggregate_type,
        aggregate_id=aggregate_id,
        version=version,
        events=[(str(e), t, v, tp, p, o) for e, t, v, tp, p, o in events],
        correlation_id=None if correlation_id is None else str(correlation_id),
        processed_at=processed_at,
    )
    assert got == expected.to_bytes()
    assert CommandResult.from_bytes(got) == expected


def test_accepted_headers_equal_the_model() -> None:
    result = model(uuid.uuid4(), "account", "a", 1, [], None, datetime.now(UTC))
    assert result.headers() == ACCEPTED_HEADERS
