"""Confluent Schema Registry wire format: ``00``, a 4-byte big-endian schema id, the Avro body.

Used instead of single-object encoding when ``ESFLOW_SCHEMA_REGISTRY_URL`` is set, for shops whose
consumers (Kafka Connect, ksqlDB, BI tools) expect it. One topic carries many record types, so subjects
follow ``topic_record_subject_name_strategy``: ``<topic>-<record full name>``.

The registry only maps ids to schema text; which esflow type and version an id is comes from the
schema's parsing-canonical fingerprint, so the decoder reuses the same catalogue, resolution and
upcasters as single-object framing. Auto-registration is off unless configured: in production,
`esflow schemas register` pushes schemas from CI, and producers only look ids up.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable
from typing import Any

from confluent_kafka.schema_registry import (
    ConfigCompatibilityLevel,
    Schema,
    SchemaRegistryClient,
    ServerConfig,
    topic_record_subject_name_strategy,
)
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext

from esflow.errors import DecodeError, EncodeError, FramingError, RegistryError, UnknownSchemaError
from esflow.messaging.schemas import SchemaCatalog, SchemaVersion, parsing_fingerprint

CONFLUENT_MAGIC = 0
CONFLUENT_HEADER_LEN = 5
CONTENT_TYPE_CONFLUENT = "application/vnd.confluent.avro"
_NOT_FOUND = 404


def subject_for(topic: str, schema: SchemaVersion) -> str:
    """The registry subject of ``schema`` on ``topic`` (``<topic>-<record full name>``)."""
    subject = topic_record_subject_name_strategy(
        SerializationContext(topic, MessageField.VALUE), schema.fullname
    )
    assert isinstance(subject, str)
    return subject


def topic_for(schema: SchemaVersion, prefix: str = "") -> str:
    """The topic a schema's messages go to (see the topic catalogue): ``events.order``, ``commands.order``."""
    return f"{prefix}{schema.kind}s.{schema.aggregate_type}"


