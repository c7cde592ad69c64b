"""The Avro contract on disk: loading the .avsc files, fingerprints, compatibility and drift checks.

Layout (checked by :func:`check`): ``schemas/{events,commands}/<aggregate>/<Name>.v<N>.avsc``. Each file
is one self-contained record (nested named types are defined inline), so any Avro tool in any language
can parse a file on its own. Versions of one record share the record's full name, as Avro schema
resolution requires; the version lives in the custom attribute ``esflow.version``, next to
``esflow.kind`` and ``esflow.aggregate``. Custom attributes and ``doc`` are not part of the parsing
canonical form, so they never change a fingerprint.

The .avsc files are the source of truth; the pydantic models in :mod:`esflow.domain` are written by
hand for the newest version and compared structurally with it (:func:`model_drift`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from enum import Enum
from pathlib import Path
from types import NoneType, UnionType
from typing import Annotated, Any, Union, get_args, get_origin
from uuid import UUID

from fastavro.schema import fingerprint, parse_schema, to_parsing_canonical_form
from pydantic import AwareDatetime, BaseModel
from pydantic.fields import FieldInfo

from esflow.domain.catalog import MESSAGE_TYPES, MessageSpec
from esflow.domain.messages import CommandMetadata, EventMetadata
from esflow.errors import SchemaError

PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})
COMPATIBILITY_MODES = (
    "NONE",
    "BACKWARD",
    "BACKWARD_TRANSITIVE",
    "FORWARD",
    "FORWARD_TRANSITIVE",
    "FULL",
    "FULL_TRANSITIVE",
)
_FILE_RE = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)\.v(?P<version>[1-9][0-9]*)\.avsc$")
_KIND_DIRS = {"events": "event", "commands": "command"}


@dataclass(frozen=True)
class SchemaVersion:
    """One version of one record schema, parsed and fingerprinted."""

    name: str
    fullname: str
    kind: str
    aggregate_type: str
    version: int
    definition: Mapping[str, Any] = field(repr=False)
    parsed: Any = field(repr=False, compare=False)
    canonical: str = field(repr=False)
    fingerprint: bytes
    path: Path | None = None
    decode_parsed: Any = field(default=None, repr=False, compare=False)
    """``parsed`` without the uuid logical type: the bytes are the same, and pydantic-core parses the
    strings into UUIDs about twice as fast as fastavro's ``uuid.UUID`` calls (see ops/bench/codec.py)."""

    @property
    def fingerprint_hex(self) -> str:
        """The CRC-64-AVRO fingerprint as 16 hex digits, in wire (little-endian) byte order."""
        return self.fingerprint.hex()

    @property
    def schema_json(self) -> str:
        """The full schema (docs, logical types, custom attributes) as compact JSON."""
        return json.dumps(self.definition, separators=(",", ":"))

    @property
    def label(self) -> str:
        """``Name vN``, for messages."""
        return f"{self.name} v{self.version}"


def parsing_fingerprint(definition: Mapping[str, Any] | str) -> tuple[str, bytes]:
    """The parsing canonical form and its 8-byte little-endian CRC-64-AVRO fingerprint.

    Raises whatever fastavro raises on an invalid schema; callers that take schemas from outside wrap it.
    """
    schema = json.loads(definition) if isinstance(definition, str) else definition
    canonical: str = to_parsing_canonical_form(parse_schema(dict(schema)))
    # fastavro returns the fingerprint's bytes in Java's (little-endian) order, as hex.
    return canonical, bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO"))


def schema_version_from_definition(definition: Mapping[str, Any], path: Path | None = None) -> SchemaVersion:
    """Build a :class:`SchemaVersion` from one record definition carrying the esflow attributes."""
    try:
        parsed = parse_schema(dict(definition))
        canonical, fp = parsing_fingerprint(definition)
    except Exception as exc:  # fastavro raises several unrelated types for a bad schema
        raise SchemaError(f"{path or definition.get('name')}: not a valid Avro schema: {exc}") from exc
    namespace = definition.get("namespace")
    name = str(definition.get("name", ""))
    return SchemaVersion(
        name=name.rsplit(".", 1)[-1],
        fullname=name if "." in name or not namespace else f"{namespace}.{name}",
        kind=str(definition.get("esflow.kind", "")),
        aggregate_type=str(definition.get("esflow.aggregate", "")),
        version=int(definition.get("esflow.version", 0)),
        definition=definition,
        parsed=parsed,
        canonical=canonical,
        fingerprint=fp,
        path=path,
        decode_parsed=parse_schema(_without_logical_type(dict(definition), "uuid")),
    )


