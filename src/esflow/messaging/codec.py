"""The codec: envelopes <-> Avro bytes, with schema resolution and upcasting on the way in.

Encoding always writes the newest schema version of a type. Decoding reads whatever version wrote the
bytes and brings it to the newest one in a loop:

1. the framing names the writer schema (single-object fingerprint, or a registry id);
2. Avro resolution reads the body with the newest reader schema that Avro alone can reach from the
   writer (up to, not across, the next code-upcaster step);
3. the upcaster for that step turns the dict into the next version; if Avro-only versions follow, the
   dict is re-encoded with its version and read with the furthest reachable reader again; repeat.

Step 3's re-encode makes a v1 record pay twice, but keeps Avro's default-filling rules in one place
(fastavro) instead of re-implementing them for dicts. The newest versions, the hot path, skip all of it.

The domain never sees Avro: envelopes go in as pydantic models dumped in python mode (fastavro needs
UUID, datetime and Decimal objects for the logical types) and come out validated against the models.

Fast paths (speed only, never behaviour): the newest version of each type gets a compiled reader and
writer (:func:`compile_reader`, :func:`compile_writer`: the schema turned once into straight-line Python
that indexes bytes instead of interpreting the schema per value) and one pydantic-core validator for the
whole envelope (:func:`envelope_validator`). They handle the plain case only; whatever they refuse (odd
encodings, unusual Python types, invalid data) goes the full way through fastavro and the models, which
produces the result or the exact error it always did. ``tests/unit/test_codec_fast.py`` holds them to that.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Context, Decimal
from typing import Any, Protocol, cast

from fastavro import schemaless_reader, schemaless_writer
from fastavro.read import LOGICAL_READERS
from fastavro.schema import extract_logical_type
from fastavro.write import LOGICAL_WRITERS
from pydantic import ValidationError
from pydantic_core import CoreSchema, SchemaValidator

from esflow.domain.catalog import MESSAGE_TYPES, MessageSpec
from esflow.domain.messages import (
    Command,
    CommandEnvelope,
    CommandMetadata,
    Envelope,
    Event,
    EventEnvelope,
    EventMetadata,
)
from esflow.errors import (
    CodecError,
    DecodeError,
    EncodeError,
    FramingError,
    SchemaValidationError,
    UnknownSchemaError,
    UpcastError,
)
from esflow.messaging.schemas import SchemaCatalog, SchemaVersion
from esflow.messaging.upcasting import DEFAULT_UPCASTERS, Record, Upcaster, UpcasterRegistry
from esflow.settings import SchemaSettings

SINGLE_OBJECT_MAGIC = b"\xc3\x01"
SINGLE_OBJECT_HEADER_LEN = 10
CONTENT_TYPE_SINGLE_OBJECT = "application/vnd.apache.avro.single-object"

# Kafka header names. Headers duplicate what the bytes already say, for filtering without decoding;
# the decoder never trusts them.
HEADER_TYPE = "esflow-type"
HEADER_VERSION = "esflow-schema-version"
HEADER_KIND = "esflow-kind"
HEADER_ID = "esflow-message-id"
HEADER_CORRELATION = "esflow-correlation-id"
HEADER_CONTENT_TYPE = "content-type"


class Framing(Protocol):
    """How the writer schema is named in front of the Avro body."""

    content_type: str

    def frame(self, schema: SchemaVersion, body: bytes, *, topic: str | None) -> bytes:
        """Prefix ``body`` with the header naming ``schema``."""
        ...

    def unframe(self, data: bytes) -> tuple[SchemaVersion, int]:
        """The writer schema named by ``data``'s header and the offset where the body starts."""
        ...


class SingleObjectFraming:
    """Avro single-object encoding: ``C3 01``, the 8-byte little-endian CRC-64-AVRO fingerprint, the body.

    Self-describing without a server; any Avro implementation with the schema can read it (Java's
    ``BinaryMessageDecoder``).
    """

    content_type = CONTENT_TYPE_SINGLE_OBJECT

    def __init__(self, catalog: SchemaCatalog) -> None:
        self._catalog = catalog

    def frame(self, schema: SchemaVersion, body: bytes, *, topic: str | None = None) -> bytes:
        """Prefix ``body`` with the magic and ``schema``'s fingerprint."""
        return SINGLE_OBJECT_MAGIC + schema.fingerprint + body

    def unframe(self, data: bytes) -> tuple[SchemaVersion, int]:
        """Find the writer schema by fingerprint."""
        if data[:2] != SINGLE_OBJECT_MAGIC:
            if SINGLE_OBJECT_MAGIC.startswith(data):
                raise DecodeError(f"truncated single-object header: {len(data)} bytes, need 10")
            raise FramingError(
                f"not Avro single-object encoding: starts with {data[:2].hex()}, expected c301"
            )
        if len(data) < SINGLE_OBJECT_HEADER_LEN:
            raise DecodeError(f"truncated single-object header: {len(data)} bytes, need 10")
        fp = bytes(data[2:SINGLE_OBJECT_HEADER_LEN])
        schema = self._catalog.by_fingerprint(fp)
        if schema is None:
            raise UnknownSchemaError(
                f"unknown schema fingerprint {fp.hex()}",
                hint="written by a newer esflow or another producer? `esflow schemas check` lists known ones",
            )
        return schema, SINGLE_OBJECT_HEADER_LEN


