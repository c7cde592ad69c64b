"""The console's pure parts: live records left, dead-letter headers, outcome rates (no servers)."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

from esflow.messaging.deadletters import (
    DLQ_ERROR,
    DLQ_OFFSET,
    DLQ_PARTITION,
    DLQ_REASON,
    DLQ_TOPIC,
    DeadLetter,
)
from esflow.messaging.watch import PipelineWatch
from esflow.readmodel.status import live_records_left
from esflow.settings import KafkaSettings, TopicSettings


def _row(topic: str, partition: int, last: int, lag: int | None) -> dict[str, object]:
    return {"topic": topic, "partition": partition, "last_offset": last, "lag": lag}


def test_records_left_counts_from_the_partition_ends_and_leaves_out_the_commit_marker() -> None:
    rows = [_row("e", 0, 9, 0), _row("e", 1, 4, 0)]
    # Partition 0 caught up (last event 9, marker 10, end 11); partition 1 has 5 new events + marker.
    assert live_records_left(rows, {("e", 0): 11, ("e", 1): 11}) == 5


def test_records_left_falls_back_to_the_workers_figure_when_the_end_is_unknown() -> None:
    rows = [_row("e", 0, 9, 3), _row("e", 1, 4, None)]
    # Partition 0 from its end (caught up), partition 1 unknown either way.
    assert live_records_left(rows, {("e", 0): 11}) == 0
    assert live_records_left(rows, {}) == 3
    assert live_records_left([_row("e", 0, 9, None)], {}) is None


def test_a_read_partition_without_a_row_counts_whole() -> None:
    # Nothing applied from ("e", 2): its 7 events and their marker end at 8.
    rows = [_row("e", 0, 9, 0)]
    ends = {("e", 0): 11, ("e", 2): 8, ("e", 3): 0}
    assert live_records_left(rows, ends, [("e", 0), ("e", 2), ("e", 3)]) == 7
    assert live_records_left([], {("e", 3): 0}, [("e", 3)]) == 0


def test_dead_letter_headers_are_read_back() -> None:
    headers = [
        ("esflow-id", b"x"),
        (DLQ_REASON, b"undecodable"),
        (DLQ_ERROR, b"not Avro"),
        (DLQ_TOPIC, b"commands.order"),
        (DLQ_PARTITION, b"2"),
        (DLQ_OFFSET, b"41"),
    ]
    letter = DeadLetter.from_record(headers, 1_700_000_000_000)
    assert (letter.reason, letter.error, letter.topic, letter.partition, letter.offset) == (
        "undecodable", "not Avro", "commands.order", 2, 41,
    )  # fmt: skip
    assert letter.at == datetime.fromtimestamp(1_700_000_000, UTC)
    foreign = DeadLetter.from_record(None, 0)
    assert (foreign.reason, foreign.partition, foreign.offset) == ("unknown", None, None)


def test_outcome_rates_cover_whole_seconds_of_the_window() -> None:
    watch = PipelineWatch(KafkaSettings(), TopicSettings(), history_s=120)
    now = 1_000_000.5
    state = watch._state
    state.buckets[999_999] = Counter(accepted=20, rejected=2)  # the last whole second
    state.buckets[999_990] = Counter(accepted=10)  # in the 10 s window
    state.buckets[999_989] = Counter(accepted=1000)  # just before it
    state.buckets[1_000_000] = Counter(accepted=500)  # the second still filling
    out = watch.outcomes(window_s=10, series_s=60, now=now)
    assert out.per_second["accepted"] == 3.0
    assert out.per_second["rejected"] == 0.2
    assert len(out.series) == 60 and out.series[-1] == {
        "accepted": 20, "rejected": 2, "dead_lettered": 0, "replayed": 0,
    }  # fmt: skip
    assert not out.caught_up  # never started
