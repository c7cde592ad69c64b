"""The codec: round trips, golden bytes per record version, framing, headers, located errors."""

from __future__ import annotations

import io
import json
import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import fastavro
import pytest

from esflow.domain.catalog import MESSAGE_TYPES
from esflow.domain.messages import (
    CommandEnvelope,
    CommandMetadata,
    Envelope,
    EventEnvelope,
    EventMetadata,
)
from esflow.domain.order import OrderPlaced, PlaceOrder
from esflow.domain.product import PriceChanged
from esflow.domain.values import Address, Money, OrderItem, SalesChannel
from esflow.errors import (
    CodecError,
    DecodeError,
    EncodeError,
    FramingError,
    SchemaError,
    SchemaValidationError,
    UnknownSchemaError,
)
from esflow.messaging.codec import Codec
from esflow.messaging.framing import SINGLE_OBJECT_MAGIC
from esflow.messaging.samples import sample_record
from esflow.messaging.schemas import SchemaCatalog, SchemaVersion
from esflow.settings import SchemaSettings

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "schemas"
GOLDEN_DIR = Path(__file__).resolve().parent / "golden"
CATALOG = SchemaCatalog.load(SCHEMA_DIR)
CODEC = Codec(CATALOG)
UPDATE_GOLDEN = os.environ.get("ESFLOW_UPDATE_GOLDEN") == "1"


def all_versions() -> Iterator[SchemaVersion]:
    yield from CATALOG


def envelope_from_record(name: str, record: dict[str, Any]) -> Envelope:
    """The envelope a newest-version record stands for (built independently of the codec)."""
    spec = MESSAGE_TYPES[name]
    payload = dict(record)
    metadata = payload.pop("metadata")
    if spec.kind == "event":
        return EventEnvelope(
            metadata=EventMetadata.model_validate(metadata), event=spec.model.model_validate(payload)
        )
    return CommandEnvelope(
        metadata=CommandMetadata.model_validate(metadata), command=spec.model.model_validate(payload)
    )


def order_placed() -> EventEnvelope:
    meta = EventMetadata(
        event_id=uuid.uuid4(),
        aggregate_type="order",
        aggregate_id=uuid.uuid4(),
        aggregate_version=1,
        occurred_at=datetime(2025, 3, 1, 12, 0, 0, 123456, tzinfo=UTC),
        command_id=uuid.uuid4(),
        correlation_id=uuid.uuid4(),
        causation_id=uuid.uuid4(),
    )
    items = tuple(
        OrderItem(
            product_id=uuid.uuid4(),
            sku=f"SKU-{i}",
            quantity=i + 1,
            unit_price=Money(amount=Decimal("19.99"), currency="EUR"),
        )
        for i in range(3)
    )
    event = OrderPlaced(
        customer_id=uuid.uuid4(),
        items=items,
        shipping_address=Address(
            recipient="Ada", line1="Main St 1", city="Berlin", postal_code="10115", country="DE"
        ),
        sales_channel=SalesChannel.MOBILE,
    )
    return EventEnvelope(metadata=meta, event=event)


# ------------------------------------------------------------------------------------------ round trips


@pytest.mark.parametrize("schema", [CATALOG.latest(n) for n in CATALOG.names()], ids=lambda s: s.label)
def test_every_newest_type_round_trips_through_models(schema: SchemaVersion) -> None:
    envelope = envelope_from_record(schema.name, sample_record(schema))
    data = CODEC.encode(envelope)
    assert data[:2] == SINGLE_OBJECT_MAGIC
    assert data[2:10] == schema.fingerprint
    assert CODEC.decode(data) == envelope


def test_order_placed_round_trip_keeps_types_and_precision() -> None:
    envelope = order_placed()
    decoded = CODEC.decode(CODEC.encode(envelope), kind="event")
    assert decoded == envelope
    event = decoded.event
    assert isinstance(event, OrderPlaced)
    assert event.items[0].unit_price.amount == Decimal("19.99")
    assert isinstance(decoded.metadata.event_id, uuid.UUID)
    assert decoded.metadata.occurred_at.tzinfo is not None
    assert decoded.metadata.occurred_at.microsecond == 123456


def test_times_are_stored_as_utc() -> None:
    envelope = order_placed()
    plus2 = timezone(timedelta(hours=2))
    local = envelope.metadata.occurred_at.astimezone(plus2)
    moved = EventEnvelope(
        metadata=envelope.metadata.model_copy(update={"occurred_at": local}), event=envelope.event
    )
    decoded = CODEC.decode(CODEC.encode(moved), kind="event")
    assert decoded.metadata.occurred_at == envelope.metadata.occurred_at
    assert decoded.metadata.occurred_at.utcoffset() == timedelta(0)


