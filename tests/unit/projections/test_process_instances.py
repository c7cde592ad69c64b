"""process_instances without a server: its sources, the decoder of state records, the row of a record."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from esflow.errors import MisroutedRecord
from esflow.messaging.codec import Codec
from esflow.messaging.process_records import InstanceRecord
from esflow.messaging.topics import PROCESSES, process_state_topic, source_topic
from esflow.readmodel.projection import Decoded, RawEvent, prepare
from esflow.settings import TopicSettings
from projections import registry
from projections.process_instances import COLUMNS, RECORD_TYPE, row

T = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
TOPICS = TopicSettings(prefix="t1.")
DECODER = registry.SourceDecoder(Codec.from_settings())


def _record(**changes: object) -> InstanceRecord:
    base = InstanceRecord(
        process="order_fulfilment",
        instance_id=uuid.uuid4(),
        status="running",
        step="charge",
        state={"charged": "12.50"},
        started_at=T,
        updated_at=T + timedelta(seconds=3),
    )
    return base.model_copy(update=changes)


def _raw(record: InstanceRecord, *, topic: str | None = None, key: bytes | None = None) -> RawEvent:
    return RawEvent(
        topic or process_state_topic(record.process, TOPICS),
        0,
        7,
        str(record.instance_id).encode() if key is None else key,
        record.to_bytes(),
    )


def test_it_reads_the_state_topic_of_every_process() -> None:
    projection = registry.get("process_instances")
    topics = {source_topic(s, TOPICS) for s in projection.aggregates}
    assert topics == {f"t1.process.{p}.state" for p in PROCESSES}
    assert source_topic("order", TOPICS) == "t1.events.order"


def test_a_state_record_decodes_to_the_instance_at_its_update_time() -> None:
    record = _record()
    decoded = DECODER(_raw(record))
    assert (decoded.type_name, decoded.occurred_at, decoded.payload) == (
        RECORD_TYPE,
        record.updated_at,
        record,
    )


def test_a_record_under_another_key_or_on_another_process_topic_is_misrouted() -> None:
    record = _record()
    with pytest.raises(MisroutedRecord, match="under key"):
        DECODER(_raw(record, key=str(uuid.uuid4()).encode()))
    with pytest.raises(MisroutedRecord):
        DECODER(_raw(record, topic=process_state_topic("funds_transfer", TOPICS)))


def test_undecodable_records_and_tombstones_become_dead_letters_not_rows() -> None:
    projection = registry.get("process_instances")
    good = _raw(_record())
    topic = process_state_topic("order_fulfilment", TOPICS)
    items = prepare(
        projection,
        DECODER,
        [good, RawEvent(topic, 0, 8, b"k", b"{not json"), RawEvent(topic, 0, 9, b"k", None)],
    )
    assert isinstance(items[0], Decoded)
    assert [getattr(i, "error_type", None) for i in items[1:]] == ["ValidationError", "EmptyRecord"]


def test_the_row_flattens_the_record_with_the_earliest_timer_as_deadline() -> None:
    record = _record(
        timers={"payment_deadline": T + timedelta(seconds=30), "answer_due": T + timedelta(seconds=5)},
        attempts=2,
        inputs=4,
    )
    values = dict(zip(COLUMNS, row(record), strict=True))
    assert values["deadline"] == T + timedelta(seconds=5) and values["deadline_name"] == "answer_due"
    assert (values["status"], values["step"], values["attempts"], values["inputs"]) == (
        "running",
        "charge",
        2,
        4,
    )
    assert values["pending_commands"] == 0 and values["state"] == '{"charged":"12.50"}'
    ended = dict(zip(COLUMNS, row(_record(status="compensated", reason="payment_deadline")), strict=True))
    assert ended["deadline"] is None and ended["reason"] == "payment_deadline"