def _without_logical_type(schema: Any, logical_type: str) -> Any:
    if isinstance(schema, list):
        return [_without_logical_type(s, logical_type) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _without_logical_type(v, logical_type) for k, v in schema.items()}
    if out.get("logicalType") == logical_type:
        del out["logicalType"]
    return out


class SchemaCatalog:
    """Every schema version, by type name and version and by fingerprint."""

    def __init__(self, versions: Iterable[SchemaVersion]) -> None:
        self._by_name: dict[str, dict[int, SchemaVersion]] = {}
        self._by_fingerprint: dict[bytes, SchemaVersion] = {}
        for sv in versions:
            self._by_name.setdefault(sv.name, {})[sv.version] = sv
            self._by_fingerprint[sv.fingerprint] = sv

    @classmethod
    def load(cls, directory: Path) -> SchemaCatalog:
        """Load every .avsc file under ``directory``; any structural problem raises :class:`SchemaError`."""
        versions, problems = load_files(directory)
        if problems:
            raise SchemaError(
                f"{len(problems)} problem(s) in {directory}: {problems[0]}",
                hint="run `esflow schemas check` for the full list",
            )
        return cls(versions)

    def names(self) -> list[str]:
        """Every type name with at least one schema, sorted."""
        return sorted(self._by_name)

    def versions(self, name: str) -> list[SchemaVersion]:
        """All versions of one type, oldest first (empty when unknown)."""
        return [v for _, v in sorted(self._by_name.get(name, {}).items())]

    def get(self, name: str, version: int) -> SchemaVersion | None:
        """One version of one type, or None."""
        return self._by_name.get(name, {}).get(version)

    def latest(self, name: str) -> SchemaVersion | None:
        """The newest version of one type, or None."""
        versions = self._by_name.get(name)
        return versions[max(versions)] if versions else None

    def by_fingerprint(self, fp: bytes) -> SchemaVersion | None:
        """The schema whose parsing-canonical-form fingerprint is ``fp`` (8 bytes, little-endian)."""
        return self._by_fingerprint.get(fp)

    def __iter__(self) -> Iterator[SchemaVersion]:
        for name in self.names():
            yield from self.versions(name)

    def __len__(self) -> int:
        return sum(len(v) for v in self._by_name.values())


# --------------------------------------------------------------------------------------------- loading


def _fields_missing_doc(schema: Any, where: str, seen: set[str]) -> Iterator[str]:
    """Paths of record fields, at any depth, without a non-empty ``doc``."""
    if isinstance(schema, list):
        for branch in schema:
            yield from _fields_missing_doc(branch, where, seen)
        return
    if not isinstance(schema, dict):
        return
    kind = schema.get("type")
    if kind == "record":
        name = str(schema.get("name"))
        if name in seen:
            return
        seen.add(name)
        for f in schema.get("fields", []):
            path = f"{where}.{f.get('name')}"
            if not str(f.get("doc", "")).strip():
                yield path
            yield from _fields_missing_doc(f.get("type"), path, seen)
    elif kind == "array":
        yield from _fields_missing_doc(schema.get("items"), where + "[]", seen)
    elif kind == "map":
        yield from _fields_missing_doc(schema.get("values"), where + "{}", seen)
    elif isinstance(kind, dict | list):
        yield from _fields_missing_doc(kind, where, seen)


