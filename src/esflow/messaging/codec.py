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
"""

from __future__ import annotations

import io
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from fastavro import schemaless_reader, schemaless_writer
from pydantic import ValidationError

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
        try:
            body = _write(schema, record)
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError, struct.error) as exc:
            raise EncodeError(f"{schema.label} cannot hold this record: {exc}", topic=topic) from exc
        return self.framing.frame(schema, body, topic=topic)

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
            decoded = self._decode_record(data, topic)
            return self._to_envelope(decoded)
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
            return self._decode_record(data, topic)
        except CodecError as exc:
            located = _located(exc, topic, partition, offset)
            if located is exc:
                raise
            raise located from exc

    def _decode_record(self, data: bytes, topic: str | None) -> DecodedRecord:
        if not isinstance(data, bytes | bytearray | memoryview):
            raise DecodeError(f"expected bytes, got {type(data).__name__}")
        data = bytes(data)
        writer, start = self.framing.unframe(data)
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


def _located(exc: CodecError, topic: str | None, partition: int | None, offset: int | None) -> CodecError:
    """The same error naming where the message came from (unless it already does)."""
    if exc.topic is not None or (topic is None and partition is None and offset is None):
        return exc
    return type(exc)(exc.detail, hint=exc.hint, topic=topic, partition=partition, offset=offset)