@dataclass(frozen=True)
class DecodedRecord:
    """A record brought to the newest version of its type, before model validation."""

    schema: SchemaVersion
    """The newest schema: the record's shape now."""
    writer_version: int
    """The version that wrote the bytes."""
    record: Record


@dataclass(frozen=True)
class _Plan:
    """How to bring one writer version to the newest: read with ``reader``, then the upcast steps."""

    reader: SchemaVersion
    same_schema: bool
    steps: tuple[tuple[Upcaster, SchemaVersion, SchemaVersion], ...]
    """(upcaster, its output version, the furthest Avro-reachable version after it)."""


class _FastPath:
    """The hot path for the newest version of one type: a compiled reader and one envelope validator.

    Either step may refuse (any exception, or bytes that are not the plain encoding); then it answers
    None and the codec takes the full path, which raises exactly the error it always raised. So the fast
    path only ever changes how fast a good message is decoded, never what any message decodes to.
    """

    __slots__ = ("payload_key", "read", "validate")

    def __init__(
        self,
        read: Callable[[bytes, int], Any],
        validate: Callable[[Any], Any] | None,
        payload_key: str,
    ) -> None:
        self.read = read
        self.validate = validate
        self.payload_key = payload_key

    def record(self, data: bytes, start: int) -> Record | None:
        """The record dict, or None to take the full path."""
        try:
            record: Record = self.read(data, start)
        except Exception:  # not the plain encoding: fastavro reads it (or names the problem)
            return None
        return record

    def envelope(self, data: bytes, start: int) -> Envelope | None:
        """The validated envelope, or None to take the full path."""
        if self.validate is None:  # no model for this version: the full path raises the usual error
            return None
        try:
            record = self.read(data, start)
            metadata = record.pop("metadata")
            envelope: Envelope = self.validate({"metadata": metadata, self.payload_key: record})
        except Exception:  # the full path reads and validates again, raising its usual typed error
            return None
        return envelope


def _write(schema: SchemaVersion, record: Mapping[str, Any]) -> bytes:
    buf = io.BytesIO()
    schemaless_writer(buf, schema.parsed, record)
    return buf.getvalue()


