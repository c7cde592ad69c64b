"""Framing: how the writer schema is named in front of an Avro body.

Single-object encoding (here) is the default; Confluent registry framing is in
:mod:`esflow.messaging.registry`. Both answer the same :class:`Framing` protocol the codec uses.
"""

from __future__ import annotations

from typing import Protocol

from esflow.errors import DecodeError, FramingError, UnknownSchemaError
from esflow.messaging.schemas import SchemaCatalog, SchemaVersion

SINGLE_OBJECT_MAGIC = b"\xc3\x01"
SINGLE_OBJECT_HEADER_LEN = 10
CONTENT_TYPE_SINGLE_OBJECT = "application/vnd.apache.avro.single-object"


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
