"""The processor's hand-built accepted result is byte for byte what the CommandResult model writes."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone

from hypothesis import given
from hypothesis import strategies as st

from esflow.messaging.results import ACCEPTED_HEADERS, AppendedEvent, CommandResult, EventRef, accepted_json

# The characters JSON must escape, always among the candidates: random text meets them too rarely.
names = st.sampled_from(['quo"te', "back\\slash", "tab\there", "ünïcode"]) | st.text(
    st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=12
)
moments = st.datetimes(
    min_value=datetime(1970, 1, 2), max_value=datetime(9000, 1, 1),
    timezones=st.sampled_from([UTC, timezone(timedelta(hours=2)), timezone(-timedelta(hours=5, minutes=30))]),
)  # fmt: skip
refs = st.builds(
    EventRef, event_id=st.uuids(), type=names, aggregate_version=st.integers(1, 10**9), topic=names,
    partition=st.integers(0, 500), offset=st.integers(0, 2**62),
)  # fmt: skip
accepted = st.builds(
    CommandResult, command_id=st.uuids(), status=st.just("accepted"), aggregate_type=names,
    aggregate_id=names, version=st.integers(1, 10**9), events=st.lists(refs, max_size=4).map(tuple),
    correlation_id=st.none() | st.uuids(), processed_at=moments,
)  # fmt: skip


@given(accepted)
def test_accepted_json_equals_the_model(expected: CommandResult) -> None:
    assert expected.aggregate_type is not None and expected.aggregate_id is not None
    assert expected.version is not None
    got = accepted_json(
        command_id=str(expected.command_id),
        aggregate_type=expected.aggregate_type,
        aggregate_id=expected.aggregate_id,
        version=expected.version,
        events=[
            AppendedEvent(str(e.event_id), e.type, e.aggregate_version, e.topic, e.partition, e.offset)
            for e in expected.events
        ],
        correlation_id=None if expected.correlation_id is None else str(expected.correlation_id),
        processed_at=expected.processed_at,
    )
    assert got == expected.to_bytes()
    assert CommandResult.from_bytes(got) == expected


def test_accepted_headers_equal_the_model() -> None:
    result = CommandResult(
        command_id=uuid.uuid4(), status="accepted", version=1, processed_at=datetime.now(UTC)
    )
    assert result.headers() == ACCEPTED_HEADERS