def test_decoding_an_event_refuses_a_command() -> None:
    schema = CATALOG.latest("PlaceOrder")
    assert schema is not None
    data = CODEC.encode(envelope_from_record("PlaceOrder", sample_record(schema)))
    assert isinstance(CODEC.decode(data, kind="command").command, PlaceOrder)
    with pytest.raises(DecodeError, match="expected an event") as caught:
        CODEC.decode(data, kind="event", topic="events.order", partition=0, offset=1)
    assert (caught.value.topic, caught.value.partition, caught.value.offset) == ("events.order", 0, 1)


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "reference"])
def test_decoding_a_command_refuses_an_event(compiled: bool) -> None:
    codec = Codec(CATALOG, compiled=compiled)
    envelope = order_placed()
    data = codec.encode(envelope)
    assert codec.decode(data, kind="event") == envelope
    with pytest.raises(DecodeError, match="expected a command, got the event OrderPlaced"):
        codec.decode(data, kind="command")


def test_key_is_aggregate_id_and_headers_name_the_type() -> None:
    envelope = order_placed()
    assert CODEC.key(envelope) == str(envelope.metadata.aggregate_id).encode()
    headers = dict(CODEC.headers(envelope))
    assert headers["esflow-type"] == b"OrderPlaced"
    assert headers["esflow-schema-version"] == b"3"
    assert headers["esflow-kind"] == b"event"
    assert headers["esflow-message-id"] == str(envelope.metadata.event_id).encode()
    assert headers["content-type"] == b"application/vnd.apache.avro.single-object"


def test_from_settings_uses_the_configured_directory(tmp_path: Path) -> None:
    codec = Codec.from_settings(SchemaSettings(dir=SCHEMA_DIR))
    assert codec.decode(codec.encode(order_placed())) is not None
    with pytest.raises(SchemaError, match="schema directory not found"):
        Codec.from_settings(SchemaSettings(dir=tmp_path / "nowhere"))


# -------------------------------------------------------------------------------------------- golden


def golden_path(schema: SchemaVersion) -> Path:
    return GOLDEN_DIR / f"{schema.kind}s" / schema.aggregate_type / f"{schema.name}.v{schema.version}.bin"


@pytest.mark.parametrize("schema", list(all_versions()), ids=lambda s: s.label)
def test_golden_bytes(schema: SchemaVersion) -> None:
    """The bytes of every record version are frozen: a change here breaks every stored message.

    Regenerate (only for a new version!) with ESFLOW_UPDATE_GOLDEN=1.
    """
    data = CODEC.encode_record(schema.name, sample_record(schema), version=schema.version)
    path = golden_path(schema)
    if UPDATE_GOLDEN and not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    assert path.exists(), f"no golden file for {schema.label}; run with ESFLOW_UPDATE_GOLDEN=1 once"
    golden = path.read_bytes()
    assert data == golden, f"{schema.label} no longer encodes to its golden bytes"
    # And the stored bytes still decode, to the newest version.
    decoded = CODEC.decode(golden)
    latest = CATALOG.latest(schema.name)
    assert latest is not None
    if schema.version == latest.version:
        assert decoded == envelope_from_record(schema.name, sample_record(schema))


def test_no_stray_golden_files() -> None:
    expected = {golden_path(s) for s in all_versions()}
    assert set(GOLDEN_DIR.rglob("*.bin")) == expected


def test_golden_v1_order_placed_reads_as_v2_with_the_default_channel() -> None:
    v1 = CATALOG.get("OrderPlaced", 1)
    assert v1 is not None
    envelope = CODEC.decode(golden_path(v1).read_bytes(), kind="event")
    assert isinstance(envelope.event, OrderPlaced)
    assert envelope.event.sales_channel is SalesChannel.UNKNOWN
    assert envelope.event.account_id is None
    expected = sample_record(v1)
    assert envelope.event.customer_id == expected["customer_id"]
    assert [i.sku for i in envelope.event.items] == [i["sku"] for i in expected["items"]]


@pytest.mark.parametrize("name", ["OrderPlaced", "PlaceOrder"])
def test_golden_v2_orders_read_as_v3_without_a_paying_account(name: str) -> None:
    v2 = CATALOG.get(name, 2)
    assert v2 is not None
    envelope = CODEC.decode(golden_path(v2).read_bytes())
    payload = envelope.event if isinstance(envelope, EventEnvelope) else envelope.command
    assert isinstance(payload, OrderPlaced | PlaceOrder)
    assert payload.account_id is None
    assert payload.sales_channel == sample_record(v2)["sales_channel"]


def test_golden_v1_price_changed_is_upcast_to_money() -> None:
    v1 = CATALOG.get("PriceChanged", 1)
    assert v1 is not None
    envelope = CODEC.decode(golden_path(v1).read_bytes(), kind="event")
    assert isinstance(envelope.event, PriceChanged)
    cents = sample_record(v1)["price_cents"]
    assert envelope.event.price == Money(amount=Decimal(cents) / 100, currency="EUR")


# ------------------------------------------------------------------------------------------ bad input


def good_bytes() -> bytes:
    return CODEC.encode(order_placed())


