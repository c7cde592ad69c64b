"""Confluent Schema Registry wire format against confluent's in-process `mock://` registry."""

from __future__ import annotations

import struct
import uuid
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient, topic_record_subject_name_strategy
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from esflow.domain.messages import EventEnvelope
from esflow.domain.product import PriceChanged
from esflow.errors import DecodeError, EncodeError, FramingError, UnknownSchemaError
from esflow.messaging.codec import Codec
from esflow.messaging.registry import ConfluentFraming, subject_for, topic_for
from esflow.messaging.samples import sample_record
from esflow.messaging.schemas import SchemaCatalog, SchemaVersion
from esflow.settings import SchemaSettings

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "schemas"
CATALOG = SchemaCatalog.load(SCHEMA_DIR)


def latest(name: str) -> SchemaVersion:
    sv = CATALOG.latest(name)
    assert sv is not None
    return sv


@pytest.fixture
def client() -> Any:
    # Each mock client has its own store; a unique name documents that tests do not share one.
    return SchemaRegistryClient.new_client({"url": f"mock://{uuid.uuid4()}"})


def test_subjects_follow_topic_record_strategy() -> None:
    sv = latest("OrderPlaced")
    assert topic_for(sv) == "events.order"
    assert topic_for(sv, "t1.") == "t1.events.order"
    assert subject_for("events.order", sv) == "events.order-esflow.events.order.OrderPlaced"


def test_round_trip_with_auto_registration(client: Any) -> None:
    codec = Codec(CATALOG, framing=ConfluentFraming(client, CATALOG, auto_register=True))
    record = sample_record(latest("OrderPlaced"))
    data = codec.encode_record("OrderPlaced", record, topic="events.order")
    assert data[0] == 0
    (schema_id,) = struct.unpack(">I", data[1:5])
    assert client.get_schema(schema_id).schema_str == latest("OrderPlaced").schema_json
    assert client.get_subjects() == ["events.order-esflow.events.order.OrderPlaced"]
    envelope = codec.decode(data, topic="events.order", partition=0, offset=0)
    assert isinstance(envelope, EventEnvelope)
    assert envelope.metadata.event_id == record["metadata"]["event_id"]


def test_production_mode_refuses_unregistered_schemas_until_registered(client: Any) -> None:
    framing = ConfluentFraming(client, CATALOG, auto_register=False)
    codec = Codec(CATALOG, framing=framing)
    record = sample_record(latest("StockReceived"))
    with pytest.raises(
        EncodeError, match=r"not registered under subject events\.product-esflow\.events\.product"
    ):
        codec.encode_record("StockReceived", record, topic="events.product")
    registered = ConfluentFraming(client, CATALOG).register(CATALOG)
    assert len(registered) == len(CATALOG)
    # Versions of one type land in one subject, oldest first, so registry versions match esflow's.
    price = [(s, sv.version) for s, _, sv in registered if sv.name == "PriceChanged"]
    subject = "events.product-esflow.events.product.PriceChanged"
    assert price == [(subject, 1), (subject, 2)]
    for version in (1, 2):
        expected = CATALOG.get("PriceChanged", version)
        assert expected is not None
        assert client.get_version(subject, version).schema.schema_str == expected.schema_json
    assert codec.decode(codec.encode_record("StockReceived", record, topic="events.product")) is not None
    with pytest.raises(EncodeError, match="needs the topic"):
        codec.encode_record("StockReceived", record)


def test_old_version_by_registry_id_is_resolved_and_upcast(client: Any) -> None:
    codec = Codec(CATALOG, framing=ConfluentFraming(client, CATALOG, auto_register=True))
    v1 = CATALOG.get("PriceChanged", 1)
    assert v1 is not None
    record = sample_record(v1)
    record["price_cents"] = 4999
    data = codec.encode_record("PriceChanged", record, version=1, topic="events.product")
    # A fresh consumer (empty caches) finds v1 through the registry, then upcasts it.
    reader = Codec(CATALOG, framing=ConfluentFraming(client, CATALOG))
    event = reader.decode(data, kind="event").event
    assert isinstance(event, PriceChanged)
    assert str(event.price.amount) == "49.99"


def test_unknown_ids_and_foreign_schemas_are_typed(client: Any) -> None:
    codec = Codec(CATALOG, framing=ConfluentFraming(client, CATALOG))
    with pytest.raises(
        UnknownSchemaError, match=r"schema id 4242 is unknown to the registry \[topic=events.order"
    ):
        codec.decode(b"\x00\x00\x00\x10\x92\x02", topic="events.order", partition=1, offset=3)
    foreign = '{"type":"record","name":"Other","fields":[{"name":"x","type":"long"}]}'
    schema_id = client.register_schema("events.order-Other", Schema(foreign, "AVRO"))
    with pytest.raises(UnknownSchemaError, match="is not in esflow's catalogue"):
        codec.decode(struct.pack(">bI", 0, schema_id) + b"\x02")
    with pytest.raises(FramingError, match="magic byte 0xc3"):
        codec.decode(b"\xc3\x01" + b"\x00" * 12)
    with pytest.raises(DecodeError, match="truncated registry header"):
        codec.decode(b"\x00\x00\x00")


def test_confluent_serde_reads_our_bytes_and_we_read_theirs(client: Any) -> None:
    """Interop with confluent-kafka's own Avro serde: the wire format is the standard one."""
    sv = latest("OrderPlaced")
    ctx = SerializationContext("events.order", MessageField.VALUE)
    conf = {"auto.register.schemas": True, "subject.name.strategy": topic_record_subject_name_strategy}
    codec = Codec(CATALOG, framing=ConfluentFraming(client, CATALOG, auto_register=True))
    record = sample_record(sv)

    theirs = AvroDeserializer(client)(codec.encode_record("OrderPlaced", record, topic="events.order"), ctx)
    assert theirs["metadata"]["event_id"] == record["metadata"]["event_id"]
    assert theirs["items"][1]["unit_price"] == record["items"][1]["unit_price"]
    assert theirs["sales_channel"] == record["sales_channel"]

    data = AvroSerializer(client, sv.schema_json, conf=conf)(record, ctx)
    envelope = codec.decode(data, topic="events.order")
    assert isinstance(envelope, EventEnvelope)
    assert envelope.metadata.occurred_at == record["metadata"]["occurred_at"]


def test_settings_switch_the_codec_to_registry_framing() -> None:
    codec = Codec.from_settings(
        SchemaSettings(dir=SCHEMA_DIR, registry_url=f"mock://{uuid.uuid4()}", auto_register=True)
    )
    assert isinstance(codec.framing, ConfluentFraming)
    record = sample_record(latest("AccountOpened"))
    data = codec.encode_record("AccountOpened", record, topic="events.account")
    assert data[0] == 0 and codec.decode(data) is not None
    assert dict(codec.headers(codec.decode(data)))["content-type"] == b"application/vnd.confluent.avro"
