"""The Avro contract on disk: loading the .avsc files into a catalogue of fingerprinted versions.

Layout (checked by :func:`load_files`): ``schemas/{events,commands}/<aggregate>/<Name>.v<N>.avsc``. Each
file is one self-contained record (nested named types are defined inline), so any Avro tool in any
language can parse a file on its own. Versions of one record share the record's full name, as Avro schema
resolution requires; the version lives in the custom attribute ``esflow.version``, next to
``esflow.kind`` and ``esflow.aggregate``. Custom attributes and ``doc`` are not part of the parsing
canonical form, so they never change a fingerprint.

The .avsc files are the source of truth. The checks on them live next door: Avro compatibility
between versions (:mod:`esflow.messaging.compatibility`), drift of the hand-written pydantic models from
the newest version (:mod:`esflow.messaging.drift`), and the whole contract check
(:mod:`esflow.messaging.contract`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastavro.schema import fingerprint, parse_schema, to_parsing_canonical_form

from esflow.errors import SchemaError

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
