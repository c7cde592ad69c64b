"""The generated reader: a schema turned into a function that indexes the bytes of one value.

Speed only; fastavro's ``schemaless_reader`` is the reference (see :mod:`esflow.messaging.compiled`).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from decimal import Context, Decimal
from typing import Any

from fastavro.read import LOGICAL_READERS
from fastavro.schema import extract_logical_type

from esflow.messaging.compiled._scaffold import NotCanonical, SchemaCompiler, Unsupported, generate
from esflow.messaging.expansion import PRIMITIVES

_STRUCT_FLOAT = struct.Struct("<f").unpack_from
_STRUCT_DOUBLE = struct.Struct("<d").unpack_from
_FASTAVRO_TIMESTAMP_MICROS = LOGICAL_READERS.get("long-timestamp-micros")
_FASTAVRO_DECIMAL = LOGICAL_READERS.get("bytes-decimal")
_MAX_DECIMAL_PRECISION = 1000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


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
            raise NotCanonical


def _read_count(data: bytes, pos: int) -> tuple[int, int]:
    """A non-negative varint (a length, an index, an array block count)."""
    n, pos = _read_long(data, pos)
    if n < 0:
        raise NotCanonical
    return n, pos


def _reads_nothing(schema: Any, named: Mapping[str, Any]) -> bool:
    """Whether a value of ``schema`` can take zero bytes (only null does; a record of nulls too)."""
    if schema == "null" or (isinstance(schema, dict) and schema.get("type") == "null"):
        return True
    if isinstance(schema, dict) and schema.get("type") in ("record", "error"):
        return all(_reads_nothing(f["type"], named) for f in schema["fields"])
    if isinstance(schema, str) and schema in named:
        return _reads_nothing(named[schema], named)
    return False


class _ReaderCompiler(SchemaCompiler):
    """Turns a parsed writer schema into the source of one straight-line Python function.

    The function reads exactly what fastavro's ``schemaless_reader(fo, schema, None)`` reads and returns an
    equal dict (logical types through fastavro's own ``LOGICAL_READERS``), but indexes the bytes instead of
    calling ``fo.read(1)`` per byte and interpreting the schema dict per value. It accepts the canonical
    encoding only: non-negative lengths, counts and branch/symbol indexes in range, varints up to 9 bytes,
    and exactly all the bytes. On anything else it raises, and the codec re-reads with fastavro, so errors
    (and the rare legal oddities, like negative array block counts) are fastavro's, unchanged.
    """

    def count(self, indent: int, target: str) -> None:
        self.emit(indent, f"{target} = data[pos]")
        self.emit(indent, f"if {target} & 0x81:")
        self.emit(indent + 1, f"{target}, pos = _read_count(data, pos)")
        self.emit(indent, "else:")
        self.emit(indent + 1, f"{target} >>= 1")
        self.emit(indent + 1, "pos += 1")

    def typed(self, schema: Mapping[str, Any], target: str, indent: int) -> None:
        kind = schema["type"]
        if isinstance(kind, dict | list) or (
            isinstance(kind, str)
            and kind not in PRIMITIVES
            and kind not in ("record", "error", "enum", "fixed", "array", "map")
        ):
            self.value(kind, target, indent)
        elif kind in PRIMITIVES:
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
            raise Unsupported(kind)
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
        fields: list[tuple[str, str]] = []
        with self.defining(schema):
            for field in schema["fields"]:
                local = self.var("f")
                self.value(field["type"], local, indent)
                fields.append((field["name"], local))
        self.emit(indent, f"{target} = {{{', '.join(f'{n!r}: {v}' for n, v in fields)}}}")

    def union(self, branches: list[Any], target: str, indent: int) -> None:
        index = self.var("i")
        self.count(indent, index)
        for i, branch in enumerate(branches):
            self.emit(indent, f"{'if' if i == 0 else 'elif'} {index} == {i}:")
            self.value(branch, target, indent + 1)
        self.emit(indent, "else:")
        self.emit(indent + 1, "raise _NotCanonical")

    def _blocks(self, indent: int, read_item: Callable[[int], None]) -> None:
        block = self.var("c")
        self.count(indent, block)
        self.emit(indent, f"while {block}:")
        loop = self.var("j")
        self.emit(indent + 1, f"for {loop} in range({block}):")
        read_item(indent + 2)
        self.count(indent + 1, block)

    def array(self, items: Any, target: str, indent: int) -> None:
        if _reads_nothing(items, self.named):
            raise Unsupported("array of null")
        item = self.var("a")
        self.emit(indent, f"{target} = []")

        def read_item(level: int) -> None:
            self.value(items, item, level)
            self.emit(level, f"{target}.append({item})")

        self._blocks(indent, read_item)

    def map(self, values: Any, target: str, indent: int) -> None:
        key, item = self.var("m"), self.var("a")
        self.emit(indent, f"{target} = {{}}")

        def read_item(level: int) -> None:
            self.primitive("string", key, level)
            self.value(values, item, level)
            self.emit(level, f"{target}[{key}] = {item}")

        self._blocks(indent, read_item)


_RUNTIME: dict[str, Any] = {
    "_read_long": _read_long,
    "_read_count": _read_count,
    "_unpack_float": _STRUCT_FLOAT,
    "_unpack_double": _STRUCT_DOUBLE,
    "_EPOCH": _EPOCH,
    "_timedelta": timedelta,
    "_Decimal": Decimal,
    "_from_bytes": int.from_bytes,
}


def compile_reader(schema: Any, label: str = "record") -> Callable[[bytes, int], Any] | None:
    """A fast reader of ``schema``'s (parsed) binary encoding, or None when fastavro must do it.

    ``reader(data, pos)`` returns the value encoded from ``pos`` to the end of ``data``, equal to what
    fastavro's ``schemaless_reader`` returns, or raises (any exception) when the bytes are not the
    canonical encoding of one value; then the caller must ask fastavro, which knows the exact error.
    """
    return generate(
        _ReaderCompiler(),
        schema,
        function="reader",
        head=["def reader(data, pos):"],
        tail=["    if pos != len(data):", "        raise _NotCanonical", "    return value"],
        runtime=_RUNTIME,
        label=label,
    )
