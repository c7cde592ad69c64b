"""The two key spaces of command-results never meet, and a report reads back as the sender's rejection."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from esflow.domain.aggregates import AGGREGATES
from esflow.messaging.results import DeadLetterReport, answer_key, is_report_key, report_key

# Kafka's legal topic characters (kafka.common.internals.Topic): letters, digits, '.', '_' and '-'.
topics = st.text(st.sampled_from("abcXYZ019._-"), min_size=1, max_size=40)


@given(st.sampled_from(sorted(AGGREGATES)), st.uuids(), st.uuids(), topics, st.integers(0, 10**4),
       st.integers(0, 2**62))  # fmt: skip
def test_answer_and_report_keys_never_collide(
    aggregate_type: str,
    aggregate_id: uuid.UUID,
    command_id: uuid.UUID,
    topic: str,
    partition: int,
    offset: int,
) -> None:
    answer = answer_key(aggregate_type, str(aggregate_id), str(command_id))
    report = report_key(topic, partition, offset)
    assert answer != report
    assert not is_report_key(answer)
    assert is_report_key(report)


def test_report_round_trip_and_rejection() -> None:
    claimed, mine = uuid.uuid4(), uuid.uuid4()
    report = DeadLetterReport(
        reason="wrong_partition", message="murmur2 puts this key on partition 1, not 0",
        topic="commands.account", partition=0, offset=7, aggregate_type="account",
        claimed_command_id=claimed, processed_at=datetime.now(UTC),
    )  # fmt: skip
    assert DeadLetterReport.from_bytes(report.to_bytes()) == report
    assert b'"status":"dead_lettered"' in report.to_bytes()
    # The sender's own id, not the claimed one: the report is matched by position, not by claim.
    rejection = report.as_rejection(mine)
    assert (rejection.command_id, rejection.status, rejection.reason) == (mine, "rejected", "wrong_partition")
    assert dict(report.headers())["esflow-result-status"] == b"dead_lettered"
