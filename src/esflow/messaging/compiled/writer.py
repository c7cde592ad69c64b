"""The generated writer: a schema turned into a function that appends the bytes of one record.

Speed only; fastavro's ``schemaless_writer`` is the reference (see :mod:`esflow.messaging.compiled`).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from typing import Any
from uuid import UUID

from fastavro.schema import extract_logical_type
from fastavro.write import LOGICAL_WRITERS

from esflow.messaging.compiled._scaffold import SchemaCompiler, Unsupported, generate
from esflow.messaging.expansion import PRIMITIVES

_UNION_PLAIN_BRANCHES = {"string": "str", "bytes": "bytes", "long": "int", "int": "int", "boolean": "bool"}
_UUID_BRANCH = {"type": "string", "logicalType": "uuid"}
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


class _WriterCompiler(SchemaCompiler):
    """Turns a parsed schema into the source of one Python function writing a record's binary encoding.

    The function writes the same bytes as fastavro's ``schemaless_writer`` for the values it accepts,
    and accepts only the plain case: a dict holding every field, values of exactly the Python type the
    Avro type is written from (``str``, ``int`` within 62 bits, ``bool``, ``float``, ``bytes``, ``list``
    or ``tuple``), enum symbols and logical types through fastavro's own ``LOGICAL_WRITERS``, unions of
    null and one plain primitive or of null and a uuid given as a ``UUID``. Anything else raises, and the
    codec asks fastavro, which writes it or names the problem exactly as before (defaults for missing
    fields, coercions, union matching).
    """

    def check(self, indent: int, source: str, py_type: str) -> None:
        self.emit(indent, f"if type({source}) is not {py_type}:")
        self.emit(indent + 1, "raise _NotCanonical")

    def long(self, indent: int, source: str, limit: str = "_LONG_LIMIT") -> None:
        self.check(indent, source, "int")
        self.emit(indent, f"if not -{limit} <= {source} < {limit}:")
        self.emit(indent + 1, "raise _NotCanonical")
        self.emit(indent, f"out += _ZIGZAG_BYTES[{source} << 1] if 0 <= {source} < 64 else _zigzag({source})")

    def typed(self, schema: Mapping[str, Any], source: str, indent: int) -> None:
        kind = schema["type"]
        logical_on_complex = "logicalType" in schema and kind in ("record", "enum", "array", "fixed")
        if not isinstance(kind, str) or kind in ("map", "error") or logical_on_complex:
            raise Unsupported(kind)
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
        if kind in PRIMITIVES:
            self.primitive(kind, source, indent)
        elif kind == "record":
            with self.defining(schema):
                self.check(indent, source, "dict")
                for field in schema["fields"]:
                    local = self.var("f")
                    self.emit(indent, f"{local} = {source}[{field['name']!r}]")
                    self.value(field["type"], local, indent)
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
        if len(branches) == 2 and len(other) == 1 and other[0] == _UUID_BRANCH:
            self.optional_uuid(branches.index("null"), branches.index(other[0]), source, indent)
            return
        if (
            len(branches) != 2
            or len(other) != 1
            or not isinstance(other[0], str)
            or other[0] not in _UNION_PLAIN_BRANCHES
        ):
            raise Unsupported("union")  # fastavro's branch matching is left to fastavro
        null_index, other_index = branches.index("null"), branches.index(other[0])
        self.emit(indent, f"if {source} is None:")
        self.emit(indent + 1, f"out += {_ZIGZAG_BYTES[null_index << 1]!r}")
        self.emit(indent, "else:")
        self.emit(indent + 1, f"out += {_ZIGZAG_BYTES[other_index << 1]!r}")
        if other[0] == "int":  # fastavro only picks an int branch for a 32-bit value
            self.long(indent + 1, source, "_INT_LIMIT")
        else:
            self.value(other[0], source, indent + 1)

    def optional_uuid(self, null_index: int, uuid_index: int, source: str, indent: int) -> None:
        # Only a UUID object is plain: fastavro matches a str against the uuid branch by its own rules.
        text = self.var("b")
        self.emit(indent, f"if {source} is None:")
        self.emit(indent + 1, f"out += {_ZIGZAG_BYTES[null_index << 1]!r}")
        self.emit(indent, f"elif type({source}) is _UUID:")
        self.emit(indent + 1, f"{text} = str({source}).encode()")
        self.emit(indent + 1, f"out += {_ZIGZAG_BYTES[uuid_index << 1] + _ZIGZAG_BYTES[36 << 1]!r} + {text}")
        self.emit(indent, "else:")
        self.emit(indent + 1, "raise _NotCanonical")


_RUNTIME: dict[str, Any] = {
    "_zigzag": _zigzag,
    "_ZIGZAG_BYTES": _ZIGZAG_BYTES,
    "_pack_float": struct.Struct("<f").pack,
    "_pack_double": struct.Struct("<d").pack,
    "_LONG_LIMIT": _LONG_LIMIT,
    "_INT_LIMIT": _INT_LIMIT,
    "_UUID": UUID,
}


def compile_writer(schema: Any, label: str = "record") -> Callable[[Any], bytes] | None:
    """A fast writer of ``schema``'s (parsed) binary encoding, or None when fastavro must do it.

    ``writer(record)`` returns the bytes fastavro's ``schemaless_writer`` writes for ``record``, or raises
    (any exception) when the record is not the plain case; then the caller must ask fastavro.
    """
    return generate(
        _WriterCompiler(),
        schema,
        function="writer",
        head=["def writer(value):", "    out = bytearray()"],
        tail=["    return bytes(out)"],
        runtime=_RUNTIME,
        label=label,
    )
