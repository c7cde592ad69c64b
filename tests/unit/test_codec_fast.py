"""The codec's fast path (compiled Avro readers, one envelope validator) against the full path.

The fast path may only change speed: every message must decode to the same envelope, or fail with the
same typed error and message, as through fastavro and the model-by-model validation.
"""

from __future__ import annotations

import io
from datetime import UTC
from decimal import Decimal
from pathlib import Path
from typing import Any

import fastavro
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from esflow.domain.catalog import MESSAGE_TYPES
from esflow.domain.messages import Envelope
from esflow.errors import CodecError
from esflow.messaging.codec import Codec
from esflow.messaging.compiled import compile_reader, compile_writer, envelope_validator
from esflow.messaging.samples import sample_record
from esflow.messaging.schemas import SchemaCatalog, SchemaVersion

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "schemas"
CATALOG = SchemaCatalog.load(SCHEMA_DIR)
CODEC = Codec(CATALOG)
VALID = [CODEC.encode_record(sv.name, sample_record(sv), version=sv.version) for sv in CATALOG]
NEWEST = [sv for sv in CATALOG if CATALOG.latest(sv.name) is sv]

PROFILE = settings(
    max_examples=2_000,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


REFERENCE = Codec(CATALOG, compiled=False)
"""The reference path for every message: fastavro, resolution, model-by-model validation."""


def full_path(data: bytes) -> Envelope:
    """What :meth:`Codec.decode` does without the compiled door: fastavro, resolution, three validations."""
    return REFERENCE.decode(data)


def outcome(fn: Any, data: Any) -> tuple[str, Any]:
    try:
        return "ok", fn(data)
    except CodecError as exc:
        return type(exc).__name__, str(exc)


def fastavro_read(schema: Any, data: bytes) -> tuple[str, Any]:
    buf = io.BytesIO(data)
    try:
        value = fastavro.schemaless_reader(buf, schema, None)
    except Exception as exc:
        return "error", type(exc)
    if buf.tell() != len(data):
        return "error", "trailing"
    return "ok", value


@pytest.mark.parametrize("schema", NEWEST, ids=lambda sv: sv.label)
def test_every_newest_type_has_a_fast_path_equal_to_the_full_path(schema: SchemaVersion) -> None:
    data = CODEC.encode_record(schema.name, sample_record(schema))
    reader = compile_reader(schema.decode_parsed)
    assert reader is not None
    assert reader(data, 10) == fastavro_read(schema.decode_parsed, data[10:])[1]
    validate = envelope_validator(MESSAGE_TYPES[schema.name])
    assert validate is not None
    decoded = CODEC.decode(data)
    assert decoded == full_path(data)
    assert type(decoded) is type(full_path(data))
    assert CODEC.decode_record(data).record == REFERENCE.decode_record(data).record


def test_the_typical_order_takes_the_fast_path() -> None:
    from tests.unit.test_codec import order_placed

    envelope = order_placed()
    data = CODEC.encode(envelope)
    assert CODEC.decode(data) == envelope
    assert data[:10] in CODEC._by_header


@PROFILE
@given(
    st.sampled_from(VALID),
    st.lists(st.tuples(st.integers(10, 10_000), st.integers(0, 255)), max_size=4),
    st.integers(0, 10_000),
)
def test_mutated_messages_decode_exactly_as_through_the_full_path(
    data: bytes, edits: list[tuple[int, int]], cut: int
) -> None:
    mutated = bytearray(data)
    for i, b in edits:  # the header stays: a changed fingerprint is only an unknown schema
        mutated[10 + i % (len(mutated) - 10)] = b
    raw = bytes(mutated[: max(10, len(mutated) - cut % 4)])
    assert outcome(CODEC.decode, raw) == outcome(full_path, raw)


# ------------------------------------------------------------------- every Avro type, against fastavro

EVERYTHING_DEF: dict[str, Any] = {
    "type": "record",
    "name": "t.Everything",
    "fields": [
        {"name": "n", "type": "null"},
        {"name": "b", "type": "boolean"},
        {"name": "i", "type": "int"},
        {"name": "l", "type": "long"},
        {"name": "f", "type": "float"},
        {"name": "d", "type": "double"},
        {"name": "by", "type": "bytes"},
        {"name": "s", "type": "string"},
        {"name": "fx", "type": {"type": "fixed", "name": "t.F4", "size": 4}},
        {"name": "fx2", "type": "t.F4"},
        {
            "name": "e",
            "type": {"type": "enum", "name": "t.E", "symbols": ["A", "B", "C"], "default": "A"},
        },
        {"name": "u", "type": ["null", "string", "long"]},
        {"name": "a", "type": {"type": "array", "items": "long"}},
        {"name": "m", "type": {"type": "map", "values": ["null", "t.E"]}},
        {"name": "dec", "type": {"type": "bytes", "logicalType": "decimal", "precision": 6, "scale": 2}},
        {
            "name": "fdec",
            "type": {
                "type": "fixed",
                "name": "t.F8",
                "size": 8,
                "logicalType": "decimal",
                "precision": 9,
                "scale": 3,
            },
        },
        {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-micros"}},
        {"name": "tm", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "dt", "type": {"type": "int", "logicalType": "date"}},
        {"name": "uu", "type": {"type": "string", "logicalType": "uuid"}},
        {
            "name": "r",
            "type": {
                "type": "record",
                "name": "t.Inner",
                "fields": [{"name": "x", "type": ["null", "t.Inner"], "default": None}],
            },
        },
    ],
}
EVERYTHING = fastavro.parse_schema(EVERYTHING_DEF)

everything = st.fixed_dictionaries(
    {
        "n": st.none(),
        "b": st.booleans(),
        "i": st.integers(-(2**31), 2**31 - 1),
        "l": st.integers(-(2**62), 2**62 - 1),  # 10-byte varints are left to fastavro (tested below)
        "f": st.floats(width=32, allow_nan=False),
        "d": st.floats(allow_nan=False),
        "by": st.binary(max_size=80),
        "s": st.text(max_size=80),
        "fx": st.binary(min_size=4, max_size=4),
        "fx2": st.binary(min_size=4, max_size=4),
        "e": st.sampled_from(["A", "B", "C"]),
        "u": st.one_of(st.none(), st.text(max_size=5), st.integers(-(2**62), 2**62 - 1)),
        "a": st.lists(st.integers(-(2**40), 2**40), max_size=5),
        "m": st.dictionaries(
            st.text(max_size=3), st.one_of(st.none(), st.sampled_from(["A", "C"])), max_size=3
        ),
        "dec": st.decimals(min_value=-9999, max_value=9999, places=2, allow_nan=False),
        "fdec": st.decimals(min_value=-99999, max_value=99999, places=3, allow_nan=False),
        "ts": st.integers(-(2**55), 2**55).map(lambda us: us),
        "tm": st.integers(0, 2**40),
        "dt": st.integers(-700_000, 2_000_000),
        "uu": st.uuids().map(str),
        "r": st.just({"x": {"x": None}}),
    }
)


def test_recursive_types_are_left_to_fastavro() -> None:
    assert compile_reader(EVERYTHING) is None


FLAT = fastavro.parse_schema({**EVERYTHING_DEF, "fields": EVERYTHING_DEF["fields"][:-1]})
FLAT_READER = compile_reader(FLAT)


def write(record: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, FLAT, {k: v for k, v in record.items() if k != "r"})
    return buf.getvalue()


def compiled(data: bytes) -> tuple[str, Any]:
    assert FLAT_READER is not None
    try:
        return "ok", FLAT_READER(data, 0)
    except Exception:
        return "refused", None


@PROFILE
@given(everything, st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=3))
def test_the_compiled_reader_returns_what_fastavro_returns_or_refuses(
    record: dict[str, Any], edits: list[tuple[int, int]]
) -> None:
    try:
        data = bytearray(write(record))
    except (ValueError, OverflowError):  # a date or timestamp fastavro cannot write
        return
    if not edits:
        assert compiled(bytes(data)) == fastavro_read(FLAT, bytes(data))
    for i, b in edits:
        data[i % len(data)] = b
    got = compiled(bytes(data))
    if got[0] == "ok":  # compared as repr: an edited float can be a NaN, never equal to itself
        assert repr(got) == repr(fastavro_read(FLAT, bytes(data)))


@pytest.mark.parametrize(
    "data",
    [
        b"\x01\x02hi",  # union branch -1: fastavro's list indexing reads it; the reader leaves it to fastavro
        b"\x03\x02hi",  # union branch 1 (string), zig-zag 2 then the string
    ],
)
def test_union_indexes_outside_the_plain_range_are_refused(data: bytes) -> None:
    schema = fastavro.parse_schema(
        {"type": "record", "name": "U", "fields": [{"name": "u", "type": ["null", "string"]}]}
    )
    reader = compile_reader(schema)
    assert reader is not None
    with pytest.raises(Exception):  # noqa: B017 - any refusal sends the bytes to fastavro
        reader(data, 0)


def test_negative_block_counts_and_long_varints_are_refused_not_misread() -> None:
    schema = fastavro.parse_schema(
        {"type": "record", "name": "A", "fields": [{"name": "a", "type": {"type": "array", "items": "long"}}]}
    )
    reader = compile_reader(schema)
    assert reader is not None
    negative_block = b"\x01\x02\x02\x00"  # count -1, its byte size, the item 1, the end: legal Avro
    assert fastavro_read(schema, negative_block) == ("ok", {"a": [1]})
    with pytest.raises(Exception):  # noqa: B017
        reader(negative_block, 0)
    ten_bytes = b"\x02" + b"\x80" * 9 + b"\x00" + b"\x00"
    with pytest.raises(Exception):  # noqa: B017
        reader(ten_bytes, 0)


def test_wide_decimals_are_left_to_fastavro_rounding() -> None:
    schema = fastavro.parse_schema(
        {
            "type": "record",
            "name": "D",
            "fields": [
                {"name": "d", "type": {"type": "bytes", "logicalType": "decimal", "precision": 4, "scale": 2}}
            ],
        }
    )
    wide = fastavro.parse_schema(
        {
            "type": "record",
            "name": "D",
            "fields": [
                {"name": "d", "type": {"type": "bytes", "logicalType": "decimal", "precision": 9, "scale": 2}}
            ],
        }
    )
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, wide, {"d": Decimal("1234567.89")})
    reader = compile_reader(schema)
    assert reader is not None
    with pytest.raises(Exception):  # noqa: B017
        reader(buf.getvalue(), 0)


