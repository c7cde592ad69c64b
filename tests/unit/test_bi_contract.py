"""The read-model declarations (BI views, tables, frozen DDL) against each other and the docs they make."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from esflow.errors import EsflowError, MigrationError
from esflow.readmodel import bidocs, model
from esflow.readmodel.contract import Column, View
from esflow.readmodel.model import ReadModel
from projections import bidocs as bidocs_cli
from projections import registry
from projections.registry import view

# Only compiles types: an engine connects on first use, and this one is never used.
POSTGRES = sa.create_engine("postgresql+psycopg://").dialect
DOCS = Path(__file__).resolve().parents[2] / "docs" / "bi.md"
PAIRS = registry.views()
VIEWS = [v for v, _ in PAIRS]
TABLES = {v.name: t for v, t in PAIRS}
MODELS = registry.read_models()

# Tables that are esflow's own plumbing, never shown to BI tools.
INTERNAL = {"customer_order_stats_orders", "projection_checkpoints", "projection_dead_letters"}

# How sqlalchemy.text() finds a bind parameter; versions.py embeds the comments as SQL literals in
# text(), where such a sequence would turn into a parameter instead of staying text.
BIND_PARAM = re.compile(r"(?<![:\w\\]):(\w+)(?!:)")


def _ddl_type(column: sa.Column[object]) -> str:
    # The type as spelled in the DDL of esflow.readmodel.migrations (and in docs/bi.md).
    compiled = str(column.type.compile(dialect=POSTGRES)).lower().replace(", ", ",")
    return {"timestamp with time zone": "timestamptz"}.get(compiled, compiled)


def _table(v: View) -> sa.Table:
    return TABLES[v.name]


def _normalised(text: str) -> str:
    return " ".join(text.split())


def _section(docs: str, name: str) -> str:
    """The text under the view's heading, up to the next heading."""
    match = re.search(rf"^#{{2,4}} `(?:bi\.)?{re.escape(name)}`[ \t]*$", docs, re.MULTILINE)
    assert match, f"docs/bi.md has no heading for view {name} (e.g. '### `{name}`')"
    rest = docs[match.end() :]
    following = re.search(r"^#", rest, re.MULTILINE)
    return rest[: following.start()] if following else rest


def _texts(v: View) -> list[str]:
    return [v.name, v.grain, v.comment, v.freshness, *(f for c in v.columns for f in (c.name, c.comment))]


def test_one_view_per_read_model_plus_the_status_view() -> None:
    names = [v.name for v in VIEWS]
    assert len(names) == len(set(names))
    assert names == [*registry.PROJECTIONS, "projection_status"]
    for v in VIEWS:
        if v.name == "projection_status":
            assert (v.projection, v.table) == ("*", "projection_status")
        else:
            assert v.projection == v.table == v.name
    assert not {v.table for v in VIEWS} & INTERNAL


@pytest.mark.parametrize("v", VIEWS, ids=lambda v: v.name)
def test_view_has_every_table_column_in_table_order(v: View) -> None:
    assert _table(v).name == v.table
    assert v.column_names == tuple(c.name for c in _table(v).columns)


@pytest.mark.parametrize("m", MODELS, ids=lambda m: m.name)
def test_every_declaration_is_consistent_and_its_released_ddl_frozen(m: ReadModel) -> None:
    assert model.problems(m) == []


def test_an_edited_released_ddl_or_a_view_missing_a_column_is_caught() -> None:
    orders = registry.get("orders").read_model
    v1 = orders.ddl_at(1)
    edited = dataclasses.replace(v1, tables=(v1.tables[0].replace("carrier", "shipper"),))
    assert dataclasses.replace(v1, tables=(f"  {v1.tables[0]}\n",)).digest == v1.digest  # layout is free
    short = dataclasses.replace(orders.views[0], columns=orders.views[0].columns[:-1])
    found = model.problems(dataclasses.replace(orders, ddl={1: edited}, views=(short,)))
    assert any("v1: DDL digest" in p for p in found), found
    assert any("must list the columns of orders in order" in p for p in found), found
    with pytest.raises(MigrationError, match="no DDL for projection 'orders' at code version 7"):
        orders.ddl_at(7)


def test_the_committed_docs_are_generated_from_the_declarations() -> None:
    page = DOCS.read_text(encoding="utf-8")
    assert bidocs_cli.current(page) == page, "docs/bi.md is stale: run `python -m projections.bidocs`"
    assert CliRunner().invoke(bidocs_cli.main, ["--check"]).exit_code == 0


def test_the_docs_check_fails_on_a_stale_page_and_regenerating_fixes_it(tmp_path: Path) -> None:
    page = tmp_path / "bi.md"
    stale = DOCS.read_text(encoding="utf-8").replace("Units ordered; always positive.", "Units.")
    page.write_text(stale, encoding="utf-8")
    checked = CliRunner().invoke(bidocs_cli.main, ["--check", "--page", str(page)])
    assert checked.exit_code == 1 and "stale" in checked.output
    assert CliRunner().invoke(bidocs_cli.main, ["--page", str(page)]).exit_code == 0
    assert page.read_text(encoding="utf-8") == DOCS.read_text(encoding="utf-8")
    with pytest.raises(EsflowError, match="no generated part"):
        bidocs.regenerate("# no markers\n", PAIRS)


@pytest.mark.parametrize("v", VIEWS, ids=lambda v: v.name)
def test_everything_is_documented(v: View) -> None:
    assert v.grain.startswith("one row per "), v.grain
    for text in (v.comment, v.freshness, *(c.comment for c in v.columns)):
        assert text.strip() == text and len(text) > 10, f"{v.name}: empty or padded text {text!r}"
    for c in v.columns:
        assert c.comment.endswith("."), f"{v.name}.{c.name}: a comment is a sentence"


@pytest.mark.parametrize("v", VIEWS, ids=lambda v: v.name)
def test_texts_survive_being_embedded_in_sql(v: View) -> None:
    for text in _texts(v):
        assert not BIND_PARAM.search(text), f"{v.name}: {text!r} would be read as a bind parameter"
        assert "\x00" not in text


@pytest.mark.parametrize("v", VIEWS, ids=lambda v: v.name)
def test_docs_describe_the_view_as_the_contract_does(v: View) -> None:
    section = _section(DOCS.read_text(encoding="utf-8"), v.name)
    flat = _normalised(section)
    for what, text in (("comment", v.comment), ("grain", v.grain), ("freshness", v.freshness)):
        assert _normalised(text) in flat, f"docs/bi.md, {v.name}: the view's {what} differs from the contract"
    table = _table(v)
    expected = [f"| `{c.name}` | {_ddl_type(table.c[c.name])} | {c.comment} |" for c in v.columns]
    rows = [line.strip() for line in section.splitlines() if line.startswith("| `")]
    assert rows == expected, (
        f"docs/bi.md, {v.name}: the column table must list every column of the view, in order, "
        "as | `name` | ddl type | contract comment |"
    )


def test_docs_mention_no_view_that_does_not_exist() -> None:
    headings = re.findall(r"^### `(?:bi\.)?(\w+)`", DOCS.read_text(encoding="utf-8"), re.MULTILINE)
    assert headings == [v.name for v in VIEWS]


def test_view_by_name() -> None:
    assert view("orders").table == "orders"
    assert view("projection_status").projection == "*"
    assert view("daily_revenue").columns[0] == Column("day", view("daily_revenue").columns[0].comment)


def test_unknown_view_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"no BI view 'nope'.*orders.*projection_status"):
        view("nope")