class Codec:
    """Encodes envelopes to framed Avro and decodes them back to the newest message models."""

    def __init__(
        self,
        catalog: SchemaCatalog,
        *,
        framing: Framing | None = None,
        upcasters: UpcasterRegistry = DEFAULT_UPCASTERS,
        messages: Mapping[str, MessageSpec] = MESSAGE_TYPES,
    ) -> None:
        self.catalog = catalog
        self.framing: Framing = framing or SingleObjectFraming(catalog)
        self._upcasters = upcasters
        self._messages = messages
        self._plans: dict[bytes, _Plan] = {}
        self._fast: dict[bytes, _FastPath | None] = {}
        self._by_header: dict[bytes, _FastPath] = {}
        self._writers: dict[bytes, Callable[[Any], bytes] | None] = {}
        """Fast paths by single-object header (magic + fingerprint), when that is the framing."""

    @classmethod
    def from_settings(cls, settings: SchemaSettings | None = None) -> Codec:
        """A codec over the configured schema directory; Confluent framing when a registry is configured."""
        s = settings or SchemaSettings()
        catalog = SchemaCatalog.load(s.dir)
        if s.registry_url:
            from esflow.messaging.registry import ConfluentFraming

            return cls(
                catalog,
                framing=ConfluentFraming.from_url(s.registry_url, catalog, auto_register=s.auto_register),
            )
        return cls(catalog)

    # ------------------------------------------------------------------------------------ encoding

    def encode(self, envelope: Envelope, *, topic: str | None = None) -> bytes:
        """Framed Avro bytes of an event or command envelope, in its type's newest schema.

        ``topic`` is needed by registry framing (the subject is per topic and record).
        """
        message: Event | Command = envelope.event if isinstance(envelope, EventEnvelope) else envelope.command
        record: dict[str, Any] = {"metadata": envelope.metadata.model_dump(), **message.model_dump()}
        return self.encode_record(message.type_name(), record, topic=topic)

    def encode_record(
        self,
        type_name: str,
        record: Mapping[str, Any],
        *,
        version: int | None = None,
        topic: str | None = None,
    ) -> bytes:
        """Framed Avro bytes of a raw record dict; ``version`` picks an older schema (tests, migrations)."""
        schema = self.catalog.latest(type_name) if version is None else self.catalog.get(type_name, version)
        if schema is None:
            raise EncodeError(f"no schema for {type_name}" + (f" v{version}" if version else ""), topic=topic)
        body = self._fast_write(schema, record)
        if body is None:
            try:
                body = _write(schema, record)
            except (ValueError, TypeError, KeyError, AttributeError, OverflowError, struct.error) as exc:
                raise EncodeError(f"{schema.label} cannot hold this record: {exc}", topic=topic) from exc
        return self.framing.frame(schema, body, topic=topic)

    def _fast_write(self, schema: SchemaVersion, record: Mapping[str, Any]) -> bytes | None:
        """The body from ``schema``'s compiled writer, or None to let fastavro write it (or refuse it)."""
        try:
            writer = self._writers[schema.fingerprint]
        except KeyError:
            writer = self._writers[schema.fingerprint] = compile_writer(schema.parsed, schema.label)
        if writer is None:
            return None
        try:
            return writer(record)
        except Exception:  # not the plain case: fastavro writes it, or raises what it always raised
            return None

    def key(self, envelope: Envelope) -> bytes:
        """The Kafka key: the aggregate id, so one aggregate's messages stay in order on one partition."""
        return str(envelope.metadata.aggregate_id).encode()

    def headers(self, envelope: Envelope) -> list[tuple[str, bytes]]:
        """Kafka headers duplicating the routing facts, for consumers that filter without decoding."""
        if isinstance(envelope, EventEnvelope):
            message: Event | Command = envelope.event
            message_id = envelope.metadata.event_id
        else:
            message = envelope.command
            message_id = envelope.metadata.command_id
        return [
            (HEADER_TYPE, message.type_name().encode()),
            (HEADER_VERSION, str(message.schema_version).encode()),
            (HEADER_KIND, message.kind.encode()),
            (HEADER_ID, str(message_id).encode()),
            (HEADER_CORRELATION, str(envelope.metadata.correlation_id).encode()),
            (HEADER_CONTENT_TYPE, self.framing.content_type.encode()),
        ]

    # ------------------------------------------------------------------------------------ decoding

    def decode(
        self,
        data: bytes,
        *,
        topic: str | None = None,
        partition: int | None = None,
        offset: int | None = None,
    ) -> Envelope:
        """The envelope in ``data``, as the newest models; any failure is a typed :class:`CodecError`."""
        try:
            # Hot path: single-object bytes of a newest version seen before, found by their 10-byte header.
            fast = self._by_header.get(data[:SINGLE_OBJECT_HEADER_LEN]) if type(data) is bytes else None
            if fast is not None:
                envelope = fast.envelope(data, SINGLE_OBJECT_HEADER_LEN)
                if envelope is not None:
                    return envelope
            data, writer, start = self._unframe(data)
            if fast is None:
                fast = self._fast_path(writer)
                if fast is not None:
                    envelope = fast.envelope(data, start)
                    if envelope is not None:
                        return envelope
            return self._to_envelope(self._resolve(data, writer, start))
        except CodecError as exc:
            located = _located(exc, topic, partition, offset)
            if located is exc:
                raise
            raise located from exc

    def decode_event(
        self,
        data: bytes,
        *,
        topic: str | None = None,
        partition: int | None = None,
        offset: int | None = None,
    ) -> EventEnvelope:
        """Like :meth:`decode`, and the message must be an event."""
        envelope = self.decode(data, topic=topic, partition=partition, offset=offset)
        if not isinstance(envelope, EventEnvelope):
            raise DecodeError(
                f"expected an event, got the command {envelope.command.type_name()}",
                topic=topic, partition=partition, offset=offset,
            )  # fmt: skip
        return envelope

    def decode_command(
        self,
        data: bytes,
        *,
        topic: str | None = None,
        partition: int | None = None,
        offset: int | None = None,
    ) -> CommandEnvelope:
        """Like :meth:`decode`, and the message must be a command."""
        envelope = self.decode(data, topic=topic, partition=partition, offset=offset)
        if not isinstance(envelope, CommandEnvelope):
            raise DecodeError(
                f"expected a command, got the event {envelope.event.type_name()}",
                topic=topic, partition=partition, offset=offset,
            )  # fmt: skip
        return envelope

    def decode_message(self, message: Any) -> Envelope:
        """Decode a confluent-kafka ``Message``, naming its topic/partition/offset in any error."""
        return self.decode(
            message.value() or b"",
            topic=message.topic(),
            partition=message.partition(),
            offset=message.offset(),
        )

    def decode_record(
        self,
        data: bytes,
        *,
        topic: str | None = None,
        partition: int | None = None,
        offset: int | None = None,
    ) -> DecodedRecord:
        """The record dict in ``data``, resolved and upcast to the newest version, not yet validated."""
        try:
            data, writer, start = self._unframe(data)
            fast = self._by_header.get(data[:start]) or self._fast_path(writer)
            if fast is not None:
                record = fast.record(data, start)
                if record is not None:
                    return DecodedRecord(schema=writer, writer_version=writer.version, record=record)
            return self._resolve(data, writer, start)
        except CodecError as exc:
            located = _located(exc, topic, partition, offset)
            if located is exc:
                raise
            raise located from exc

    def _unframe(self, data: bytes) -> tuple[bytes, SchemaVersion, int]:
        if not isinstance(data, bytes | bytearray | memoryview):
            raise DecodeError(f"expected bytes, got {type(data).__name__}")
        data = bytes(data)
        writer, start = self.framing.unframe(data)
        return data, writer, start

    def _fast_path(self, writer: SchemaVersion) -> _FastPath | None:
        """The compiled reader (and envelope validator) for bytes of ``writer``, built on first use.

        Only the newest version of a type has one (older versions need resolution or upcasting, and are
        rare); None means the full path.
        """
        try:
            return self._fast[writer.fingerprint]
        except KeyError:
            pass
        fast: _FastPath | None = None
        plan = self._plan(writer)
        if plan.same_schema and not plan.steps:
            reader = compile_reader(writer.decode_parsed, writer.label)
            if reader is not None:
                spec = self._messages.get(writer.name)
                validate = None
                if spec is not None and spec.version == writer.version:
                    validate = envelope_validator(spec)
                fast = _FastPath(reader, validate, "event" if spec and spec.kind == "event" else "command")
        self._fast[writer.fingerprint] = fast
        if fast is not None and type(self.framing) is SingleObjectFraming:
            self._by_header[SINGLE_OBJECT_MAGIC + writer.fingerprint] = fast
        return fast

    def _resolve(self, data: bytes, writer: SchemaVersion, start: int) -> DecodedRecord:
        """The full decoding path: fastavro, resolution and upcasting (the fast path's fallback)."""
        plan = self._plan(writer)
        record = _read(data, start, writer, None if plan.same_schema else plan.reader)
        version = plan.reader
        for upcaster, upcast_to, reachable in plan.steps:
            try:
                record = upcaster(record)
            except CodecError:
                raise
            except Exception as exc:  # an upcaster is code over old data: any failure is a decode failure
                raise UpcastError(
                    f"upcasting {version.label} -> v{upcast_to.version} failed: {exc!r}"
                ) from exc
            if reachable is not upcast_to:
                try:
                    body = _write(upcast_to, record)
                except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
                    raise UpcastError(
                        f"the upcaster to {upcast_to.label} produced a record its schema rejects: {exc}"
                    ) from exc
                record = _read(body, 0, upcast_to, reachable)
            version = reachable
        return DecodedRecord(schema=version, writer_version=writer.version, record=record)

    def _plan(self, writer: SchemaVersion) -> _Plan:
        plan = self._plans.get(writer.fingerprint)
        if plan is not None:
            return plan
        versions = self.catalog.versions(writer.name)

        def reachable(v: SchemaVersion) -> SchemaVersion:
            # The furthest version Avro resolution reaches from v without crossing an upcaster step.
            out = v
            for nxt in versions[out.version :]:
                if self._upcasters.get(writer.name, out.version) is not None:
                    break
                out = nxt
            return out

        reader = reachable(writer)
        steps: list[tuple[Upcaster, SchemaVersion, SchemaVersion]] = []
        current = reader
        while current.version < versions[-1].version:
            upcaster = self._upcasters.get(writer.name, current.version)
            if upcaster is None:  # pragma: no cover - reachable() only stops at an upcaster step
                raise UpcastError(f"no way from {current.label} to v{current.version + 1}")
            nxt = versions[current.version]
            target = reachable(nxt)
            steps.append((upcaster, nxt, target))
            current = target
        plan = _Plan(reader=reader, same_schema=reader is writer, steps=tuple(steps))
        self._plans[writer.fingerprint] = plan
        return plan

    def _to_envelope(self, decoded: DecodedRecord) -> Envelope:
        schema = decoded.schema
        spec = self._messages.get(schema.name)
        if spec is None or spec.version != schema.version:
            raise UnknownSchemaError(f"{schema.label} has no message model in this esflow")
        record = dict(decoded.record)
        metadata = record.pop("metadata", None)
        try:
            if spec.kind == "event":
                return EventEnvelope(
                    metadata=EventMetadata.model_validate(metadata),
                    event=spec.model.model_validate(record),
                )
            return CommandEnvelope(
                metadata=CommandMetadata.model_validate(metadata),
                command=spec.model.model_validate(record),
            )
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "<record>"
            raise SchemaValidationError(
                f"{schema.label} record violates the model at {where}: {first['msg']}"
                + (f" ({exc.error_count()} errors)" if exc.error_count() > 1 else "")
            ) from exc


