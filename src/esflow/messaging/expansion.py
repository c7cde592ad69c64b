"""The expanded form of a schema: every named-type reference replaced by its definition, every type a dict.

The compatibility check, the model drift check and the sample records all walk this form, so none of
them resolves names itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from esflow.errors import SchemaError

PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})


def expand(schema: Any) -> Any:
    """A schema with every named-type reference replaced by its definition and every type a dict.

    Both the compatibility and the drift checks walk this form, so they never resolve names themselves.
    """
    return _expand(schema, {}, None)


def _fullname(name: str, namespace: str | None) -> str:
    return name if "." in name or not namespace else f"{namespace}.{name}"


def _expand(schema: Any, names: dict[str, Any], namespace: str | None) -> Any:
    if isinstance(schema, str):
        if schema in PRIMITIVES:
            return {"type": schema}
        full = _fullname(schema, namespace)
        if full in names:
            return names[full]
        if schema in names:
            return names[schema]
        raise SchemaError(f"unknown named type {schema!r}")
    if isinstance(schema, list):
        return {"type": "union", "branches": [_expand(b, names, namespace) for b in schema]}
    kind = schema["type"]
    if isinstance(kind, dict | list) or (isinstance(kind, str) and kind not in PRIMITIVES and kind not in (
        "record", "enum", "fixed", "array", "map", "error"
    )):  # fmt: skip
        return _expand(kind, names, namespace)
    if kind in PRIMITIVES:
        out = {"type": kind}
        for key in ("logicalType", "precision", "scale", "size"):
            if key in schema:
                out[key] = schema[key]
        return out
    if kind == "array":
        return {"type": "array", "items": _expand(schema["items"], names, namespace)}
    if kind == "map":
        return {"type": "map", "values": _expand(schema["values"], names, namespace)}
    full = _fullname(schema["name"], schema.get("namespace", namespace))
    ns = full.rsplit(".", 1)[0] if "." in full else None
    aliases = [_fullname(a, ns) for a in schema.get("aliases", [])]
    if kind == "enum":
        out = {"type": "enum", "name": full, "aliases": aliases, "symbols": list(schema["symbols"])}
        if "default" in schema:
            out["default"] = schema["default"]
        names[full] = out
        return out
    if kind == "fixed":
        out = {"type": "fixed", "name": full, "aliases": aliases, "size": schema["size"]}
        for key in ("logicalType", "precision", "scale"):
            if key in schema:
                out[key] = schema[key]
        names[full] = out
        return out
    record: dict[str, Any] = {"type": "record", "name": full, "aliases": aliases, "fields": []}
    names[full] = record  # registered before the fields, so recursive types terminate
    for f in schema["fields"]:
        entry = {
            "name": f["name"],
            "aliases": list(f.get("aliases", [])),
            "type": _expand(f["type"], names, ns),
        }
        if "default" in f:
            entry["default"] = f["default"]
        record["fields"].append(entry)
    return record


def describe(t: Mapping[str, Any]) -> str:
    """A short description of an expanded type for problem lines: ``record Money``, ``[null, string]``."""
    kind = t["type"]
    if kind in ("record", "enum", "fixed"):
        return f"{kind} {t['name'].rsplit('.', 1)[-1]}"
    if kind == "union":
        return "[" + ", ".join(describe(b) for b in t["branches"]) + "]"
    if kind == "array":
        return f"array<{describe(t['items'])}>"
    if kind == "map":
        return f"map<{describe(t['values'])}>"
    if "logicalType" in t:
        extra = f"({t.get('precision')},{t.get('scale', 0)})" if t["logicalType"] == "decimal" else ""
        return f"{kind}/{t['logicalType']}{extra}"
    return str(kind)
