"""The contract checks: layout, docs, compatibility under each mode, model drift."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from fastavro.schema import fingerprint

from esflow.domain.catalog import MESSAGE_TYPES, MessageSpec
from esflow.domain.messages import Event
from esflow.domain.values import Money
from esflow.errors import SchemaError
from esflow.messaging.compatibility import compatibility_pairs, reader_problems
from esflow.messaging.contract import check
from esflow.messaging.drift import model_drift
from esflow.messaging.schemas import SchemaCatalog, parsing_fingerprint

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "schemas"


@pytest.fixture
def schemas(tmp_path: Path) -> Path:
    """A private copy of the repository's schemas to break."""
    target = tmp_path / "schemas"
    shutil.copytree(SCHEMA_DIR, target)
    return target


def edit(path: Path, change: Any) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data, indent=2))


def test_the_repository_contract_holds() -> None:
    assert check(SCHEMA_DIR) == []


def test_every_file_is_a_self_contained_record() -> None:
    catalog = SchemaCatalog.load(SCHEMA_DIR)
    assert len(catalog) == len(list(SCHEMA_DIR.rglob("*.avsc"))) == 55
    assert {sv.name for sv in catalog} == set(MESSAGE_TYPES)
    assert [sv.version for sv in catalog.versions("PriceChanged")] == [1, 2]
    assert [sv.version for sv in catalog.versions("OrderPlaced")] == [1, 2, 3]


def test_fingerprint_is_the_spec_value_for_a_known_schema() -> None:
    # Avro spec: the CRC-64-AVRO fingerprint of the canonical form of "int" is 0x7275d51a3f395c8f,
    # written little-endian (what Java's SchemaNormalization.parsingFingerprint64 + putLong LE give).
    assert fingerprint('"int"', "CRC-64-AVRO") == (0x7275D51A3F395C8F).to_bytes(8, "little").hex()
    canonical, fp = parsing_fingerprint({"type": "record", "name": "a.B", "doc": "x", "fields": [
        {"name": "f", "type": {"type": "string", "logicalType": "uuid"}, "doc": "y"}]})  # fmt: skip
    assert canonical == '{"name":"a.B","type":"record","fields":[{"name":"f","type":"string"}]}'
    assert len(fp) == 8


def test_docs_and_custom_attributes_do_not_change_the_fingerprint() -> None:
    sv = SchemaCatalog.load(SCHEMA_DIR).latest("OrderPlaced")
    assert sv is not None
    changed = json.loads(json.dumps(sv.definition).replace("An order was placed.", "Reworded."))
    changed["esflow.owner"] = "team-x"
    assert parsing_fingerprint(changed)[1] == sv.fingerprint


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda d: d.update(name="OrderPlacedX"), "record name 'OrderPlacedX' does not match the file name"),
        (lambda d: d.update({"esflow.version": 3}), "esflow.version 3 does not match the file's v2"),
        (lambda d: d.update(namespace="esflow.orders"), "namespace 'esflow.orders' should be"),
        (
            lambda d: d.update({"esflow.kind": "command"}),
            "esflow.kind 'command' but the file is under events/",
        ),
        (lambda d: d["fields"][1].pop("doc"), "field OrderPlaced.customer_id has no doc"),
        (
            lambda d: d["fields"][0]["type"]["fields"][0].update(doc=" "),
            "field OrderPlaced.metadata.event_id has no doc",
        ),
    ],
)
def test_layout_and_doc_problems(schemas: Path, change: Any, expected: str) -> None:
    edit(schemas / "events/order/OrderPlaced.v2.avsc", change)
    problems = check(schemas)
    assert any(expected in p for p in problems), problems


def test_version_gaps_are_reported(schemas: Path) -> None:
    (schemas / "events/order/OrderPlaced.v2.avsc").rename(schemas / "events/order/OrderPlaced.v3.avsc")
    edit(schemas / "events/order/OrderPlaced.v3.avsc", lambda d: d.update({"esflow.version": 3}))
    assert any("OrderPlaced: versions [1, 3] are not 1..N" in p for p in check(schemas))


def field(definition: dict[str, Any], name: str) -> dict[str, Any]:
    """The field ``name`` of a record definition."""
    found: dict[str, Any] = next(f for f in definition["fields"] if f["name"] == name)
    return found


def test_a_new_field_without_default_breaks_backward_compatibility(schemas: Path) -> None:
    edit(
        schemas / "events/order/OrderPlaced.v3.avsc",
        lambda d: field(d, "account_id").pop("default"),
    )
    problems = check(schemas)
    assert (
        "OrderPlaced: v3 cannot read v2 (BACKWARD_TRANSITIVE): account_id: reader field is missing "
        "from the writer and has no default" in problems
    )
    # ... and the model (which has a default) now drifts from the schema too.
    assert any("OrderPlaced: model drift: account_id: model default None" in p for p in problems), problems