def load_files(directory: Path) -> tuple[list[SchemaVersion], list[str]]:
    """Parse every .avsc under ``directory``; return the good versions and one line per problem."""
    problems: list[str] = []
    versions: list[SchemaVersion] = []
    if not directory.is_dir():
        return [], [f"{directory}: schema directory not found"]
    for path in sorted(directory.rglob("*.avsc")):
        rel = path.relative_to(directory)
        try:
            definition = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            problems.append(f"{rel}: cannot read JSON: {exc}")
            continue
        if not isinstance(definition, dict) or definition.get("type") != "record":
            problems.append(f"{rel}: the top level must be a record")
            continue
        try:
            sv = schema_version_from_definition(definition, rel)
        except SchemaError as exc:
            problems.append(exc.message)
            continue
        problems.extend(_layout_problems(rel, definition, sv))
        problems.extend(
            f"{rel}: field {p} has no doc" for p in _fields_missing_doc(definition, sv.name, set())
        )
        versions.append(sv)
    by_fp: dict[bytes, SchemaVersion] = {}
    for sv in versions:
        other = by_fp.setdefault(sv.fingerprint, sv)
        if other is not sv:
            problems.append(
                f"{sv.path}: same fingerprint as {other.path}; decoding could not tell them apart"
            )
    by_name: dict[str, list[SchemaVersion]] = {}
    for sv in versions:
        by_name.setdefault(sv.name, []).append(sv)
    for name, svs in sorted(by_name.items()):
        numbers = sorted(sv.version for sv in svs)
        if numbers != list(range(1, len(numbers) + 1)):
            problems.append(f"{name}: versions {numbers} are not 1..N without gaps or duplicates")
        if len({(sv.kind, sv.aggregate_type, sv.fullname) for sv in svs}) > 1:
            problems.append(f"{name}: versions disagree on kind, aggregate or namespace")
    return versions, problems


def _layout_problems(rel: Path, definition: Mapping[str, Any], sv: SchemaVersion) -> list[str]:
    """The file's place must agree with the record's name, namespace, kind, aggregate and version."""
    out: list[str] = []
    parts = rel.parts
    m = _FILE_RE.match(rel.name)
    if len(parts) != 3 or parts[0] not in _KIND_DIRS or not m:
        return [f"{rel}: expected events|commands/<aggregate>/<Name>.v<N>.avsc"]
    kind, aggregate = _KIND_DIRS[parts[0]], parts[1]
    if definition.get("name") != m["name"]:
        out.append(
            f"{rel}: record name {definition.get('name')!r} does not match the file name {m['name']!r}"
        )
    if sv.version != int(m["version"]):
        out.append(f"{rel}: esflow.version {sv.version!r} does not match the file's v{m['version']}")
    if sv.kind != kind:
        out.append(f"{rel}: esflow.kind {definition.get('esflow.kind')!r} but the file is under {parts[0]}/")
    if sv.aggregate_type != aggregate:
        out.append(f"{rel}: esflow.aggregate {sv.aggregate_type!r} but the file is under {aggregate}/")
    if definition.get("namespace") != f"esflow.{parts[0]}.{aggregate}":
        out.append(
            f"{rel}: namespace {definition.get('namespace')!r} should be 'esflow.{parts[0]}.{aggregate}'"
        )
    fields = definition.get("fields") or [{}]
    if fields[0].get("name") != "metadata":
        out.append(f"{rel}: the first field must be 'metadata' (the envelope)")
    return out


# ------------------------------------------------------------------------------ expansion (named refs)


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


def _describe(t: Mapping[str, Any]) -> str:
    kind = t["type"]
    if kind in ("record", "enum", "fixed"):
        return f"{kind} {t['name'].rsplit('.', 1)[-1]}"
    if kind == "union":
        return "[" + ", ".join(_describe(b) for b in t["branches"]) + "]"
    if kind == "array":
        return f"array<{_describe(t['items'])}>"
    if kind == "map":
        return f"map<{_describe(t['values'])}>"
    if "logicalType" in t:
        extra = f"({t.get('precision')},{t.get('scale', 0)})" if t["logicalType"] == "decimal" else ""
        return f"{kind}/{t['logicalType']}{extra}"
    return str(kind)


# ------------------------------------------------------------------------------------- compatibility

_PROMOTIONS = {
    "int": {"int", "long", "float", "double"},
    "long": {"long", "float", "double"},
    "float": {"float", "double"},
    "string": {"string", "bytes"},
    "bytes": {"bytes", "string"},
}


def _names_match(reader: Mapping[str, Any], writer: Mapping[str, Any]) -> bool:
    short = writer["name"].rsplit(".", 1)[-1]
    return writer["name"] == reader["name"] or short == reader["name"].rsplit(".", 1)[-1] or (
        writer["name"] in reader.get("aliases", [])
    )  # fmt: skip