def _read(data: bytes, start: int, writer: SchemaVersion, reader: SchemaVersion | None) -> Record:
    buf = io.BytesIO(data)
    buf.seek(start)
    try:
        record = schemaless_reader(
            buf, writer.decode_parsed, reader.decode_parsed if reader is not None else None
        )
    except EOFError as exc:
        raise DecodeError(f"truncated {writer.label} body: {exc or 'unexpected end of data'}") from exc
    except UnicodeDecodeError as exc:
        raise DecodeError(f"{writer.label} body holds a string that is not UTF-8") from exc
    except IndexError as exc:
        raise DecodeError(f"{writer.label} body holds a union branch or enum index out of range") from exc
    except (ValueError, OverflowError) as exc:
        # Raised by the logical-type readers (uuid, timestamp, decimal) on values they cannot represent.
        raise SchemaValidationError(f"{writer.label} body violates a logical type: {exc}") from exc
    except Exception as exc:  # fastavro's reader has no common error base; untrusted bytes hit them all
        raise DecodeError(
            f"{writer.label} body does not match its schema: {type(exc).__name__}: {exc}"
        ) from exc
    if buf.tell() != len(data):
        raise DecodeError(f"{len(data) - buf.tell()} unexpected trailing bytes after the {writer.label} body")
    if not isinstance(record, dict):  # pragma: no cover - every esflow schema is a record
        raise DecodeError(f"{writer.label} body is not a record")
    return record


# ------------------------------------------------------------------------------- envelope validation