def test_transitive_mode_checks_every_older_version(schemas: Path) -> None:
    # v4 drops the default v2 and v3 had for sales_channel: compatible with v2 and v3, not with v1.
    v3 = schemas / "events/order/OrderPlaced.v3.avsc"
    v4 = schemas / "events/order/OrderPlaced.v4.avsc"
    v4.write_text(v3.read_text())
    edit(v4, lambda d: (d.update({"esflow.version": 4}), field(d, "sales_channel").pop("default")))
    transitive = check(schemas, messages={})
    assert any("OrderPlaced: v4 cannot read v1 (BACKWARD_TRANSITIVE)" in p for p in transitive)
    assert not any("v4 cannot read v2" in p or "v4 cannot read v3" in p for p in transitive)
    assert not any("v4 cannot read v1" in p for p in check(schemas, event_mode="BACKWARD", messages={}))


def test_code_upcaster_exempts_its_step_and_is_required(schemas: Path) -> None:
    assert check(schemas) == []
    problems = check(schemas, upcast_steps={})
    assert (
        "PriceChanged: v2 cannot read v1 (BACKWARD_TRANSITIVE): price: reader field is missing from "
        "the writer and has no default" in problems
    )
    assert any(
        "upcaster is registered for v5 -> v6" in p
        for p in check(schemas, upcast_steps={"PriceChanged": [1, 5]})
    )


def test_commands_use_their_own_mode(schemas: Path) -> None:
    edit(schemas / "commands/order/PlaceOrder.v3.avsc", lambda d: field(d, "account_id").pop("default"))
    assert any("PlaceOrder: v3 cannot read v2 (BACKWARD)" in p for p in check(schemas))
    assert not any("PlaceOrder: v3 cannot read v2" in p for p in check(schemas, command_mode="NONE"))


def test_unknown_mode_is_refused() -> None:
    with pytest.raises(SchemaError, match="unknown compatibility mode"):
        check(SCHEMA_DIR, event_mode="SIDEWAYS")


@pytest.mark.parametrize(
    ("mode", "pairs"),
    [
        ("NONE", []),
        ("BACKWARD", [(2, 1), (3, 2)]),
        ("BACKWARD_TRANSITIVE", [(2, 1), (3, 1), (3, 2)]),
        ("FORWARD", [(1, 2), (2, 3)]),
        ("FULL", [(2, 1), (1, 2), (3, 2), (2, 3)]),
        ("FULL_TRANSITIVE", [(2, 1), (1, 2), (3, 1), (1, 3), (3, 2), (2, 3)]),
    ],
)
def test_compatibility_pairs(mode: str, pairs: list[tuple[int, int]]) -> None:
    assert compatibility_pairs([1, 2, 3], mode) == pairs


def test_compatibility_pairs_skip_upcaster_steps() -> None:
    assert compatibility_pairs([1, 2, 3], "BACKWARD_TRANSITIVE", bridged=[1]) == [(3, 2)]


def rec(*fields: dict[str, Any], name: str = "R") -> dict[str, Any]:
    return {"type": "record", "name": name, "fields": list(fields)}


@pytest.mark.parametrize(
    ("reader", "writer", "problem"),
    [
        (rec({"name": "a", "type": "long"}), rec({"name": "a", "type": "int"}), None),
        (
            rec({"name": "a", "type": "int"}),
            rec({"name": "a", "type": "long"}),
            "writer type long cannot be read as int",
        ),
        (rec({"name": "a", "type": "string"}), rec({"name": "a", "type": "bytes"}), None),
        (rec({"name": "a", "type": ["null", "long"]}), rec({"name": "a", "type": "int"}), None),
        (
            rec({"name": "a", "type": "long"}),
            rec({"name": "a", "type": ["null", "long"]}),
            "writer type null cannot be read as long",
        ),
        (
            rec({"name": "a", "type": "int"}, {"name": "b", "type": "int", "default": 1}),
            rec({"name": "a", "type": "int"}),
            None,
        ),
        (rec({"name": "b", "type": "int", "aliases": ["a"]}), rec({"name": "a", "type": "int"}), None),
        (rec(), rec({"name": "a", "type": "int"}), None),
        (rec(name="S"), rec(name="R"), "different names"),
        (
            rec({"name": "e", "type": {"type": "enum", "name": "E", "symbols": ["A"]}}),
            rec({"name": "e", "type": {"type": "enum", "name": "E", "symbols": ["A", "B"]}}),
            "lacks symbols ['B']",
        ),
        (
            rec({"name": "e", "type": {"type": "enum", "name": "E", "symbols": ["A"], "default": "A"}}),
            rec({"name": "e", "type": {"type": "enum", "name": "E", "symbols": ["A", "B"]}}),
            None,
        ),
        (
            rec(
                {
                    "name": "m",
                    "type": {"type": "bytes", "logicalType": "decimal", "precision": 18, "scale": 3},
                }
            ),
            rec(
                {
                    "name": "m",
                    "type": {"type": "bytes", "logicalType": "decimal", "precision": 18, "scale": 2},
                }
            ),
            "logical type changed",
        ),
        (
            rec({"name": "xs", "type": {"type": "array", "items": "long"}}),
            rec({"name": "xs", "type": {"type": "array", "items": "string"}}),
            "xs[]: writer type string cannot be read as long",
        ),
    ],
)
def test_reader_problems(reader: dict[str, Any], writer: dict[str, Any], problem: str | None) -> None:
    found = reader_problems(reader, writer)
    if problem is None:
        assert found == []
    else:
        assert any(problem in p for p in found), found