def reader_problems(reader: Any, writer: Any) -> list[str]:
    """Why data written with ``writer`` cannot be read with ``reader`` (empty when it can).

    Follows the Avro specification's resolution rules, like Java's ``SchemaCompatibility``, and is
    stricter in one respect: a logical type (decimal precision/scale, uuid, timestamp unit) must not
    change, because Avro would read the bytes happily and hand back a different value.
    """
    out: list[str] = []
    _check(expand(reader), expand(writer), "", out, set())
    return out


def _check(
    r: Mapping[str, Any], w: Mapping[str, Any], path: str, out: list[str], seen: set[tuple[str, str]]
) -> None:
    where = path or "<root>"
    if w["type"] == "union":
        for branch in w["branches"]:
            _check(r, branch, path, out, seen)
        return
    if r["type"] == "union":
        for branch in r["branches"]:
            trial: list[str] = []
            _check(branch, w, path, trial, set(seen))
            if not trial:
                return
        out.append(f"{where}: writer type {_describe(w)} matches no branch of reader union {_describe(r)}")
        return
    rk, wk = r["type"], w["type"]
    if rk in PRIMITIVES or wk in PRIMITIVES:
        if wk not in PRIMITIVES or rk not in PRIMITIVES or rk not in _PROMOTIONS.get(wk, {wk}):
            out.append(f"{where}: writer type {_describe(w)} cannot be read as {_describe(r)}")
            return
        if (r.get("logicalType"), r.get("precision"), r.get("scale")) != (
            w.get("logicalType"),
            w.get("precision"),
            w.get("scale"),
        ):
            out.append(f"{where}: logical type changed from {_describe(w)} to {_describe(r)}")
        return
    if rk != wk:
        out.append(f"{where}: writer type {_describe(w)} cannot be read as {_describe(r)}")
        return
    if rk == "array":
        _check(r["items"], w["items"], path + "[]", out, seen)
        return
    if rk == "map":
        _check(r["values"], w["values"], path + "{}", out, seen)
        return
    if not _names_match(r, w):
        out.append(f"{where}: writer {_describe(w)} and reader {_describe(r)} have different names")
        return
    if rk == "fixed":
        if r["size"] != w["size"]:
            out.append(f"{where}: fixed size changed from {w['size']} to {r['size']}")
        return
    if rk == "enum":
        missing = [s for s in w["symbols"] if s not in r["symbols"]]
        if missing and "default" not in r:
            out.append(f"{where}: reader enum {_describe(r)} lacks symbols {missing} and has no default")
        return
    key = (r["name"], w["name"])
    if key in seen:  # a recursive record already being compared
        return
    seen.add(key)
    writer_fields = {f["name"]: f for f in w["fields"]}
    for rf in r["fields"]:
        wf = writer_fields.get(rf["name"])
        if wf is None:
            wf = next((writer_fields[a] for a in rf.get("aliases", []) if a in writer_fields), None)
        sub = f"{path}.{rf['name']}" if path else rf["name"]
        if wf is None:
            if "default" not in rf:
                out.append(f"{sub}: reader field is missing from the writer and has no default")
            continue
        _check(rf["type"], wf["type"], sub, out, seen)


def compatibility_pairs(
    versions: Sequence[int], mode: str, bridged: Iterable[int] = ()
) -> list[tuple[int, int]]:
    """The (reader, writer) version pairs ``mode`` requires to be readable.

    ``bridged`` holds the versions N whose step N -> N+1 is done by a code upcaster: Avro resolution is
    not asked to cross such a step, because the decoder never lets it (see :mod:`esflow.messaging.codec`).
    """
    if mode not in COMPATIBILITY_MODES:
        raise SchemaError(
            f"unknown compatibility mode {mode!r}", hint=f"use one of {', '.join(COMPATIBILITY_MODES)}"
        )
    steps = set(bridged)
    ordered = sorted(versions)
    pairs: list[tuple[int, int]] = []
    transitive = mode.endswith("_TRANSITIVE")
    for i, new in enumerate(ordered[1:], start=1):
        olds = ordered[:i] if transitive else [ordered[i - 1]]
        for old in olds:
            if any(old <= s < new for s in steps):
                continue
            if mode.startswith(("BACKWARD", "FULL")):
                pairs.append((new, old))
            if mode.startswith(("FORWARD", "FULL")):
                pairs.append((old, new))
    return pairs