def envelope_validator(spec: MessageSpec) -> Callable[[Any], Envelope] | None:
    """One pydantic-core validator from ``{"metadata": {...}, "event"|"command": {...}}`` to the envelope.

    Built from the models' own core schemas: the envelope's, with its ``SerializeAsAny[Event]`` field
    replaced by ``spec.model``'s schema, so every constraint, validator and default is the models' and the
    result is the same ``EventEnvelope``/``CommandEnvelope`` the three ``model_validate`` calls build, in
    one call into Rust. None when pydantic cannot build it (the codec then validates model by model).
    """
    envelope: type[EventEnvelope | CommandEnvelope]
    envelope, key = (EventEnvelope, "event") if spec.kind == "event" else (CommandEnvelope, "command")
    replaced: list[bool] = []

    def replace(schema: Any) -> Any:
        if isinstance(schema, list):
            return [replace(s) for s in schema]
        if not isinstance(schema, dict):
            return schema
        if schema.get("type") == "model" and schema.get("cls") is envelope:
            fields_schema = dict(schema["schema"])
            fields = dict(fields_schema["fields"])
            fields[key] = {**fields[key], "schema": spec.model.__pydantic_core_schema__}
            fields_schema["fields"] = fields
            replaced.append(True)
            return {**schema, "schema": fields_schema}
        return {k: replace(v) for k, v in schema.items()}

    try:
        schema = replace(envelope.__pydantic_core_schema__)
        if len(replaced) != 1:
            return None
        validator = SchemaValidator(cast(CoreSchema, schema))
    except Exception:  # an unusual model schema: keep the model-by-model path
        return None
    return cast(Callable[[Any], Envelope], validator.validate_python)


# ---------------------------------------------------------------------------------- fast Avro reader

_PRIMITIVE_TYPES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})
_STRUCT_FLOAT = struct.Struct("<f").unpack_from
_STRUCT_DOUBLE = struct.Struct("<d").unpack_from
_FASTAVRO_TIMESTAMP_MICROS = LOGICAL_READERS.get("long-timestamp-micros")
_FASTAVRO_DECIMAL = LOGICAL_READERS.get("bytes-decimal")
_MAX_DECIMAL_PRECISION = 1000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class _NotCanonical(Exception):
    """Raised by a compiled reader on anything but the plain encoding; the caller falls back to fastavro."""


class _Unsupported(Exception):
    """The schema uses something the reader compiler leaves to fastavro (recursion, arrays of nothing)."""


