"""The codec: envelopes <-> framed Avro bytes, with schema resolution and upcasting on the way in.

Encoding always writes the newest schema version of a type. Decoding reads whatever version wrote the
bytes and brings it to the newest one (:mod:`esflow.messaging.resolution`), then validates it against the
message models (:mod:`esflow.messaging.validation`). The framing (:mod:`esflow.messaging.framing`, or the
registry's) names the writer schema in front of the body.

The domain never sees Avro: envelopes go in as pydantic models dumped in python mode (fastavro needs
UUID, datetime and Decimal objects for the logical types) and come out validated against the models.

Speed comes through one door, :mod:`esflow.messaging.compiled`: the newest version of each type gets a
compiled reader and writer and one pydantic-core validator for the whole envelope. They handle the plain
case only; whatever they refuse goes the reference way (fastavro and the models), which produces the
result or the exact error it always did. ``Codec(..., compiled=False)`` never opens that door.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal, overload

from esflow.domain.catalog import MESSAGE_TYPES, MessageSpec
from esflow.domain.messages import Command, CommandEnvelope, Envelope, Event, EventEnvelope
from esflow.errors import CodecError, DecodeError, EncodeError
from esflow.messaging.compiled import FastDecoder, compile_reader, compile_writer, envelope_validator
from esflow.messaging.framing import (
    SINGLE_OBJECT_HEADER_LEN,
    SINGLE_OBJECT_MAGIC,
    Framing,
    SingleObjectFraming,
)
from esflow.messaging.resolution import DecodedRecord, Resolver, write_body
from esflow.messaging.schemas import SchemaCatalog, SchemaVersion
from esflow.messaging.upcasting import DEFAULT_UPCASTERS, UpcasterRegistry
from esflow.messaging.validation import Kind, check_kind, to_envelope
from esflow.settings import SchemaSettings

# Kafka header names. Headers duplicate what the bytes already say, for filtering without decoding;
# the decoder never trusts them.
HEADER_TYPE = "esflow-type"
HEADER_VERSION = "esflow-schema-version"
HEADER_KIND = "esflow-kind"
HEADER_ID = "esflow-message-id"
HEADER_CORRELATION = "esflow-correlation-id"
HEADER_CONTENT_TYPE = "content-type"


class Codec:
    """Encodes envelopes to framed Avro and decodes them back to the newest message models."""

    def __init__(
        self,
        catalog: SchemaCatalog,
        *,
        framing: Framing | None = None,
        upcasters: UpcasterRegistry = DEFAULT_UPCASTERS,
        messages: Mapping[str, MessageSpec] = MESSAGE_TYPES,
        compiled: bool = True,
    ) -> None:
        """A codec over ``catalog``.

        ``compiled=False`` takes the reference path (fastavro, model by model) for every message: the
        same results and errors, slower; for comparisons and tests.
        """
        self.catalog = catalog
        self.framing: Framing = framing or SingleObjectFraming(catalog)
        self._messages = messages
        self._compiled = compiled
        self._resolver = Resolver(catalog, upcasters)
        self._fast: dict[bytes, FastDecoder | None] = {}
        self._by_header: dict[bytes, FastDecoder] = {}
        """Fast decoders by single-object header (magic + fingerprint), when that is the framing."""
        self._writers: dict[bytes, Callable[[Any], bytes] | None] = {}

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
            body = write_body(schema, record, topic=topic)
        return self.framing.frame(schema, body, topic=topic)

    def _fast_write(self, schema: SchemaVersion, record: Mapping[str, Any]) -> bytes | None:
        """The body from ``schema``'s compiled writer, or None to let fastavro write it (or refuse it)."""
        try:
            writer = self._writers[schema.fingerprint]
        except KeyError:
            writer = compile_writer(schema.parsed, schema.label) if self._compiled else None
            self._writers[schema.fingerprint] = writer
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

    @overload
    def decode(
        self,
        data: bytes,
        *,
        kind: Literal["event"],
        topic: str | None = None,
        partition: int | None = None,
        offset: int | None = None,
    ) -> EventEnvelope: ...

    @overload
    def decode(
        self,
        data: bytes,
        *,
        kind: Literal["command"],
        topic: str | None = None,
        partition: int | None = None,
        offset: int | None = None,
    ) -> CommandEnvelope: ...

    @overload
    def decode(
        self,
        data: bytes,
        *,
        kind: None = None,
        topic: str | None = None,
        partition: int | None = None,
        offset: int | None = None,
    ) -> Envelope: ...

    def decode(
        self,
        data: bytes,
        *,
        kind: Kind | None = None,
        topic: str | None = None,
        partition: int | None = None,
        offset: int | None = None,
    ) -> Envelope:
        """The envelope in ``data``, as the newest models; any failure is a typed :class:`CodecError`.

        ``kind`` ("event" or "command") requires the message to be one (a :class:`DecodeError` if not);
        ``topic``, ``partition`` and ``offset`` are named in any error.
        """
        try:
            # Hot path: single-object bytes of a newest version seen before, found by their 10-byte header.
            fast = self._by_header.get(data[:SINGLE_OBJECT_HEADER_LEN]) if type(data) is bytes else None
            envelope = fast.envelope(data, SINGLE_OBJECT_HEADER_LEN) if fast is not None else None
            if envelope is None:
                envelope = self._decode_cold(data, first_sight=fast is None)
            if kind is not None:
                check_kind(envelope, kind)
            return envelope
        except CodecError as exc:
            located = _located(exc, topic, partition, offset)
            if located is exc:
                raise
            raise located from exc

    def _decode_cold(self, data: bytes, *, first_sight: bool) -> Envelope:
        """Past the hot path: unframe, the fast decoder unless it just refused, else the reference path."""
        data, writer, start = self._unframe(data)
        if first_sight:
            fast = self._fast_decoder(writer)
            if fast is not None:
                envelope = fast.envelope(data, start)
                if envelope is not None:
                    return envelope
        return to_envelope(self._resolver.resolve(data, writer, start), self._messages)

    def decode_message(self, message: Any, *, kind: Kind | None = None) -> Envelope:
        """Decode a confluent-kafka ``Message``, naming its topic/partition/offset in any error."""
        return self.decode(
            message.value() or b"",
            kind=kind,
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
            fast = self._by_header.get(data[:start]) or self._fast_decoder(writer)
            if fast is not None:
                record = fast.record(data, start)
                if record is not None:
                    return DecodedRecord(schema=writer, writer_version=writer.version, record=record)
            return self._resolver.resolve(data, writer, start)
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

    def _fast_decoder(self, writer: SchemaVersion) -> FastDecoder | None:
        """The compiled reader (and envelope validator) for bytes of ``writer``, built on first use.

        Only the newest version of a type has one (older versions need resolution or upcasting, and are
        rare); None means the reference path.
        """
        try:
            return self._fast[writer.fingerprint]
        except KeyError:
            pass
        fast: FastDecoder | None = None
        if self._compiled and self._resolver.plan(writer).direct:
            reader = compile_reader(writer.decode_parsed, writer.label)
            if reader is not None:
                spec = self._messages.get(writer.name)
                validate = None
                if spec is not None and spec.version == writer.version:
                    validate = envelope_validator(spec)
                fast = FastDecoder(reader, validate, "event" if spec and spec.kind == "event" else "command")
        self._fast[writer.fingerprint] = fast
        if fast is not None and type(self.framing) is SingleObjectFraming:
            self._by_header[SINGLE_OBJECT_MAGIC + writer.fingerprint] = fast
        return fast


def _located(exc: CodecError, topic: str | None, partition: int | None, offset: int | None) -> CodecError:
    """The same error naming where the message came from (unless it already does)."""
    if exc.topic is not None or (topic is None and partition is None and offset is None):
        return exc
    return type(exc)(exc.detail, hint=exc.hint, topic=topic, partition=partition, offset=offset)
