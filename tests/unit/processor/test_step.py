"""The command step on its own: plain messages in, records out, no broker (the shell is processors.loop)."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from esflow.domain.account import DepositFunds, OpenAccount
from esflow.domain.messages import CommandEnvelope, CommandMetadata
from esflow.domain.values import Money
from esflow.messaging.codec import Codec
from esflow.messaging.deadletters import DLQ_REASON
from esflow.messaging.results import HEADER_REPLAYED, CommandResult, DeadLetterReport, answer_key, report_key
from esflow.settings import ProcessorSettings, TopicSettings
from processors.loop import FlushingStep, Outgoing
from processors.state import PartitionCache
from processors.step import CommandStep, Topics

CODEC = Codec.from_settings()
TOPICS = Topics.from_settings(TopicSettings(), ProcessorSettings(aggregates="account"))
COMMANDS = TOPICS.commands("account")
NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC).timestamp()


@dataclass
class Msg:
    """A consumed record as the shell passes it."""

    _value: bytes | None
    _key: bytes | None
    _offset: int
    _partition: int = 0
    _topic: str = COMMANDS
    _headers: list[tuple[str, bytes]] = field(default_factory=list)

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
        return (1, int(NOW * 1000))


def command(aggregate_id: uuid.UUID, cmd: Any, offset: int, *, command_id: uuid.UUID | None = None) -> Msg:
    env = CommandEnvelope(
        metadata=CommandMetadata(
            command_id=command_id or uuid.uuid4(),
            aggregate_type="account",
            aggregate_id=aggregate_id,
            correlation_id=uuid.uuid4(),
            expected_version=None,
            issued_at=datetime.now(UTC),
        ),
        command=cmd,
    )
    return Msg(CODEC.encode(env, topic=COMMANDS), CODEC.key(env), offset, _headers=CODEC.headers(env))


def new_step() -> tuple[CommandStep, list[str]]:
    restored: list[str] = []

    def restore(cache: PartitionCache, snapshots: str, events: str) -> None:
        restored.append(f"{snapshots}|{events}[{cache.partition}]")  # an empty topic: nothing to load

    step = CommandStep(
        TOPICS, ProcessorSettings(aggregates="account"), CODEC, restore, partition_counts={COMMANDS: 1}
    )
    step.assigned([(COMMANDS, 0)])
    return step, restored


def turn(
    step: CommandStep, messages: list[Msg], *, commit: bool = True
) -> tuple[list[Outgoing], list[Outgoing]]:
    """One transaction as the shell runs it, the i-th record landing at offset 100 + i."""
    first = list(step.process(messages, NOW))
    answers = list(step.flushed([100 + i for i in range(len(first))]))
    if commit:
        step.committed()
    else:
        step.aborted()
    return first, answers


def result_of(answers: list[Outgoing], key: bytes) -> CommandResult:
    (value,) = [a.value for a in answers if a.key == key and a.topic == TOPICS.results]
    assert value is not None
    return CommandResult.from_bytes(value)


def test_the_step_is_a_flushing_step_and_restores_through_its_collaborator() -> None:
    step, restored = new_step()
    assert isinstance(step, FlushingStep)
    assert restored == [f"{TOPICS.snapshots('account')}|{TOPICS.events('account')}[0]"]
    assert step.due(NOW) == () and step.next_due() is None


def test_an_accepted_command_names_its_events_offsets_and_snapshots_the_aggregate() -> None:
    step, _ = new_step()
    acc = uuid.uuid4()
    opened = command(acc, OpenAccount(owner_id=uuid.uuid4(), currency="EUR"), 7)
    events, answers = turn(step, [opened])
    assert [(e.topic, e.key, e.partition) for e in events] == [
        (TOPICS.events("account"), str(acc).encode(), 0)
    ]
    cid = CODEC.decode(opened.value() or b"", kind="command").metadata.command_id
    result = result_of(answers, answer_key("account", str(acc), str(cid)))
    assert result.status == "accepted" and result.version == 1
    assert [e.offset for e in result.events] == [100]
    (snapshot,) = [a for a in answers if a.topic == TOPICS.snapshots("account")]
    assert snapshot.key == str(acc).encode() and snapshot.partition == 0
    assert json.loads(snapshot.value or b"")["last_event_offset"] == 100
    cache = step.cache(COMMANDS, 0)
    assert cache is not None and cache.get(str(acc)).version == 1 and cache.events_until == 100


def test_a_resent_command_is_answered_from_the_window_without_events() -> None:
    step, _ = new_step()
    acc, cid = uuid.uuid4(), uuid.uuid4()
    turn(step, [command(acc, OpenAccount(owner_id=uuid.uuid4(), currency="EUR"), 1, command_id=cid)])
    again = command(acc, OpenAccount(owner_id=uuid.uuid4(), currency="EUR"), 2, command_id=cid)
    events, answers = turn(step, [again])
    assert events == []
    replay = [a for a in answers if a.topic == TOPICS.results]
    assert len(replay) == 1 and (HEADER_REPLAYED, b"1") in (replay[0].headers or [])
    assert result_of(answers, answer_key("account", str(acc), str(cid))).version == 1


def test_an_aborted_batch_leaves_the_cache_as_the_last_commit_did() -> None:
    step, _ = new_step()
    acc, cid = uuid.uuid4(), uuid.uuid4()
    opened = command(acc, OpenAccount(owner_id=uuid.uuid4(), currency="EUR"), 1, command_id=cid)
    turn(step, [opened], commit=False)
    cache = step.cache(COMMANDS, 0)
    assert cache is not None and cache.get(str(acc)).version == 0
    events, answers = turn(step, [opened])  # the rewound consumer hands it over again
    assert len(events) == 1
    assert result_of(answers, answer_key("account", str(acc), str(cid))).status == "accepted"


def test_a_rejection_appends_nothing_and_is_remembered() -> None:
    step, _ = new_step()
    acc = uuid.uuid4()
    dep = command(acc, DepositFunds(amount=Money(amount=Decimal(5), currency="EUR")), 3)
    events, answers = turn(step, [dep])
    assert events == []
    cid = CODEC.decode(dep.value() or b"", kind="command").metadata.command_id
    result = result_of(answers, answer_key("account", str(acc), str(cid)))
    assert result.status == "rejected" and result.reason == "not_found"
    cache = step.cache(COMMANDS, 0)
    assert cache is not None and cache.get(str(acc)).find(str(cid)) is not None


def test_garbage_and_a_wrong_key_are_dead_lettered_and_reported_by_position() -> None:
    step, _ = new_step()
    acc = uuid.uuid4()
    good = command(acc, OpenAccount(owner_id=uuid.uuid4(), currency="EUR"), 5)
    wrong_key = Msg(good.value(), b"someone-else", 6)
    garbage = Msg(b"\x00garbage", b"k", 4)
    out, answers = turn(step, [garbage, wrong_key])
    assert [o.topic for o in out] == [TOPICS.dead_letter, TOPICS.dead_letter]
    reasons = [dict(o.headers or [])[DLQ_REASON] for o in out]
    assert reasons == [b"undecodable", b"wrong_key"]
    for offset, reason in ((4, "undecodable"), (6, "wrong_key")):
        (value,) = [a.value for a in answers if a.key == report_key(COMMANDS, 0, offset)]
        report = DeadLetterReport.from_bytes(value or b"")
        assert report.reason == reason and report.offset == offset


def test_a_revoked_partition_forgets_its_aggregates() -> None:
    step, _ = new_step()
    turn(step, [command(uuid.uuid4(), OpenAccount(owner_id=uuid.uuid4(), currency="EUR"), 1)])
    step.revoked([(COMMANDS, 0)])
    assert step.cache(COMMANDS, 0) is None
    assert (
        step.process([command(uuid.uuid4(), OpenAccount(owner_id=uuid.uuid4(), currency="EUR"), 2)], NOW)
        == []
    )