@pytest.mark.parametrize(
    ("data", "error", "match"),
    [
        (b"", DecodeError, "truncated"),
        (b"\xc3", DecodeError, "truncated"),
        (b"\xc3\x01\x00\x01", DecodeError, "truncated"),
        (b"\x00\x00\x00\x00\x01hello", FramingError, "not Avro single-object"),
        (b'{"json": true}', FramingError, "not Avro single-object"),
        (
            b"\xc3\x01" + b"\xff" * 8 + b"\x00",
            UnknownSchemaError,
            "unknown schema fingerprint ffffffffffffffff",
        ),
    ],
)
def test_bad_framing_is_typed_and_located(data: bytes, error: type[CodecError], match: str) -> None:
    with pytest.raises(error, match=match) as info:
        CODEC.decode(data, topic="events.order", partition=4, offset=1234)
    assert (info.value.topic, info.value.partition, info.value.offset) == ("events.order", 4, 1234)
    assert "[topic=events.order, partition=4, offset=1234]" in str(info.value)


def test_truncated_body() -> None:
    data = good_bytes()
    for cut in (11, len(data) // 2, len(data) - 1):
        with pytest.raises(DecodeError, match="truncated"):
            CODEC.decode(data[:cut], topic="t", partition=0, offset=9)


def test_trailing_bytes_are_refused() -> None:
    with pytest.raises(DecodeError, match="trailing bytes"):
        CODEC.decode(good_bytes() + b"\x00")


def test_a_decimal_wider_than_its_logical_type_is_refused() -> None:
    schema = CATALOG.latest("FundsDeposited")
    assert schema is not None
    record = sample_record(schema)
    record["amount"] = {"amount": Decimal("123456789012345678.90"), "currency": "EUR"}
    with pytest.raises(EncodeError, match="precision"):
        CODEC.encode_record("FundsDeposited", record)
    # Another producer can still write it: Avro bytes hold any unscaled integer, and the logical type is
    # not part of the fingerprint. Write it through a schema that differs only in the precision.
    wide = json.loads(json.dumps(schema.definition).replace('"precision": 18', '"precision": 30'))
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(wide), record)
    data = SINGLE_OBJECT_MAGIC + schema.fingerprint + buf.getvalue()
    with pytest.raises(SchemaValidationError, match=r"amount\.amount") as info:
        CODEC.decode(data, topic="events.account", partition=2, offset=77)
    assert info.value.offset == 77


def test_a_malformed_uuid_is_refused() -> None:
    schema = CATALOG.latest("OrderDelivered")
    assert schema is not None
    record = sample_record(schema)
    record["metadata"]["event_id"] = "not-a-uuid"
    # fastavro writes the string as is (a uuid is a string on the wire), so the reader must catch it.
    data = CODEC.encode_record("OrderDelivered", record)
    with pytest.raises(SchemaValidationError, match="event_id"):
        CODEC.decode(data)


def test_a_bad_currency_is_refused() -> None:
    schema = CATALOG.latest("OrderPaid")
    assert schema is not None
    record = sample_record(schema)
    record["amount"]["currency"] = "euro"
    with pytest.raises(SchemaValidationError, match="currency"):
        CODEC.decode(CODEC.encode_record("OrderPaid", record))


def test_metadata_must_match_the_aggregate_of_the_event() -> None:
    schema = CATALOG.latest("OrderDelivered")
    assert schema is not None
    record = sample_record(schema)
    record["metadata"]["aggregate_type"] = "account"
    with pytest.raises(SchemaValidationError, match="belongs to 'order'"):
        CODEC.decode(CODEC.encode_record("OrderDelivered", record))


def test_encode_errors_are_typed() -> None:
    with pytest.raises(EncodeError, match="no schema for Nope"):
        CODEC.encode_record("Nope", {})
    schema = CATALOG.latest("StockReceived")
    assert schema is not None
    record = sample_record(schema)
    record["quantity"] = "many"
    with pytest.raises(EncodeError, match="StockReceived v1"):
        CODEC.encode_record("StockReceived", record, topic="events.product")


def test_a_schema_without_a_model_is_unknown(tmp_path: Path) -> None:
    # A newer producer's v4 is in the catalogue of this reader, but the models stop at v3.
    v3 = CATALOG.get("OrderPlaced", 3)
    assert v3 is not None
    definition = dict(v3.definition)
    definition["esflow.version"] = 4
    definition["fields"] = [
        *definition["fields"],
        {"name": "gift", "type": "boolean", "default": False, "doc": "x"},
    ]
    from esflow.messaging.schemas import schema_version_from_definition

    v4 = schema_version_from_definition(definition)
    codec = Codec(SchemaCatalog([*CATALOG, v4]))
    record = {**sample_record(v3), "gift": True}
    with pytest.raises(UnknownSchemaError, match="OrderPlaced v4 has no message model"):
        codec.decode(codec.encode_record("OrderPlaced", record), topic="events.order")