# ---------------------------------------------------------------------------------------------- drift


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
        out.append(f"{where}: model says {_describe(m)}, schema says {_describe(s)}")
        return
    if mk == "union":
        if [_describe(b) for b in m["branches"]] != [_describe(b) for b in s["branches"]]:
            out.append(f"{where}: model says {_describe(m)}, schema says {_describe(s)}")
            return
        for i, (mb, sb) in enumerate(zip(m["branches"], s["branches"], strict=True)):
            _drift(mb, sb, f"{path}<{i}>", out)
        return
    if mk == "array":
        _drift(m["items"], s["items"], path + "[]", out)
        return
    if mk in PRIMITIVES:
        if _describe(m) != _describe(s):
            out.append(f"{where}: model says {_describe(m)}, schema says {_describe(s)}")
        return
    if m["name"].rsplit(".", 1)[-1] != s["name"].rsplit(".", 1)[-1]:
        out.append(f"{where}: model says {_describe(m)}, schema says {_describe(s)}")
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


# ---------------------------------------------------------------------------------------------- check


def check(
    directory: Path,
    *,
    event_mode: str = "BACKWARD_TRANSITIVE",
    command_mode: str = "BACKWARD",
    upcast_steps: Mapping[str, Iterable[int]] | None = None,
    messages: Mapping[str, MessageSpec] = MESSAGE_TYPES,
) -> list[str]:
    """Every contract problem under ``directory``, one line each; empty means the contract holds.

    ``upcast_steps`` maps a type name to the versions N whose step N -> N+1 is done by a code upcaster
    (defaults to the registered upcasters): such a step is exempt from Avro compatibility, and an
    incompatible step without one is an error.
    """
    from esflow.messaging.upcasting import DEFAULT_UPCASTERS, UpcasterRegistry

    registry: UpcasterRegistry | None = DEFAULT_UPCASTERS if upcast_steps is None else None
    if upcast_steps is None:
        upcast_steps = DEFAULT_UPCASTERS.steps()
    versions, problems = load_files(directory)
    catalog = SchemaCatalog(versions)
    for name in catalog.names():
        svs = catalog.versions(name)
        kind = svs[-1].kind
        mode = event_mode if kind == "event" else command_mode
        bridged = set(upcast_steps.get(name, ()))
        numbers = [sv.version for sv in svs]
        for step in sorted(bridged):
            if step not in numbers or step + 1 not in numbers:
                problems.append(
                    f"{name}: an upcaster is registered for v{step} -> v{step + 1}, a missing version"
                )
            elif registry is not None:
                problems.extend(_upcaster_problems(registry, catalog, name, step))
        for reader_v, writer_v in compatibility_pairs(numbers, mode, bridged):
            reader, writer = catalog.get(name, reader_v), catalog.get(name, writer_v)
            assert reader is not None and writer is not None
            for p in reader_problems(dict(reader.definition), dict(writer.definition)):
                problems.append(f"{name}: v{reader_v} cannot read v{writer_v} ({mode}): {p}")
        spec = messages.get(name)
        if spec is None:
            problems.append(f"{name}: has schemas but no message model in esflow.domain")
            continue
        problems.extend(f"{name}: model drift: {p}" for p in model_drift(spec, svs[-1]))
    for name in sorted(set(messages) - set(catalog.names())):
        problems.append(f"{name}: message model has no schema file")
    return problems


def _upcaster_problems(registry: Any, catalog: SchemaCatalog, name: str, step: int) -> list[str]:
    """Run the upcaster of ``name`` v``step`` on an example and check the next schema accepts the result."""
    import io

    from fastavro import schemaless_writer

    from esflow.messaging.samples import sample_record

    old, new = catalog.get(name, step), catalog.get(name, step + 1)
    assert old is not None and new is not None
    try:
        out = registry.get(name, step)(sample_record(old))
        schemaless_writer(io.BytesIO(), new.parsed, out)
    except Exception as exc:  # the check reports any failure of user code as a problem line
        return [f"{name}: the v{step} -> v{step + 1} upcaster fails on an example record: {exc!r}"]
    return []