def _read_long(data: bytes, pos: int) -> tuple[int, int]:
    """A zig-zag varint of up to 9 bytes (every value below 2**62) at ``pos``: (value, next position)."""
    n = 0
    shift = 0
    while True:
        b = data[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        if b < 0x80:
            return (n >> 1) ^ -(n & 1), pos
        shift += 7
        if shift > 56:  # 10-byte varints are left to fastavro's 64-bit arithmetic
            raise _NotCanonical


def _read_count(data: bytes, pos: int) -> tuple[int, int]:
    """A non-negative varint (a length, an index, an array block count)."""
    n, pos = _read_long(data, pos)
    if n < 0:
        raise _NotCanonical
    return n, pos


class _ReaderCompiler:
    """Turns a parsed writer schema into the source of one straight-line Python function.

    The function reads exactly what fastavro's ``schemaless_reader(fo, schema, None)`` reads and returns an
    equal dict (logical types through fastavro's own ``LOGICAL_READERS``), but indexes the bytes instead of
    calling ``fo.read(1)`` per byte and interpreting the schema dict per value. It accepts the canonical
    encoding only: non-negative lengths, counts and branch/symbol indexes in range, varints up to 9 bytes,
    and exactly all the bytes. On anything else it raises, and the codec re-reads with fastavro, so errors
    (and the rare legal oddities, like negative array block counts) are fastavro's, unchanged.
    """

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.consts: dict[str, Any] = {}
        self.named: dict[str, Any] = {}
        self.active: set[str] = set()
        self.counter = 0

    def var(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}{self.counter}"

    def const(self, value: Any, prefix: str = "k") -> str:
        name = self.var(prefix)
        self.consts[name] = value
        return name

    def emit(self, indent: int, line: str) -> None:
        self.lines.append("    " * indent + line)

    def count(self, indent: int, target: str) -> None:
        self.emit(indent, f"{target} = data[pos]")
        self.emit(indent, f"if {target} & 0x81:")
        self.emit(indent + 1, f"{target}, pos = _read_count(data, pos)")
        self.emit(indent, "else:")
        self.emit(indent + 1, f"{target} >>= 1")
        self.emit(indent + 1, "pos += 1")

    def value(self, schema: Any, target: str, indent: int) -> None:
        """Emit lines reading one value of ``schema`` into the local ``target``."""
        if isinstance(schema, list):
            self.union(schema, target, indent)
            return
        if isinstance(schema, str):
            if schema in _PRIMITIVE_TYPES:
                self.primitive(schema, target, indent)
                return
            if schema not in self.named or schema in self.active:
                raise _Unsupported(schema)
            self.value(self.named[schema], target, indent)
            return
        kind = schema["type"]
        if isinstance(kind, dict | list) or (
            isinstance(kind, str)
            and kind not in _PRIMITIVE_TYPES
            and kind not in ("record", "error", "enum", "fixed", "array", "map")
        ):
            self.value(kind, target, indent)
        elif kind in _PRIMITIVE_TYPES:
            self.primitive(kind, target, indent)
        elif kind in ("record", "error"):
            self.record(schema, target, indent)
        elif kind == "enum":
            self.named[schema["name"]] = schema
            symbols = self.const(tuple(schema["symbols"]), "sym")
            index = self.var("i")
            self.count(indent, index)
            self.emit(indent, f"{target} = {symbols}[{index}]")
        elif kind == "fixed":
            self.named[schema["name"]] = schema
            size = int(schema["size"])
            self.emit(indent, f"{target} = data[pos : pos + {size}]")
            self.emit(indent, f"pos += {size}")
        elif kind == "array":
            self.array(schema["items"], target, indent)
        elif kind == "map":
            self.map(schema["values"], target, indent)
        else:  # pragma: no cover - parse_schema accepts no other type
            raise _Unsupported(kind)
        if "logicalType" in schema:
            self.logical(schema, target, indent)

    def logical(self, schema: Mapping[str, Any], target: str, indent: int) -> None:
        key = extract_logical_type(schema)
        reader = LOGICAL_READERS.get(key)
        if reader is None:
            return
        precision, scale = schema.get("precision"), schema.get("scale", 0)
        if reader is _FASTAVRO_TIMESTAMP_MICROS:
            # fastavro's read_timestamp_micros, inlined: epoch + timedelta(microseconds=value)
            self.emit(indent, f"{target} = _EPOCH + _timedelta(microseconds={target})")
        elif (
            reader is _FASTAVRO_DECIMAL
            and key == "bytes-decimal"
            and type(precision) is int
            and type(scale) is int
            and 0 < precision <= _MAX_DECIMAL_PRECISION
        ):
            # fastavro's read_decimal, inlined for the values that fit the precision (where its
            # create_decimal is exact); wider ones are rounded by fastavro, so they are left to it.
            limit = self.const(10**precision, "lim")
            context = self.const(Context(prec=precision), "ctx")
            self.emit(indent, f"{target} = _from_bytes({target}, 'big', signed=True)")
            self.emit(indent, f"if not -{limit} < {target} < {limit}:")
            self.emit(indent + 1, "raise _NotCanonical")
            self.emit(indent, f"{target} = _Decimal({target}).scaleb({-scale}, {context})")
        else:
            fn = self.const(reader, "lt")
            sch = self.const(schema, "s")
            self.emit(indent, f"{target} = {fn}({target}, {sch}, None)")

    def primitive(self, kind: str, target: str, indent: int) -> None:
        if kind == "null":
            self.emit(indent, f"{target} = None")
        elif kind == "boolean":
            self.emit(indent, f"{target} = data[pos] != 0")
            self.emit(indent, "pos += 1")
        elif kind in ("int", "long"):
            self.emit(indent, f"{target} = data[pos]")
            self.emit(indent, f"if {target} & 0x80:")
            self.emit(indent + 1, f"{target}, pos = _read_long(data, pos)")
            self.emit(indent, "else:")
            self.emit(indent + 1, f"{target} = ({target} >> 1) ^ -({target} & 1)")
            self.emit(indent + 1, "pos += 1")
        elif kind == "float":
            self.emit(indent, f"{target} = _unpack_float(data, pos)[0]")
            self.emit(indent, "pos += 4")
        elif kind == "double":
            self.emit(indent, f"{target} = _unpack_double(data, pos)[0]")
            self.emit(indent, "pos += 8")
        else:  # bytes, string
            size = self.var("n")
            self.count(indent, size)
            end = self.var("e")
            self.emit(indent, f"{end} = pos + {size}")
            decode = ".decode()" if kind == "string" else ""
            self.emit(indent, f"{target} = data[pos:{end}]{decode}")
            self.emit(indent, f"pos = {end}")

    def record(self, schema: Mapping[str, Any], target: str, indent: int) -> None:
        name = schema["name"]
        self.named[name] = schema
        self.active.add(name)
        fields: list[tuple[str, str]] = []
        for field in schema["fields"]:
            local = self.var("f")
            self.value(field["type"], local, indent)
            fields.append((field["name"], local))
        self.active.discard(name)
        self.emit(indent, f"{target} = {{{', '.join(f'{n!r}: {v}' for n, v in fields)}}}")

    def union(self, branches: list[Any], target: str, indent: int) -> None:
        index = self.var("i")
        self.count(indent, index)
        for i, branch in enumerate(branches):
            self.emit(indent, f"{'if' if i == 0 else 'elif'} {index} == {i}:")
            self.value(branch, target, indent + 1)
        self.emit(indent, "else:")
        self.emit(indent + 1, "raise _NotCanonical")

    def _blocks(self, target: str, indent: int, read_item: Callable[[int], None]) -> None:
        block = self.var("c")
        self.count(indent, block)
        self.emit(indent, f"while {block}:")
        loop = self.var("j")
        self.emit(indent + 1, f"for {loop} in range({block}):")
        read_item(indent + 2)
        self.count(indent + 1, block)

    def array(self, items: Any, target: str, indent: int) -> None:
        if _reads_nothing(items, self.named):
            raise _Unsupported("array of null")
        item = self.var("a")
        self.emit(indent, f"{target} = []")

        def read_item(level: int) -> None:
            self.value(items, item, level)
            self.emit(level, f"{target}.append({item})")

        self._blocks(target, indent, read_item)

    def map(self, values: Any, target: str, indent: int) -> None:
        key, item = self.var("m"), self.var("a")
        self.emit(indent, f"{target} = {{}}")

        def read_item(level: int) -> None:
            self.primitive("string", key, level)
            self.value(values, item, level)
            self.emit(level, f"{target}[{key}] = {item}")

        self._blocks(target, indent, read_item)


def _reads_nothing(schema: Any, named: Mapping[str, Any]) -> bool:
    """Whether a value of ``schema`` can take zero bytes (only null does; a record of nulls too)."""
    if schema == "null" or (isinstance(schema, dict) and schema.get("type") == "null"):
        return True
    if isinstance(schema, dict) and schema.get("type") in ("record", "error"):
        return all(_reads_nothing(f["type"], named) for f in schema["fields"])
    if isinstance(schema, str) and schema in named:
        return _reads_nothing(named[schema], named)
    return False


def compile_reader(schema: Any, label: str = "record") -> Callable[[bytes, int], Any] | None:
    """A fast reader of ``schema``'s (parsed) binary encoding, or None when fastavro must do it.

    ``reader(data, pos)`` returns the value encoded from ``pos`` to the end of ``data``, equal to what
    fastavro's ``schemaless_reader`` returns, or raises (any exception) when the bytes are not the
    canonical encoding of one value; then the caller must ask fastavro, which knows the exact error.
    """
    compiler = _ReaderCompiler()
    try:
        compiler.value(schema, "result", 1)
    except _Unsupported:
        return None
    source = "\n".join(
        [
            "def reader(data, pos):",
            *compiler.lines,
            "    if pos != len(data):",
            "        raise _NotCanonical",
            "    return result",
        ]
    )
    namespace: dict[str, Any] = {
        "_read_long": _read_long,
        "_read_count": _read_count,
        "_unpack_float": _STRUCT_FLOAT,
        "_unpack_double": _STRUCT_DOUBLE,
        "_NotCanonical": _NotCanonical,
        "_EPOCH": _EPOCH,
        "_timedelta": timedelta,
        "_Decimal": Decimal,
        "_from_bytes": int.from_bytes,
        **compiler.consts,
    }
    exec(compile(source, f"<esflow avro reader: {label}>", "exec"), namespace)
    reader: Callable[[bytes, int], Any] = namespace["reader"]
    return reader


# ---------------------------------------------------------------------------------- fast Avro writer

_UNION_PLAIN_BRANCHES = {"string": "str", "bytes": "bytes", "long": "int", "int": "int", "boolean": "bool"}
_ZIGZAG_BYTES = tuple(bytes([n]) for n in range(128))
_LONG_LIMIT = 2**62
_INT_LIMIT = 2**31


def _zigzag(value: int) -> bytes:
    """The zig-zag varint of ``value`` (|value| < 2**62, checked by the caller), as fastavro writes it."""
    n = (value << 1) ^ (value >> 63)
    if n < 0x80:
        return _ZIGZAG_BYTES[n]
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


class _WriterCompiler:
    """Turns a parsed schema into the source of one Python function writing a record's binary encoding.

    The function writes the same bytes as fastavro's ``schemaless_writer`` for the values it accepts,
    and accepts only the plain case: a dict holding every field, values of exactly the Python type the
    Avro type is written from (``str``, ``int`` within 62 bits, ``bool``, ``float``, ``bytes``, ``list``
    or ``tuple``), enum symbols and logical types through fastavro's own ``LOGICAL_WRITERS``, unions of
    null and one plain primitive. Anything else raises, and the codec asks fastavro, which writes it or
    names the problem exactly as before (defaults for missing fields, coercions, union matching).
    """

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.consts: dict[str, Any] = {}
        self.named: dict[str, Any] = {}
        self.active: set[str] = set()
        self.counter = 0

    def var(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}{self.counter}"

    def const(self, value: Any, prefix: str) -> str:
        name = self.var(prefix)
        self.consts[name] = value
        return name

    def emit(self, indent: int, line: str) -> None:
        self.lines.append("    " * indent + line)

    def check(self, indent: int, source: str, py_type: str) -> None:
        self.emit(indent, f"if type({source}) is not {py_type}:")
        self.emit(indent + 1, "raise _NotCanonical")

    def long(self, indent: int, source: str, limit: str = "_LONG_LIMIT") -> None:
        self.check(indent, source, "int")
        self.emit(indent, f"if not -{limit} <= {source} < {limit}:")
        self.emit(indent + 1, "raise _NotCanonical")
        self.emit(indent, f"out += _ZIGZAG_BYTES[{source} << 1] if 0 <= {source} < 64 else _zigzag({source})")

    def value(self, schema: Any, source: str, indent: int) -> None:
        """Emit lines appending the encoding of the local ``source`` (of ``schema``) to ``out``."""
        if isinstance(schema, list):
            self.union(schema, source, indent)
            return
        if isinstance(schema, str):
            if schema in _PRIMITIVE_TYPES:
                self.primitive(schema, source, indent)
                return
            if schema not in self.named or schema in self.active:
                raise _Unsupported(schema)
            self.value(self.named[schema], source, indent)
            return
        kind = schema["type"]
        logical_on_complex = "logicalType" in schema and kind in ("record", "enum", "array", "fixed")
        if not isinstance(kind, str) or kind in ("map", "error") or logical_on_complex:
            raise _Unsupported(kind)
        if "logicalType" in schema:
            key = extract_logical_type(schema)
            writer = LOGICAL_WRITERS.get(key)
            if writer is not None:
                prepared = self.var("p")
                fn, sch = self.const(writer, "lw"), self.const(schema, "s")
                if key == "string-uuid":
                    # fastavro's prepare_uuid returns a str unchanged: skip the call for ids given as text.
                    self.emit(
                        indent, f"{prepared} = {source} if type({source}) is str else {fn}({source}, {sch})"
                    )
                else:
                    self.emit(indent, f"{prepared} = {fn}({source}, {sch})")
                source = prepared
        if kind in _PRIMITIVE_TYPES:
            self.primitive(kind, source, indent)
        elif kind == "record":
            name = schema["name"]
            self.named[name] = schema
            self.active.add(name)
            self.check(indent, source, "dict")
            for field in schema["fields"]:
                local = self.var("f")
                self.emit(indent, f"{local} = {source}[{field['name']!r}]")
                self.value(field["type"], local, indent)
            self.active.discard(name)
        elif kind == "enum":
            self.named[schema["name"]] = schema
            symbols = self.const(list(schema["symbols"]), "sym")
            self.emit(indent, f"out += _zigzag({symbols}.index({source}))")
        elif kind == "fixed":
            self.named[schema["name"]] = schema
            self.check(indent, source, "bytes")
            self.emit(indent, f"if len({source}) != {int(schema['size'])}:")
            self.emit(indent + 1, "raise _NotCanonical")
            self.emit(indent, f"out += {source}")
        elif kind == "array":
            items = self.var("a")
            self.emit(indent, f"if type({source}) is not list and type({source}) is not tuple:")
            self.emit(indent + 1, "raise _NotCanonical")
            self.emit(indent, f"if {source}:")
            self.emit(indent + 1, f"out += _zigzag(len({source}))")
            self.emit(indent + 1, f"for {items} in {source}:")
            self.value(schema["items"], items, indent + 2)
            self.emit(indent, "out += b'\\x00'")
        else:
            self.value(kind, source, indent)

    def primitive(self, kind: str, source: str, indent: int) -> None:
        if kind == "null":
            self.emit(indent, f"if {source} is not None:")
            self.emit(indent + 1, "raise _NotCanonical")
        elif kind == "boolean":
            self.check(indent, source, "bool")
            self.emit(indent, f"out += b'\\x01' if {source} else b'\\x00'")
        elif kind in ("int", "long"):
            self.long(indent, source)
        elif kind == "float":
            self.check(indent, source, "float")
            self.emit(indent, f"out += _pack_float({source})")
        elif kind == "double":
            self.check(indent, source, "float")
            self.emit(indent, f"out += _pack_double({source})")
        else:  # bytes, string
            encoded = source
            if kind == "string":
                self.check(indent, source, "str")
                encoded = self.var("b")
                self.emit(indent, f"{encoded} = {source}.encode()")
            else:
                self.check(indent, source, "bytes")
            # Lengths below 64 take one byte: index it instead of calling _zigzag (most strings are short).
            size = self.var("n")
            self.emit(indent, f"{size} = len({encoded})")
            self.emit(indent, f"out += _ZIGZAG_BYTES[{size} << 1] if {size} < 64 else _zigzag({size})")
            self.emit(indent, f"out += {encoded}")

    def union(self, branches: list[Any], source: str, indent: int) -> None:
        other = [b for b in branches if b != "null"]
        if (
            len(branches) != 2
            or len(other) != 1
            or not isinstance(other[0], str)
            or other[0] not in _UNION_PLAIN_BRANCHES
        ):
            raise _Unsupported("union")  # fastavro's branch matching is left to fastavro
        null_index, other_index = branches.index("null"), branches.index(other[0])
        self.emit(indent, f"if {source} is None:")
        self.emit(indent + 1, f"out += {_ZIGZAG_BYTES[null_index << 1]!r}")
        self.emit(indent, "else:")
        self.emit(indent + 1, f"out += {_ZIGZAG_BYTES[other_index << 1]!r}")
        if other[0] == "int":  # fastavro only picks an int branch for a 32-bit value
            self.long(indent + 1, source, "_INT_LIMIT")
        else:
            self.value(other[0], source, indent + 1)


def compile_writer(schema: Any, label: str = "record") -> Callable[[Any], bytes] | None:
    """A fast writer of ``schema``'s (parsed) binary encoding, or None when fastavro must do it.

    ``writer(record)`` returns the bytes fastavro's ``schemaless_writer`` writes for ``record``, or raises
    (any exception) when the record is not the plain case; then the caller must ask fastavro.
    """
    compiler = _WriterCompiler()
    try:
        compiler.value(schema, "record", 1)
    except _Unsupported:
        return None
    source = "\n".join(
        ["def writer(record):", "    out = bytearray()", *compiler.lines, "    return bytes(out)"]
    )
    namespace: dict[str, Any] = {
        "_zigzag": _zigzag,
        "_ZIGZAG_BYTES": _ZIGZAG_BYTES,
        "_pack_float": struct.Struct("<f").pack,
        "_pack_double": struct.Struct("<d").pack,
        "_NotCanonical": _NotCanonical,
        "_LONG_LIMIT": _LONG_LIMIT,
        "_INT_LIMIT": _INT_LIMIT,
        **compiler.consts,
    }
    exec(compile(source, f"<esflow avro writer: {label}>", "exec"), namespace)
    writer: Callable[[Any], bytes] = namespace["writer"]
    return writer


def _located(exc: CodecError, topic: str | None, partition: int | None, offset: int | None) -> CodecError:
    """The same error naming where the message came from (unless it already does)."""
    if exc.topic is not None or (topic is None and partition is None and offset is None):
        return exc
    return type(exc)(exc.detail, hint=exc.hint, topic=topic, partition=partition, offset=offset)