# ---------------------------------------------------------------------------------- the compiled writer


def fastavro_write(schema: Any, record: Any) -> tuple[str, Any]:
    buf = io.BytesIO()
    try:
        fastavro.schemaless_writer(buf, schema, record)
    except Exception as exc:
        return "error", type(exc)
    return "ok", buf.getvalue()


@pytest.mark.parametrize("schema", list(CATALOG), ids=lambda sv: sv.label)
def test_compiled_writers_write_fastavro_s_bytes(schema: SchemaVersion) -> None:
    writer = compile_writer(schema.parsed)
    if writer is None:  # commands: a union with a uuid branch is fastavro's to match
        assert schema.kind == "command"
        return
    record = sample_record(schema)
    assert ("ok", writer(record)) == fastavro_write(schema.parsed, record)


WRITABLE_DEF: dict[str, Any] = {
    "type": "record",
    "name": "t.Writable",
    "fields": [
        {"name": "n", "type": "null"},
        {"name": "b", "type": "boolean"},
        {"name": "i", "type": "int"},
        {"name": "l", "type": "long"},
        {"name": "f", "type": "float"},
        {"name": "d", "type": "double"},
        {"name": "by", "type": "bytes"},
        {"name": "s", "type": "string"},
        {"name": "fx", "type": {"type": "fixed", "name": "t.F2", "size": 2}},
        {"name": "e", "type": {"type": "enum", "name": "t.E", "symbols": ["A", "B", "C"]}},
        {"name": "us", "type": ["null", "string"]},
        {"name": "ul", "type": ["long", "null"]},
        {"name": "ui", "type": ["null", "int"]},
        {"name": "a", "type": {"type": "array", "items": "long"}},
        {
            "name": "ar",
            "type": {
                "type": "array",
                "items": {"type": "record", "name": "t.R", "fields": [{"name": "x", "type": "string"}]},
            },
        },
        {"name": "r", "type": "t.R"},
        {"name": "dec", "type": {"type": "bytes", "logicalType": "decimal", "precision": 6, "scale": 2}},
        {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-micros"}},
        {"name": "dt", "type": {"type": "int", "logicalType": "date"}},
        {"name": "uu", "type": {"type": "string", "logicalType": "uuid"}},
    ],
}
WRITABLE = fastavro.parse_schema(WRITABLE_DEF)
WRITER = compile_writer(WRITABLE)

junk = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**64), 2**64),
    st.floats(),
    st.text(max_size=3),
    st.binary(max_size=3),
    st.lists(st.integers(0, 3), max_size=2),
    st.tuples(st.just("string"), st.text(max_size=2)),
    st.decimals(allow_nan=False, places=3, min_value=-10_000, max_value=10_000),
    st.datetimes(timezones=st.sampled_from([UTC, None])),
    st.uuids(),
    st.sampled_from(["A", "B", "D", "€\udc80"]),
    st.just({"x": "y"}),
)
plain = {
    "n": st.none(),
    "b": st.booleans(),
    "i": st.integers(-(2**31), 2**31 - 1),
    "l": st.integers(-(2**63), 2**63 - 1),
    "f": st.floats(width=32),
    "d": st.floats(),
    "by": st.binary(max_size=70),
    "s": st.text(max_size=70),
    "fx": st.binary(min_size=2, max_size=2),
    "e": st.sampled_from(["A", "B", "C"]),
    "us": st.one_of(st.none(), st.text(max_size=3)),
    "ul": st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1)),
    "ui": st.one_of(st.none(), st.integers(-(2**32), 2**32)),
    "a": st.one_of(st.lists(st.integers(-(2**40), 2**40), max_size=3), st.tuples(st.integers(0, 9))),
    "ar": st.lists(st.fixed_dictionaries({"x": st.text(max_size=3)}), max_size=2),
    "r": st.fixed_dictionaries({"x": st.text(max_size=3)}),
    "dec": st.decimals(min_value=-9999, max_value=9999, places=2, allow_nan=False),
    "ts": st.datetimes(timezones=st.just(UTC)),
    "dt": st.dates(),
    "uu": st.one_of(st.uuids(), st.uuids().map(str)),
}


