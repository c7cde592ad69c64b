"""The reference decoding path: fastavro, Avro schema resolution and the code upcasters.

Decoding reads whatever version wrote the bytes and brings it to the newest one in a loop:

1. the framing names the writer schema (single-object fingerprint, or a registry id);
2. Avro resolution reads the body with the newest reader schema that Avro alone can reach from the
   writer (up to, not across, the next code-upcaster step);
3. the upcaster for that step turns the dict into the next version; if Avro-only versions follow, the
   dict is re-encoded with its version and read with the furthest reachable reader again; repeat.

Step 3's re-encode makes a v1 record pay twice, but keeps Avro's default-filling rules in one place
(fastavro) instead of re-implementing them for dicts. The newest versions, the hot path, skip all of it
(and usually take the compiled reader, :mod:`esflow.messaging.compiled`, which this path is the reference
for).
"""

from __future__ import annotations

import io
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fastavro import schemaless_reader, schemaless_writer

from esflow.errors import CodecError, DecodeError, EncodeError, SchemaValidationError, UpcastError
from esflow.messaging.schemas import SchemaCatalog, SchemaVersion
from esflow.messaging.upcasting import Record, Upcaster, UpcasterRegistry

_WRITE_ERRORS = (ValueError, TypeError, KeyError, AttributeError, OverflowError, struct.error)
"""What fastavro raises for a record its schema cannot hold."""


def write_body(schema: SchemaVersion, record: Mapping[str, Any], *, topic: str | None = None) -> bytes:
    """The Avro body of ``record`` in ``schema``, written by fastavro (:class:`EncodeError` if it cannot)."""
    buf = io.BytesIO()
    try:
        schemaless_writer(buf, schema.parsed, record)
    except _WRITE_ERRORS as exc:
        raise EncodeError(f"{schema.label} cannot hold this record: {exc}", topic=topic) from exc
    return buf.getvalue()


def read_body(data: bytes, start: int, writer: SchemaVersion, reader: SchemaVersion | None) -> Record:
    """The record in ``data[start:]`` written with ``writer``, resolved to ``reader`` (None: the same).

    Every failure on untrusted bytes is a typed :class:`CodecError`.
    """
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


@dataclass(frozen=True)
class DecodedRecord:
    """A record brought to the newest version of its type, before model validation."""

    schema: SchemaVersion
    """The newest schema: the record's shape now."""
    writer_version: int
    """The version that wrote the bytes."""
    record: Record


@dataclass(frozen=True)
class Plan:
    """How to bring one writer version to the newest: read with ``reader``, then the upcast steps."""

    reader: SchemaVersion
    same_schema: bool
    steps: tuple[tuple[Upcaster, SchemaVersion, SchemaVersion], ...]
    """(upcaster, its output version, the furthest Avro-reachable version after it)."""

    @property
    def direct(self) -> bool:
        """Whether the writer is the newest version: read with its own schema, nothing to upcast."""
        return self.same_schema and not self.steps


class Resolver:
    """Brings bytes of any known version to the newest version's record dict (plans cached per writer)."""

    def __init__(self, catalog: SchemaCatalog, upcasters: UpcasterRegistry) -> None:
        self._catalog = catalog
        self._upcasters = upcasters
        self._plans: dict[bytes, Plan] = {}

    def resolve(self, data: bytes, writer: SchemaVersion, start: int) -> DecodedRecord:
        """The body at ``data[start:]``, written with ``writer``, as the newest version's record."""
        plan = self.plan(writer)
        record = read_body(data, start, writer, None if plan.same_schema else plan.reader)
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
                    body = write_body(upcast_to, record)
                except EncodeError as exc:
                    raise UpcastError(
                        f"the upcaster to {upcast_to.label} produced a record its schema rejects: "
                        f"{exc.__cause__}"
                    ) from exc.__cause__
                record = read_body(body, 0, upcast_to, reachable)
            version = reachable
        return DecodedRecord(schema=version, writer_version=writer.version, record=record)

    def plan(self, writer: SchemaVersion) -> Plan:
        """The reader schema and upcast steps for bytes of ``writer``."""
        plan = self._plans.get(writer.fingerprint)
        if plan is not None:
            return plan
        versions = self._catalog.versions(writer.name)

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
        plan = Plan(reader=reader, same_schema=reader is writer, steps=tuple(steps))
        self._plans[writer.fingerprint] = plan
        return plan