class ConfluentFraming:
    """Frames bodies with registry ids; resolves ids back to catalogue schemas by fingerprint."""

    content_type = CONTENT_TYPE_CONFLUENT

    def __init__(self, client: Any, catalog: SchemaCatalog, *, auto_register: bool = False) -> None:
        self._client = client
        self._catalog = catalog
        self._auto_register = auto_register
        self._ids: dict[tuple[str, bytes], int] = {}
        self._by_id: dict[int, SchemaVersion] = {}

    @classmethod
    def from_url(
        cls, url: str, catalog: SchemaCatalog, *, auto_register: bool = False, **conf: Any
    ) -> ConfluentFraming:
        """Framing over a registry at ``url`` (``mock://name`` gives confluent's in-process registry)."""
        return cls(
            SchemaRegistryClient.new_client({"url": url, **conf}), catalog, auto_register=auto_register
        )

    @property
    def client(self) -> Any:
        """The schema registry client."""
        return self._client

    def frame(self, schema: SchemaVersion, body: bytes, *, topic: str | None = None) -> bytes:
        """Prefix ``body`` with ``00`` and the registry id of ``schema`` under ``topic``'s subject."""
        if topic is None:
            raise EncodeError("registry framing needs the topic (subjects are per topic and record)")
        key = (topic, schema.fingerprint)
        schema_id = self._ids.get(key)
        if schema_id is None:
            schema_id = self._lookup_or_register(topic, schema)
            self._ids[key] = schema_id
            self._by_id.setdefault(schema_id, schema)
        return struct.pack(">bI", CONFLUENT_MAGIC, schema_id) + body

    def _lookup_or_register(self, topic: str, schema: SchemaVersion) -> int:
        subject = subject_for(topic, schema)
        wire = Schema(schema.schema_json, "AVRO")
        try:
            if self._auto_register:
                return int(self._client.register_schema(subject, wire))
            return int(self._client.lookup_schema(subject, wire).schema_id)
        except SchemaRegistryError as exc:
            if exc.http_status_code == _NOT_FOUND:
                raise EncodeError(
                    f"{schema.label} is not registered under subject {subject}",
                    hint="run `esflow schemas register` (auto-registration is for development)",
                    topic=topic,
                ) from exc
            raise RegistryError(f"schema registry refused {schema.label} for {subject}: {exc}") from exc
        except Exception as exc:  # transport errors of the HTTP client
            raise RegistryError(f"schema registry unreachable for {subject}: {exc}") from exc

    def unframe(self, data: bytes) -> tuple[SchemaVersion, int]:
        """Find the writer schema by registry id, then by fingerprint in the catalogue."""
        if len(data) < CONFLUENT_HEADER_LEN and (not data or data[0] == CONFLUENT_MAGIC):
            raise DecodeError(f"truncated registry header: {len(data)} bytes, need 5")
        if data[0] != CONFLUENT_MAGIC:
            raise FramingError(f"not the registry wire format: magic byte {data[0]:#04x}, expected 0x00")
        (schema_id,) = struct.unpack(">I", data[1:CONFLUENT_HEADER_LEN])
        schema = self._by_id.get(schema_id)
        if schema is None:
            schema = self._resolve(schema_id)
            self._by_id[schema_id] = schema
        return schema, CONFLUENT_HEADER_LEN

    def _resolve(self, schema_id: int) -> SchemaVersion:
        try:
            registered = self._client.get_schema(schema_id)
        except SchemaRegistryError as exc:
            if exc.http_status_code == _NOT_FOUND:
                raise UnknownSchemaError(f"schema id {schema_id} is unknown to the registry") from exc
            raise RegistryError(f"schema registry failed on id {schema_id}: {exc}") from exc
        except Exception as exc:  # transport errors of the HTTP client
            raise RegistryError(f"schema registry unreachable resolving id {schema_id}: {exc}") from exc
        try:
            _, fp = parsing_fingerprint(registered.schema_str)
        except Exception as exc:  # a registry can hold schemas fastavro cannot parse
            raise UnknownSchemaError(
                f"schema id {schema_id} is not a schema esflow can parse: {exc}"
            ) from exc
        schema = self._catalog.by_fingerprint(fp)
        if schema is None:
            raise UnknownSchemaError(
                f"schema id {schema_id} (fingerprint {fp.hex()}) is not in esflow's catalogue",
                hint="written by a newer esflow or another producer?",
            )
        return schema

    def register(
        self,
        versions: Iterable[SchemaVersion],
        *,
        topic: Callable[[SchemaVersion], str] = topic_for,
        compatibility: Callable[[SchemaVersion], str] | None = None,
    ) -> list[tuple[str, int, SchemaVersion]]:
        """Register ``versions``, oldest first per type, under their topics' subjects.

        ``compatibility`` gives each subject's registry compatibility level, set before its first
        version is registered. Returns (subject, registry id, schema) per version.
        """
        out: list[tuple[str, int, SchemaVersion]] = []
        configured: set[str] = set()
        for schema in sorted(versions, key=lambda s: (s.name, s.version)):
            subject = subject_for(topic(schema), schema)
            try:
                if compatibility is not None and subject not in configured:
                    level = ConfigCompatibilityLevel(compatibility(schema))
                    self._client.set_config(subject, ServerConfig(compatibility=level))
                    configured.add(subject)
                schema_id = int(self._client.register_schema(subject, Schema(schema.schema_json, "AVRO")))
            except SchemaRegistryError as exc:
                raise RegistryError(f"schema registry refused {schema.label} for {subject}: {exc}") from exc
            except Exception as exc:  # transport errors of the HTTP client
                raise RegistryError(f"schema registry unreachable for {subject}: {exc}") from exc
            self._ids[(topic(schema), schema.fingerprint)] = schema_id
            self._by_id.setdefault(schema_id, schema)
            out.append((subject, schema_id, schema))
        return out
