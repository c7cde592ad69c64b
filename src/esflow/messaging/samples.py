"""Deterministic example records for any schema version.

Used by the golden-bytes tests, the Java interop test, the benchmark and `esflow schemas check` (which
runs every upcaster on an example and checks the result fits the next schema). Values derive from the
field path, so a record is the same on every run and every machine, and two fields never collide.
"""

from __future__ import annotations

import uuid
import zlib
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from esflow.domain.messages import AGGREGATE_TYPES
from esflow.messaging.expansion import expand
from esflow.messaging.schemas import SchemaVersion

_NAMESPACE = uuid.UUID("6f1c5d0e-4a7b-4c59-9d0e-2b8f9a1e7c33")
_EPOCH = datetime(2024, 5, 17, 9, 30, 0, tzinfo=UTC)
_AGGREGATES = set(AGGREGATE_TYPES)


def _seed(path: str) -> int:
    return zlib.crc32(path.encode())


def _value(t: dict[str, Any], path: str, aggregate_type: str) -> Any:
    kind = t["type"]
    logical = t.get("logicalType")
    seed = _seed(path)
    if kind == "union":
        # The last branch is the interesting one (``["null", X]`` gives X).
        return _value(t["branches"][-1], path, aggregate_type)
    if kind == "record":
        return {f["name"]: _value(f["type"], f"{path}.{f['name']}", aggregate_type) for f in t["fields"]}
    if kind == "array":
        return [_value(t["items"], f"{path}[{i}]", aggregate_type) for i in range(3)]
    if kind == "map":
        return {f"k{i}": _value(t["values"], f"{path}{{{i}}}", aggregate_type) for i in range(2)}
    if kind == "enum":
        return t["symbols"][seed % len(t["symbols"])]
    if logical == "uuid":
        return uuid.uuid5(_NAMESPACE, path)
    if logical == "timestamp-micros":
        return _EPOCH + timedelta(microseconds=seed % 10**12)
    if logical == "decimal":
        return Decimal(seed % 10**7).scaleb(-int(t.get("scale", 0)))
    if kind == "string":
        leaf = path.rsplit(".", 1)[-1]
        if leaf == "aggregate_type":
            return aggregate_type
        if leaf == "currency":
            return "EUR"
        if leaf == "country":
            return "DE"
        return f"{leaf}-{seed % 1000}"
    if kind in ("int", "long"):
        return 1 + seed % 1000
    if kind == "boolean":
        return seed % 2 == 0
    if kind in ("float", "double"):
        return (seed % 1000) / 8
    if kind == "bytes":
        return seed.to_bytes(4, "big")
    if kind == "fixed":
        return (seed.to_bytes(4, "big") * t["size"])[: t["size"]]
    return None


def sample_record(schema: SchemaVersion) -> dict[str, Any]:
    """A valid, deterministic record of ``schema`` (python values for the logical types)."""
    aggregate = schema.aggregate_type if schema.aggregate_type in _AGGREGATES else "order"
    record = _value(expand(dict(schema.definition)), schema.name, aggregate)
    assert isinstance(record, dict)
    return record
