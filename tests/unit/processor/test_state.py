from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from esflow.domain.aggregates import ACCOUNT, ORDER
from esflow.domain.aggregates.account import AccountState, AccountStatus
from esflow.errors import RestoreError
from esflow.messaging.results import CommandResult
from processors.state import AggregateRecord, PartitionCache, ResultSlot


def result(version: int, command_id: str | None = None) -> ResultSlot:
    cid = uuid.UUID(command_id) if command_id else uuid.uuid4()
    r = CommandResult(command_id=cid, status="accepted", version=version, processed_at=datetime.now(UTC))
    return ResultSlot(r.to_bytes())


C1, C2 = str(uuid.uuid4()), str(uuid.uuid4())


def test_snapshot_round_trip() -> None:
    state = AccountState(currency="EUR", balance=Decimal("12.34"), status=AccountStatus.FROZEN)
    slots = [result(1, C1), result(2, C2)]
    record = AggregateRecord("a-1", 2, state, 17, ((C1, slots[0]), (C2, slots[1])))
    back = AggregateRecord.from_snapshot(ACCOUNT, record.to_snapshot(ACCOUNT))
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
    back = AggregateRecord.from_snapshot(ORDER, record.to_snapshot(ORDER))
    assert back.state is None
    assert back.find(C1) is not None


def test_snapshot_of_another_aggregate_type_is_refused() -> None:
    data = AggregateRecord("x", 1, AccountState(currency="EUR")).to_snapshot(ACCOUNT)
    with pytest.raises(RestoreError, match="snapshot"):
        AggregateRecord.from_snapshot(ORDER, data)


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
    snap = AggregateRecord("a", 3, AccountState(currency="EUR")).to_snapshot(ACCOUNT)
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
    data = record.to_snapshot(ACCOUNT)
    assert AggregateRecord.from_snapshot(ACCOUNT, data).recent[0][1].data == tricky.to_bytes()
    legacy = data.replace(b',"lens":[' + str(len(tricky.to_bytes())).encode() + b"]", b"")
    assert b"lens" not in legacy
    back = AggregateRecord.from_snapshot(ACCOUNT, legacy).recent[0][1].data
    assert back is not None and CommandResult.from_bytes(back) == tricky


@pytest.mark.parametrize("aggregate_id", ["plain-id_1.x:y", 'quote " and \\ slash', "ünïcode\n"])
def test_snapshot_head_escapes_what_needs_escaping(aggregate_id: str) -> None:
    record = AggregateRecord(aggregate_id, 3, None, 9, ((C1, result(3, C1)),))
    back = AggregateRecord.from_snapshot(ACCOUNT, record.to_snapshot(ACCOUNT))
    assert (back.aggregate_id, back.version, back.last_event_offset) == (aggregate_id, 3, 9)
    assert [cid for cid, _ in back.recent] == [C1]
