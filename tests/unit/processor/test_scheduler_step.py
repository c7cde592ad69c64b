"""The scheduler step on its own: scheduled records in, state records and due commands out, no broker."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest

from esflow.messaging.deadletters import DLQ_REASON
from esflow.messaging.scheduling import HEADER_KEY, read_schedule, schedule_headers
from processors.loop import Incoming, Outgoing
from processors.scheduler import SchedulerStep

SOURCE, PENDING, DLQ = "scheduled-commands", "scheduled-commands.pending", "commands.dead-letter"
TARGET = "commands.account"
T0 = 1_800_000_000.0


@dataclass
class Rec:
    """A consumed record as the shell (or the state loader) passes it."""

    _key: bytes | None
    _value: bytes | None
    _headers: list[tuple[str, bytes]]
    _offset: int = 0
    _partition: int = 0
    _topic: str = SOURCE
    extra: dict[str, str] = field(default_factory=dict)

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes | None:
        return self._value

    def headers(self) -> list[tuple[str, bytes]]:
        return self._headers

    def timestamp(self) -> tuple[int, int]:
        return (1, int(T0 * 1000))


def scheduled(key: bytes, value: bytes, due: float, offset: int, target: str = TARGET) -> Rec:
    own = [("esflow-type", b"DepositFunds")]
    return Rec(key, value, own + schedule_headers(datetime.fromtimestamp(due, UTC), target), offset)


class State:
    """The pending topic as the broker would keep it: what committed transactions wrote, in order."""

    def __init__(self) -> None:
        self.log: list[Outgoing] = []

    def write(self, records: Iterable[Outgoing]) -> None:
        self.log.extend(r for r in records if r.topic == PENDING)

    def load(self, partition: int) -> list[Incoming]:
        return [
            Rec(r.key, r.value, list(r.headers or []), i, partition, PENDING)
            for i, r in enumerate(self.log)
            if r.partition == partition
        ]


def new_step(state: State, max_per_turn: int = 1000) -> SchedulerStep:
    step = SchedulerStep(
        source_topic=SOURCE,
        pending_topic=PENDING,
        command_topics=[TARGET],
        dead_letter_topic=DLQ,
        load=state.load,
        max_per_turn=max_per_turn,
    )
    step.assigned([(SOURCE, 0)])
    return step


def turn(
    step: SchedulerStep, state: State, messages: list[Rec], now: float, *, commit: bool = True
) -> list[Outgoing]:
    """One transaction as the shell runs it: process, then due; committed records reach the state."""
    out = [*step.process(messages, now), *step.due(now)]
    if commit:
        state.write(out)
        step.committed()
    else:
        step.aborted()
    return out


def delivered(out: list[Outgoing]) -> list[bytes | None]:
    return [o.value for o in out if o.topic == TARGET]


def test_a_command_not_yet_due_is_recorded_then_delivered_unchanged_with_a_tombstone() -> None:
    state = State()
    step = new_step(state)
    out = turn(step, state, [scheduled(b"acc-1", b"cmd-1", T0 + 60, 5)], T0)
    assert delivered(out) == []
    (record,) = out
    assert (record.topic, record.key, record.value, record.partition) == (PENDING, b"0:5", b"cmd-1", 0)
    assert step.next_due() == pytest.approx(T0 + 60)
    assert turn(step, state, [], T0 + 59) == []
    out = turn(step, state, [], T0 + 60)
    (command, tombstone) = out
    assert (command.topic, command.key, command.value, command.partition) == (
        TARGET,
        b"acc-1",
        b"cmd-1",
        None,
    )
    assert command.headers == [("esflow-type", b"DepositFunds")]  # the scheduling headers are gone
    assert (tombstone.topic, tombstone.key, tombstone.value, tombstone.partition) == (
        PENDING,
        b"0:5",
        None,
        0,
    )
    assert step.next_due() is None


def test_a_command_already_due_goes_out_at_once_without_state() -> None:
    state = State()
    step = new_step(state)
    out = turn(step, state, [scheduled(b"acc-1", b"now", T0 - 1, 3)], T0)
    assert [(o.topic, o.value) for o in out] == [(TARGET, b"now")]
    assert state.log == []


def test_a_restart_loads_what_is_pending_and_forgets_what_was_delivered() -> None:
    state = State()
    step = new_step(state)
    turn(step, state, [scheduled(b"a", b"early", T0 + 10, 1), scheduled(b"b", b"late", T0 + 20, 2)], T0)
    turn(step, state, [], T0 + 10)  # delivers "early"
    again = new_step(state)  # a new owner after a SIGKILL or a rebalance
    assert len(again) == 1 and again.next_due() == pytest.approx(T0 + 20)
    assert delivered(turn(again, state, [], T0 + 30)) == [b"late"]
    assert len(new_step(state)) == 0


def test_an_aborted_delivery_stays_pending_and_an_aborted_read_is_forgotten() -> None:
    state = State()
    step = new_step(state)
    turn(step, state, [scheduled(b"a", b"one", T0 + 10, 1)], T0)
    assert delivered(turn(step, state, [], T0 + 10, commit=False)) == [b"one"]
    assert len(step) == 1
    turn(step, state, [scheduled(b"b", b"two", T0 + 50, 2)], T0 + 11, commit=False)
    assert step.next_due() == pytest.approx(T0 + 10) and len(step) == 1
    assert delivered(turn(step, state, [], T0 + 12)) == [b"one"]


def test_due_commands_go_out_by_due_time_then_source_order_within_the_cap() -> None:
    state = State()
    step = new_step(state, max_per_turn=2)
    records = [
        scheduled(b"a", b"a-2", T0 + 5, 2),
        scheduled(b"a", b"a-1", T0 + 5, 1),
        scheduled(b"b", b"b-0", T0 + 1, 3),
    ]
    turn(step, state, records, T0)
    # Two fresh ones already due and one over the cap: the third waits in the state.
    fresh = [
        scheduled(b"c", b"c-0", T0 + 7, 9),
        scheduled(b"c", b"c-1", T0 + 7, 10),
        scheduled(b"c", b"c-2", T0 + 7, 11),
    ]
    out = turn(step, state, fresh, T0 + 8)
    assert delivered(out) == [b"b-0", b"a-1"]
    assert [o.key for o in out if o.topic == PENDING and o.value is not None] == [b"0:9", b"0:10", b"0:11"]
    assert delivered(turn(step, state, [], T0 + 8)) == [b"a-2", b"c-0"]
    assert delivered(turn(step, state, [], T0 + 8)) == [b"c-1", b"c-2"]
    assert len(step) == 0


def test_the_state_record_keeps_the_commands_key() -> None:
    state = State()
    step = new_step(state)
    (record,) = turn(step, state, [scheduled(b"acc-9", b"x", T0 + 60, 4)], T0)
    schedule = read_schedule(record.headers)
    assert (HEADER_KEY, b"acc-9") in (record.headers or [])
    assert schedule.key == b"acc-9" and schedule.target_topic == TARGET


@pytest.mark.parametrize(
    "record",
    [
        Rec(b"k", b"v", [("esflow-type", b"X")], 1),
        Rec(b"k", b"v", [("esflow-not-before", b"soon"), ("esflow-target-topic", TARGET.encode())], 1),
        scheduled(b"k", b"v", T0, 1, target="events.account"),
    ],
    ids=["no schedule", "garbled time", "not a command topic"],
)
def test_a_bad_schedule_is_dead_lettered(record: Rec) -> None:
    state = State()
    step = new_step(state)
    (out,) = turn(step, state, [record], T0)
    assert out.topic == DLQ and dict(out.headers or [])[DLQ_REASON] == b"invalid_command"
    assert len(step) == 0


def test_a_revoked_partition_is_forgotten() -> None:
    state = State()
    step = new_step(state)
    turn(step, state, [scheduled(b"a", b"x", T0 + 5, 1)], T0)
    step.revoked([(SOURCE, 0)])
    assert len(step) == 0 and step.next_due() is None
