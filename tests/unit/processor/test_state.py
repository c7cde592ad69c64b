from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from esflow.domain.aggregates import ACCOUNT, ORDER
from esflow.domain.aggregates.account import AccountState, AccountStatus
from esflow.errors import RestoreError
from esflow.messaging.results import AppendedEvent, CommandResult, EventRef, accepted_json, datetime_json
from processors.state import AggregateRecord, PartitionCache, ResultSlot, compact_entry


def result(version: int, command_id: str | None = None) -> ResultSlot:
    cid = uuid.UUID(command_id) if command_id else uuid.uuid4()
    r = CommandResult(command_id=cid, status="accepted", version=version, processed_at=datetime.now(UTC))
    return ResultSlot(r.to_bytes())


C1, C2 = str(uuid.uuid4()), str(uuid.uuid4())


def test_snapshot_round_trip() -> None:
    state = AccountState(currency="EUR", balance=Decimal("12.34"), status=AccountStatus.FROZEN)
    slots = [result(1, C1), result(2, C2)]
    record = AggregateRecord("a-1", 2, state, 17, ((C1, slots[0]), (C2, slots[1])))
    back = AggregateRecord.from_snapshot(ACCOUNT, record.to_snapshot(ACCOUNT, "events.account", 0))
    assert back.aggregate_id == "a-1"
    assert back.version == 2
    assert back.state == state
    assert back.last_event_offset == 17
    assert [cid for cid, _ in back.recent] == [C1, C2]
    for (_, a), b in zip(back.recent, slots, strict=True):
        assert a.data is not None and b.data is not None
        assert a.data == b.data  # sliced out verbatim, not re-encoded


def test_snapshot_of_an_aggregate_without_events() -> None:
    record = AggregateRecord("x", 0, None, -1, ((C1, result(0, C1)),))
    back = AggregateRecord.from_snapshot(ORDER, record.to_snapshot(ORDER, "events.order", 0))
    assert back.state is None
    assert back.find(C1) is not None


def test_snapshot_of_another_aggregate_type_is_refused() -> None:
    data = AggregateRecord("x", 1, AccountState(currency="EUR")).to_snapshot(ACCOUNT, "events.account", 0)
    with pytest.raises(RestoreError, match="snapshot"):
        AggregateRecord.from_snapshot(ORDER, data)


def test_snapshot_of_another_aggregate_under_a_key_is_refused() -> None:
    cache = PartitionCache(ACCOUNT, 0)
    mine = AggregateRecord("mine", 3, AccountState(currency="EUR")).to_snapshot(ACCOUNT, "events.account", 0)
    theirs = AggregateRecord("theirs", 1, AccountState(currency="USD")).to_snapshot(
        ACCOUNT, "events.account", 0
    )
    cache.load_raw("mine", mine)
    cache.load_raw("victim", theirs)  # written under a key it does not own
    assert cache.get("mine").version == 3
    with pytest.raises(RestoreError, match="under key victim is of theirs"):
        cache.get("victim")


def test_garbage_snapshot_is_a_restore_error() -> None:
    with pytest.raises(RestoreError):
        AggregateRecord.from_snapshot(ACCOUNT, b"\x00not json")


def test_window_keeps_the_most_recent() -> None:
    record = AggregateRecord("a")
    for i in range(10):
        record = record.remember(f"c{i}", result(i), window=3)
    assert [cid for cid, _ in record.recent] == ["c7", "c8", "c9"]
    assert record.find("c6") is None
    assert record.find("c9") is not None


def test_cache_decodes_lazily_and_forgets_tombstones() -> None:
    cache = PartitionCache(ACCOUNT, 0)
    snap = AggregateRecord("a", 3, AccountState(currency="EUR")).to_snapshot(ACCOUNT, "events.account", 0)
    cache.load_raw("a", snap)
    cache.load_raw("b", snap)
    cache.load_raw("b", None)
    assert len(cache) == 1
    assert cache.get("a").version == 3
    assert cache.get("unknown").version == 0  # a fresh aggregate


def test_snapshot_without_lengths_still_reads() -> None:
    # Results whose strings contain the array's own punctuation, and a snapshot lacking "lens".
    tricky = CommandResult(
        command_id=uuid.UUID(C1),
        status="rejected",
        reason="x",
        message='"recent":[1,2]}',
        processed_at=datetime.now(UTC),
    )
    record = AggregateRecord("a", 1, AccountState(currency="EUR"), 0, ((C1, ResultSlot(tricky.to_bytes())),))
    data = record.to_snapshot(ACCOUNT, "events.account", 0)
    assert AggregateRecord.from_snapshot(ACCOUNT, data).recent[0][1].data == tricky.to_bytes()
    legacy = data.replace(b',"lens":[' + str(len(tricky.to_bytes())).encode() + b"]", b"")
    assert b"lens" not in legacy
    back = AggregateRecord.from_snapshot(ACCOUNT, legacy).recent[0][1].data
    assert back is not None and CommandResult.from_bytes(back) == tricky