def test_reader_problems_agree_with_fastavro_on_the_repository_pairs() -> None:
    """Where the checker says "readable", fastavro's resolution really reads a sample."""
    import io

    import fastavro

    from esflow.messaging.samples import sample_record

    catalog = SchemaCatalog.load(SCHEMA_DIR)
    for name in catalog.names():
        versions = catalog.versions(name)
        for old in versions:
            for new in versions:
                ok = reader_problems(dict(new.definition), dict(old.definition)) == []
                buf = io.BytesIO()
                fastavro.schemaless_writer(buf, old.parsed, sample_record(old))
                buf.seek(0)
                try:
                    fastavro.schemaless_reader(buf, old.parsed, new.parsed)
                    read = True
                except Exception:
                    read = False
                assert ok == read, (name, old.version, new.version)


# ---------------------------------------------------------------------------------------------- drift


class PriceChangedTooWide(Event):
    """A model that drifts: a different field name, type and a missing field."""

    aggregate_type = "product"
    schema_version = 2
    price: Money
    note: str


def test_the_repository_models_do_not_drift() -> None:
    catalog = SchemaCatalog.load(SCHEMA_DIR)
    for name, spec in MESSAGE_TYPES.items():
        latest = catalog.latest(name)
        assert latest is not None
        assert model_drift(spec, latest) == [], name


def test_model_drift_is_reported_field_by_field() -> None:
    catalog = SchemaCatalog.load(SCHEMA_DIR)
    latest = catalog.latest("PriceChanged")
    assert latest is not None
    spec = MessageSpec("PriceChanged", "event", "product", 2, PriceChangedTooWide)
    problems = model_drift(spec, latest)
    assert "<root>: model says record PriceChangedTooWide, schema says record PriceChanged" in problems
    spec = MessageSpec("PriceChanged", "event", "product", 1, MESSAGE_TYPES["PriceChanged"].model)
    assert model_drift(spec, latest) == ["model is v1, newest schema is v2"]


def test_check_reports_drift_in_a_schema_edit(schemas: Path) -> None:
    edit(
        schemas / "events/account/FundsDeposited.v1.avsc",
        lambda d: (d["fields"][2].update(type="string"), d["fields"][2].pop("default")),
    )
    edit(
        schemas / "events/order/OrderPaid.v1.avsc",
        lambda d: d["fields"][2]["type"]["fields"][0]["type"].update(scale=3),
    )
    edit(
        schemas / "commands/order/PlaceOrder.v3.avsc",
        lambda d: field(d, "sales_channel")["type"]["symbols"].append("PHONE"),
    )
    problems = check(schemas)
    assert "FundsDeposited: model drift: reference: model says [null, string], schema says string" in problems
    assert (
        "OrderPaid: model drift: amount.amount: model says bytes/decimal(18,2), "
        "schema says bytes/decimal(18,3)" in problems
    )
    assert any(p.startswith("PlaceOrder: model drift: sales_channel: model symbols") for p in problems)


def test_schema_files_and_models_must_pair_up(schemas: Path) -> None:
    (schemas / "events/account/AccountClosed.v1.avsc").unlink()
    assert "AccountClosed: message model has no schema file" in check(schemas)
    assert "AccountClosed: has schemas but no message model in esflow.domain" in check(
        SCHEMA_DIR, messages={k: v for k, v in MESSAGE_TYPES.items() if k != "AccountClosed"}
    )


def test_broken_json_is_one_problem_not_a_crash(schemas: Path) -> None:
    (schemas / "events/account/AccountClosed.v1.avsc").write_text("{nope")
    problems = check(schemas)
    assert any(p.startswith("events/account/AccountClosed.v1.avsc: cannot read JSON") for p in problems)
    with pytest.raises(SchemaError, match="problem"):
        SchemaCatalog.load(schemas)
