"""Avro schema compatibility: whether data written with one version can be read with another.

Follows the Avro specification's resolution rules, like Java's ``SchemaCompatibility``, on the expanded
form (:mod:`esflow.messaging.expansion`), and the registry's compatibility modes for which pairs count.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from esflow.errors import SchemaError
from esflow.messaging.expansion import PRIMITIVES, describe, expand

COMPATIBILITY_MODES = (
    "NONE",
    "BACKWARD",
    "BACKWARD_TRANSITIVE",
    "FORWARD",
    "FORWARD_TRANSITIVE",
    "FULL",
    "FULL_TRANSITIVE",
)

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
        out.append(f"{where}: writer type {describe(w)} matches no branch of reader union {describe(r)}")
        return
    rk, wk = r["type"], w["type"]
    if rk in PRIMITIVES or wk in PRIMITIVES:
        if wk not in PRIMITIVES or rk not in PRIMITIVES or rk not in _PROMOTIONS.get(wk, {wk}):
            out.append(f"{where}: writer type {describe(w)} cannot be read as {describe(r)}")
            return
        if (r.get("logicalType"), r.get("precision"), r.get("scale")) != (
            w.get("logicalType"),
            w.get("precision"),
            w.get("scale"),
        ):
            out.append(f"{where}: logical type changed from {describe(w)} to {describe(r)}")
        return
    if rk != wk:
        out.append(f"{where}: writer type {describe(w)} cannot be read as {describe(r)}")
        return
    if rk == "array":
        _check(r["items"], w["items"], path + "[]", out, seen)
        return
    if rk == "map":
        _check(r["values"], w["values"], path + "{}", out, seen)
        return
    if not _names_match(r, w):
        out.append(f"{where}: writer {describe(w)} and reader {describe(r)} have different names")
        return
    if rk == "fixed":
        if r["size"] != w["size"]:
            out.append(f"{where}: fixed size changed from {w['size']} to {r['size']}")
        return
    if rk == "enum":
        missing = [s for s in w["symbols"] if s not in r["symbols"]]
        if missing and "default" not in r:
            out.append(f"{where}: reader enum {describe(r)} lacks symbols {missing} and has no default")
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
    not asked to cross such a step, because the decoder never lets it (:mod:`esflow.messaging.resolution`).
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