@pytest.mark.parametrize("aggregate_id", ["plain-id_1.x:y", 'quote " and \\ slash', "ünïcode\n"])
def test_snapshot_head_escapes_what_needs_escaping(aggregate_id: str) -> None:
    record = AggregateRecord(aggregate_id, 3, None, 9, ((C1, result(3, C1)),))
    back = AggregateRecord.from_snapshot(ACCOUNT, record.to_snapshot(ACCOUNT, "events.account", 0))
    assert (back.aggregate_id, back.version, back.last_event_offset) == (aggregate_id, 3, 9)
    assert [cid for cid, _ in back.recent] == [C1]


def _accepted_slot(command_id: str, version: int, events: int) -> tuple[ResultSlot, CommandResult]:
    """A slot filled the way the processor fills an accepted command's, and the model it stands for."""
    now = datetime.now(UTC)
    refs = [
        AppendedEvent(str(uuid.uuid4()), "FundsDeposited", version - events + i, "events.account", 4, 100 + i)
        for i in range(1, events + 1)
    ]
    corr = str(uuid.uuid4())
    model = CommandResult(
        command_id=uuid.UUID(command_id),
        status="accepted",
        aggregate_type="account",
        aggregate_id="acc-1",
        version=version,
        events=tuple(
            EventRef(event_id=e, type=t, aggregate_version=v, topic=tp, partition=p, offset=o)
            for e, t, v, tp, p, o in refs
        ),
        correlation_id=uuid.UUID(corr),
        processed_at=now,
    )
    at = datetime_json(now)
    slot = ResultSlot()
    slot.fill(
        accepted_json(
            command_id=command_id, aggregate_type="account", aggregate_id="acc-1", version=version,
            events=refs, correlation_id=corr, processed_at=at,
        ),
        compact_entry(command_id, version, corr, at, refs),
    )  # fmt: skip
    return slot, model


def test_accepted_results_travel_compact_and_come_back_whole() -> None:
    rejected = CommandResult(
        command_id=uuid.UUID(C2),
        status="rejected",
        reason="not_found",
        message="no",
        processed_at=datetime.now(UTC),
    )
    slot1, model1 = _accepted_slot(C1, 3, 2)
    record = AggregateRecord(
        "acc-1", 3, AccountState(currency="EUR"), 102, ((C1, slot1), (C2, ResultSlot(rejected.to_bytes())))
    )
    data = record.to_snapshot(ACCOUNT, "events.account", 4)
    assert data.count(b"events.account") == 1, "the compact entry leaves the topic to the snapshot head"
    back = AggregateRecord.from_snapshot(ACCOUNT, data)
    found = back.find(C1)
    assert found is not None and found.data is not None
    assert found.data == slot1.data, "the rebuilt JSON is byte for byte what command-results got"
    assert CommandResult.from_bytes(found.data) == model1
    rejected_slot = back.find(C2)
    assert rejected_slot is not None and rejected_slot.data == rejected.to_bytes()
    # Written again from the restored record, the snapshot is unchanged: entries are copied, not rebuilt.
    assert back.to_snapshot(ACCOUNT, "events.account", 4) == data


def test_full_window_snapshot_is_smaller_than_full_json() -> None:
    slots = [_accepted_slot(str(uuid.uuid4()), v, 1)[0] for v in range(1, 33)]
    record = AggregateRecord(
        "acc-1", 32, AccountState(currency="EUR"), 131, tuple((str(i), s) for i, s in enumerate(slots))
    )
    compact = len(record.to_snapshot(ACCOUNT, "events.account", 4))
    full = sum(len(s.data or b"") for s in slots)
    assert compact < 0.6 * full


def test_format_1_snapshots_still_read() -> None:
    slot = result(2, C1)
    assert slot.data is not None
    legacy = (
        b'{"f":1,"type":"account","id":"a","version":2,"last_event_offset":7,"lens":[%d],'
        b'"state":{"currency":"EUR","balance":"0","status":"OPEN"},"recent":[%s]}'
        % (len(slot.data), slot.data)
    )
    back = AggregateRecord.from_snapshot(ACCOUNT, legacy)
    assert (back.version, back.last_event_offset) == (2, 7)
    found = back.find(C1)
    assert found is not None and found.data == slot.data