@st.composite
def records_with_junk(draw: st.DrawFn) -> dict[str, Any]:
    record = {name: draw(values) for name, values in plain.items()}
    for name in draw(st.lists(st.sampled_from(sorted(plain)), max_size=3)):
        if draw(st.booleans()):
            record[name] = draw(junk)
        else:
            record.pop(name, None)
    return record


@PROFILE
@given(records_with_junk())
def test_the_compiled_writer_writes_what_fastavro_writes_or_refuses(record: dict[str, Any]) -> None:
    assert WRITER is not None
    try:
        written = WRITER(record)
    except Exception:
        return  # fastavro writes it (or refuses it): the codec asks fastavro
    assert ("ok", written) == fastavro_write(WRITABLE, record)


@PROFILE
@given(st.sampled_from(NEWEST), st.data())
def test_encode_record_behaves_as_through_fastavro(schema: SchemaVersion, data: st.DataObject) -> None:
    record = sample_record(schema)
    metadata = record["metadata"]
    for target in data.draw(st.lists(st.sampled_from([record, metadata]), max_size=2)):
        key = data.draw(st.sampled_from(sorted(target)))
        target[key] = data.draw(junk)

    def through_fastavro(rec: dict[str, Any]) -> bytes:
        return REFERENCE.encode_record(schema.name, rec)

    assert outcome(lambda r: CODEC.encode_record(schema.name, r), record) == outcome(through_fastavro, record)


def test_the_reference_codec_never_takes_the_compiled_path() -> None:
    for data in VALID:
        REFERENCE.decode(data)
        REFERENCE.decode_record(data)
    for sv in NEWEST:
        REFERENCE.encode_record(sv.name, sample_record(sv))
    assert not REFERENCE._by_header
    assert not any(REFERENCE._fast.values())
    assert not any(REFERENCE._writers.values())
