"""Model drift: how the hand-written pydantic models differ from the newest schema of their type.

The models in :mod:`esflow.domain` exist for the newest version only; :func:`model_drift` maps a model
(envelope included) to the Avro record it stands for and compares it structurally with the schema's
expanded form: field names and order, types including logical types, enum symbols and defaults.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from enum import Enum
from types import NoneType, UnionType
from typing import Annotated, Any, Union, get_args, get_origin
from uuid import UUID

from pydantic import AwareDatetime, BaseModel
from pydantic.fields import FieldInfo

from esflow.domain.catalog import MessageSpec
from esflow.domain.messages import CommandMetadata, EventMetadata
from esflow.errors import SchemaError
from esflow.messaging.expansion import PRIMITIVES, describe, expand
from esflow.messaging.schemas import SchemaVersion


def _constraints(metadata: Iterable[Any]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for m in metadata:
        if isinstance(m, FieldInfo):
            found.update(_constraints(m.metadata))
            continue
        for attr in ("ge", "le", "gt", "lt", "max_digits", "decimal_places"):
            value = getattr(m, attr, None)
            if value is not None:
                found[attr] = value
    return found


def _annotation_schema(annotation: Any, metadata: Sequence[Any]) -> dict[str, Any]:
    """The Avro type (expanded form) the pydantic annotation stands for."""
    origin = get_origin(annotation)
    if origin is Annotated:
        base, *extra = get_args(annotation)
        return _annotation_schema(base, [*metadata, *extra])
    if origin in (Union, UnionType):
        args = get_args(annotation)
        branches = [_annotation_schema(a, metadata if a is not NoneType else []) for a in args]
        # Avro takes a union's default from its first branch, so optional fields put null first.
        branches.sort(key=lambda b: b["type"] != "null")
        return {"type": "union", "branches": branches}
    if origin in (list, tuple):
        items = [a for a in get_args(annotation) if a is not Ellipsis]
        return {"type": "array", "items": _annotation_schema(items[0], [])}
    if annotation is NoneType:
        return {"type": "null"}
    if annotation is UUID:
        return {"type": "string", "logicalType": "uuid"}
    if annotation in (datetime, AwareDatetime):
        return {"type": "long", "logicalType": "timestamp-micros"}
    if annotation is Decimal:
        c = _constraints(metadata)
        return {
            "type": "bytes",
            "logicalType": "decimal",
            "precision": c.get("max_digits"),
            "scale": c.get("decimal_places", 0),
        }
    if annotation is bool:
        return {"type": "boolean"}
    if annotation is int:
        c = _constraints(metadata)
        fits32 = c.get("ge", -(2**63)) >= -(2**31) and c.get("le", 2**63) <= 2**31 - 1
        return {"type": "int" if fits32 else "long"}
    if annotation is float:
        return {"type": "double"}
    if annotation is str:
        return {"type": "string"}
    if annotation is bytes:
        return {"type": "bytes"}
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return {"type": "enum", "name": annotation.__name__, "symbols": [m.value for m in annotation]}
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return _model_schema(annotation, None)
    raise SchemaError(f"no Avro mapping for the annotation {annotation!r}")


def _model_schema(model: type[BaseModel], envelope: type[BaseModel] | None) -> dict[str, Any]:
    fields: list[dict[str, Any]] = []
    if envelope is not None:
        fields.append({"name": "metadata", "type": _model_schema(envelope, None)})
    for name, info in model.model_fields.items():
        entry: dict[str, Any] = {"name": name, "type": _annotation_schema(info.annotation, info.metadata)}
        if not info.is_required():
            default = info.get_default(call_default_factory=True)
            entry["default"] = default.value if isinstance(default, Enum) else default
        fields.append(entry)
    return {"type": "record", "name": model.__name__, "fields": fields}


def model_schema(spec: MessageSpec) -> dict[str, Any]:
    """The Avro record (expanded form, no docs) that a message model stands for, envelope included."""
    envelope = EventMetadata if spec.kind == "event" else CommandMetadata
    return _model_schema(spec.model, envelope)


def _drift(m: Mapping[str, Any], s: Mapping[str, Any], path: str, out: list[str]) -> None:
    where = path or "<root>"
    mk, sk = m["type"], s["type"]
    if mk != sk:
        out.append(f"{where}: model says {describe(m)}, schema says {describe(s)}")
        return
    if mk == "union":
        if [describe(b) for b in m["branches"]] != [describe(b) for b in s["branches"]]:
            out.append(f"{where}: model says {describe(m)}, schema says {describe(s)}")
            return
        for i, (mb, sb) in enumerate(zip(m["branches"], s["branches"], strict=True)):
            _drift(mb, sb, f"{path}<{i}>", out)
        return
    if mk == "array":
        _drift(m["items"], s["items"], path + "[]", out)
        return
    if mk in PRIMITIVES:
        if describe(m) != describe(s):
            out.append(f"{where}: model says {describe(m)}, schema says {describe(s)}")
        return
    if m["name"].rsplit(".", 1)[-1] != s["name"].rsplit(".", 1)[-1]:
        out.append(f"{where}: model says {describe(m)}, schema says {describe(s)}")
        return
    if mk == "enum":
        if list(m["symbols"]) != list(s["symbols"]):
            out.append(f"{where}: model symbols {list(m['symbols'])}, schema symbols {list(s['symbols'])}")
        return
    if mk != "record":
        out.append(f"{where}: {mk} has no model equivalent")
        return
    mnames = [f["name"] for f in m["fields"]]
    snames = [f["name"] for f in s["fields"]]
    if mnames != snames:
        only_m = [n for n in mnames if n not in snames]
        only_s = [n for n in snames if n not in mnames]
        if only_m or only_s:
            out.append(f"{where}: fields only in the model {only_m}, only in the schema {only_s}")
        else:
            out.append(f"{where}: field order differs: model {mnames}, schema {snames}")
    sfields = {f["name"]: f for f in s["fields"]}
    for mf in m["fields"]:
        sf = sfields.get(mf["name"])
        if sf is None:
            continue
        sub = f"{path}.{mf['name']}" if path else mf["name"]
        _drift(mf["type"], sf["type"], sub, out)
        if ("default" in mf) != ("default" in sf) or mf.get("default") != sf.get("default"):
            m_default = repr(mf["default"]) if "default" in mf else "none (required)"
            s_default = repr(sf["default"]) if "default" in sf else "none (required)"
            out.append(f"{sub}: model default {m_default}, schema default {s_default}")


def model_drift(spec: MessageSpec, schema: SchemaVersion) -> list[str]:
    """How the message model differs from its (newest) schema; empty when they agree."""
    out: list[str] = []
    if spec.version != schema.version:
        out.append(f"model is v{spec.version}, newest schema is v{schema.version}")
    if spec.kind != schema.kind or spec.aggregate_type != schema.aggregate_type:
        out.append(
            f"model is a {spec.aggregate_type} {spec.kind}, schema a {schema.aggregate_type} {schema.kind}"
        )
    _drift(model_schema(spec), expand(dict(schema.definition)), "", out)
    return out
