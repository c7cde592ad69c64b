"""Upcasting: Avro resolution then code upcasters, in a loop, so the domain sees only the newest version."""

from __future__ import annotations

import copy
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from esflow.domain.product import PriceChanged
from esflow.domain.values import Money
from esflow.errors import UpcastError
from esflow.messaging.codec import Codec
from esflow.messaging.samples import sample_record
from esflow.messaging.schemas import SchemaCatalog, SchemaVersion, schema_version_from_definition
from esflow.messaging.upcasting import DEFAULT_UPCASTERS, UpcasterRegistry, upcast_price_changed_v1_v2

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "schemas"
CATALOG = SchemaCatalog.load(SCHEMA_DIR)
CODEC = Codec(CATALOG)


def version(name: str, v: int) -> SchemaVersion:
    sv = CATALOG.get(name, v)
    assert sv is not None
    return sv


@pytest.mark.parametrize(
    ("cents", "amount"),
    [(1999, Decimal("19.99")), (5, Decimal("0.05")), (100, Decimal("1.00")), (0, Decimal("0.00")),
     (-250, Decimal("-2.50")), (999_999_999_999_999_999, Decimal("9999999999999999.99"))],
)  # fmt: skip
def test_price_changed_v1_cents_become_an_exact_decimal_in_euros(cents: int, amount: Decimal) -> None:
    record = sample_record(version("PriceChanged", 1))
    record["price_cents"] = cents
    decoded = CODEC.decode(CODEC.encode_record("PriceChanged", record, version=1), kind="event")
    assert isinstance(decoded.event, PriceChanged)
    assert decoded.event.price == Money(amount=amount, currency="EUR")
    assert str(decoded.event.price.amount) == str(amount)  # exact, same exponent: no float on the way
    assert decoded.metadata.event_id == record["metadata"]["event_id"]


def test_upcaster_is_pure() -> None:
    record = sample_record(version("PriceChanged", 1))
    before = copy.deepcopy(record)
    out = upcast_price_changed_v1_v2(record)
    assert record == before
    assert "price_cents" not in out and out["metadata"] == record["metadata"]


def test_v2_bytes_skip_the_upcaster() -> None:
    record = sample_record(version("PriceChanged", 2))
    decoded = CODEC.decode_record(CODEC.encode_record("PriceChanged", record))
    assert decoded.writer_version == 2 and decoded.schema.version == 2
    assert decoded.record["price"] == record["price"]


def test_decode_record_reports_writer_and_newest_version() -> None:
    decoded = CODEC.decode_record(
        CODEC.encode_record("OrderPlaced", sample_record(version("OrderPlaced", 1)), version=1)
    )
    assert (decoded.writer_version, decoded.schema.version) == (1, 3)
    assert decoded.record["sales_channel"] == "UNKNOWN"
    assert decoded.record["account_id"] is None


def extended_catalog() -> tuple[SchemaCatalog, UpcasterRegistry]:
    """PriceChanged v3 (Avro-only: adds a defaulted field) and v4 (code: renames price to unit_price).

    Chain from v1: upcaster 1->2, Avro 2->3, upcaster 3->4. Exercises every branch of the loop.
    """
    v2 = version("PriceChanged", 2)
    d3: dict[str, Any] = json.loads(json.dumps(v2.definition))
    d3["esflow.version"] = 3
    d3["fields"].append({"name": "reason", "type": "string", "default": "unspecified", "doc": "Why."})
    d4: dict[str, Any] = json.loads(json.dumps(d3))
    d4["esflow.version"] = 4
    d4["fields"][1]["name"] = "unit_price"
    versions = [sv for sv in CATALOG if sv.name != "PriceChanged"]
    versions += [
        version("PriceChanged", 1),
        v2,
        schema_version_from_definition(d3),
        schema_version_from_definition(d4),
    ]
    registry = UpcasterRegistry()
    registry.register("PriceChanged", 1)(upcast_price_changed_v1_v2)

    @registry.register("PriceChanged", 3)
    def rename(record: Any) -> dict[str, Any]:
        out = {k: v for k, v in record.items() if k != "price"}
        out["unit_price"] = record["price"]
        return out

    return SchemaCatalog(versions), registry


@pytest.mark.parametrize("writer", [1, 2, 3, 4])
def test_upcast_loop_reaches_the_newest_version_from_any_writer(writer: int) -> None:
    catalog, registry = extended_catalog()
    codec = Codec(catalog, upcasters=registry, messages={})
    v1 = sample_record(version("PriceChanged", 1))
    v1["price_cents"] = 1234
    records: dict[int, dict[str, Any]] = {1: v1}
    records[2] = upcast_price_changed_v1_v2(v1)
    records[3] = {**records[2], "reason": "supplier"}
    records[4] = {k: v for k, v in records[3].items() if k != "price"} | {"unit_price": records[3]["price"]}
    decoded = codec.decode_record(codec.encode_record("PriceChanged", records[writer], version=writer))
    assert decoded.schema.version == 4
    assert decoded.record["unit_price"] == {"amount": Decimal("12.34"), "currency": "EUR"}
    # v1 and v2 writers never had a reason: Avro's default fills it after the first upcaster.
    assert decoded.record["reason"] == ("supplier" if writer >= 3 else "unspecified")
    assert "price" not in decoded.record and "price_cents" not in decoded.record


def test_a_failing_upcaster_is_a_typed_error() -> None:
    registry = UpcasterRegistry()

    @registry.register("PriceChanged", 1)
    def broken(record: Any) -> dict[str, Any]:
        raise KeyError("price_cents")

    codec = Codec(CATALOG, upcasters=registry)
    data = codec.encode_record("PriceChanged", sample_record(version("PriceChanged", 1)), version=1)
    with pytest.raises(
        UpcastError, match=r"upcasting PriceChanged v1 -> v2 failed.*\[topic=t, partition=1, offset=2\]"
    ):
        codec.decode(data, topic="t", partition=1, offset=2)


def test_an_upcaster_producing_the_wrong_shape_is_caught() -> None:
    catalog, _ = extended_catalog()
    registry = UpcasterRegistry()
    registry.register("PriceChanged", 1)(lambda r: {"metadata": r["metadata"], "price": "free"})
    registry.register("PriceChanged", 3)(lambda r: dict(r))
    codec = Codec(catalog, upcasters=registry, messages={})
    data = codec.encode_record("PriceChanged", sample_record(version("PriceChanged", 1)), version=1)
    with pytest.raises(UpcastError, match="produced a record its schema rejects"):
        codec.decode_record(data)


def test_registry_refuses_two_upcasters_for_one_step() -> None:
    registry = UpcasterRegistry()
    registry.register("X", 1)(lambda r: dict(r))
    with pytest.raises(ValueError, match="already registered"):
        registry.register("X", 1)(lambda r: dict(r))
    assert registry.steps() == {"X": [1]}
    assert DEFAULT_UPCASTERS.steps() == {"PriceChanged": [1]}
