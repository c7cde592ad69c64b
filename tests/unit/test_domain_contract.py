"""docs/domain.md against the code it documents for third parties: reason codes, rules, results, routing.

Reason codes are read from the code itself: the registry ``esflow.domain.reasons``, every ``reject(...)``
call of the aggregates (parsed, so a code a branch can return is found without running that branch), and
the bad-input constants of ``esflow.messaging.results`` and their uses in the processor.
"""

from __future__ import annotations

import ast
import json
import re
from collections import defaultdict
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from esflow.domain import reasons
from esflow.domain.aggregates import AGGREGATES, Rejection
from esflow.domain.catalog import commands_of
from esflow.domain.messages import AggregateType
from esflow.errors import SchemaError
from esflow.messaging import deadletters, result_schema
from esflow.messaging import results as rc
from esflow.messaging.kafka import partition_for
from ops.schemas import schemas
from processors import step as command_step

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs" / "domain.md"
AGGREGATES_DIR = ROOT / "src" / "esflow" / "domain" / "aggregates"
CODE = re.compile(r"^[a-z][a-z0-9_]*$")
TICKED = re.compile(r"`([^`]+)`")
ANSWERS = "## Who may answer: answers and dead-letter reports on `command-results`"


@cache
def _docs() -> str:
    return DOCS.read_text(encoding="utf-8")


def _section(heading: str, text: str | None = None) -> str:
    """The text under ``heading`` (a whole heading line) up to the next heading of its level or higher."""
    text = _docs() if text is None else text
    match = re.search(rf"^{re.escape(heading)}[ \t]*$", text, re.MULTILINE)
    assert match, f"docs/domain.md has no heading {heading!r}"
    level = len(heading) - len(heading.lstrip("#"))
    rest = text[match.end() :]
    following = re.search(rf"^#{{1,{level}}} ", rest, re.MULTILINE)
    return rest[: following.start()] if following else rest


def _table(text: str) -> list[list[str]]:
    """The rows of the first Markdown table in ``text`` (header and rule left out), as stripped cells."""
    lines: list[str] = []
    for line in text.splitlines():
        if line.startswith("|"):
            lines.append(line)
        elif lines:
            break
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in lines]
    assert len(rows) > 2, "no table with rows"
    return rows[2:]


def _ticked(cell: str) -> list[str]:
    return TICKED.findall(cell)


# ------------------------------------------------------------------------------ codes from the code


def _reason_imports(tree: ast.Module) -> set[str]:
    return {
        alias.asname or alias.name
        for node in tree.body
        if isinstance(node, ast.ImportFrom) and node.module == "esflow.domain.reasons"
        for alias in node.names
    }


def _code(arg: ast.expr, imported: set[str], where: str) -> str:
    assert isinstance(arg, ast.Name) and arg.id in imported, (
        f"{where}: reject() must name a constant of esflow.domain.reasons, not {ast.unparse(arg)}"
    )
    value = getattr(reasons, arg.id)
    assert isinstance(value, str)
    return value


@cache
def _modules() -> dict[str, ast.Module]:
    return {p.stem: ast.parse(p.read_text(encoding="utf-8")) for p in sorted(AGGREGATES_DIR.glob("*.py"))}


def _rejections() -> Iterator[tuple[str, str, set[str]]]:
    """(module, code, detail names) of every ``reject(...)`` call in the aggregates package."""
    for name, tree in _modules().items():
        imported = _reason_imports(tree)
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
                continue
            assert node.func.id != "Rejection" or name == "base", f"{name}: build rejections with reject()"
            if node.func.id == "reject":
                code = _code(node.args[0], imported, f"{name}.py line {node.lineno}")
                yield name, code, {k.arg for k in node.keywords if k.arg is not None}


@cache
def _details() -> dict[str, set[str]]:
    out: dict[str, set[str]] = defaultdict(set)
    for _, code, keys in _rejections():
        out[code] |= keys
    return dict(out)


def _functions(tree: ast.Module) -> dict[str, ast.FunctionDef]:
    return {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}


def _codes_in(nodes: list[ast.stmt], module: str, seen: frozenset[str] = frozenset()) -> set[str]:
    """Codes the statements can return: their reject() calls and those of the functions they call."""
    functions = {**_functions(_modules()["base"]), **_functions(_modules()[module])}
    imported = _reason_imports(_modules()[module]) | _reason_imports(_modules()["base"])
    codes: set[str] = set()
    for node in (n for stmt in nodes for n in ast.walk(stmt)):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
            continue
        called = node.func.id
        if called == "reject":
            codes.add(_code(node.args[0], imported, module))
        elif called in functions and called not in seen:
            codes |= _codes_in(functions[called].body, module, seen | {called})
    return codes


def _codes_per_command(module: str) -> dict[str, set[str]]:
    """For each command ``decide`` handles, the codes it can answer with (execute's checks aside)."""
    decide = _functions(_modules()[module])["decide"]
    blocks: dict[str, list[ast.stmt]] = {}
    creation: set[str] = set()
    prelude: list[ast.stmt] = []
    for stmt in decide.body:
        test = stmt.test if isinstance(stmt, ast.If) else None
        if (
            isinstance(test, ast.Call)
            and isinstance(test.func, ast.Name)
            and test.func.id == "isinstance"
            and isinstance(test.args[1], ast.Name)
        ):
            assert isinstance(stmt, ast.If)
            blocks[test.args[1].id] = stmt.body
            creation.add(test.args[1].id)
        elif isinstance(stmt, ast.Match):
            for case in stmt.cases:
                assert isinstance(case.pattern, ast.MatchClass) and isinstance(case.pattern.cls, ast.Name)
                blocks[case.pattern.cls.id] = case.body
        elif not isinstance(stmt, ast.Return):  # the final return is the unknown-command fallback
            prelude.append(stmt)
    return {
        name: _codes_in(body, module) | (set() if name in creation else _codes_in(prelude, module))
        for name, body in blocks.items()
    }


def _statuses() -> set[str]:
    """Every ``status`` a result value can have (``accepted``…): snake-case words that are not reasons."""
    out: set[str] = set()
    for definition in result_schema.result_json_schema()["$defs"].values():
        status = definition["properties"].get("status", {})
        out |= set(status.get("enum", ())) | ({status["const"]} if "const" in status else set())
    return out


def _bad_input_codes() -> set[str]:
    """The reason codes of ``esflow.messaging.results``: constants named after their value."""
    return {
        value
        for name, value in vars(rc).items()
        if isinstance(value, str) and CODE.match(value) and name == value.upper()
    } - _statuses()


# ------------------------------------------------------------------------------ the registry


def test_the_registry_holds_every_constant_of_its_module() -> None:
    constants = {v for k, v in vars(reasons).items() if k.isupper() and isinstance(v, str)}
    assert constants == reasons.BUSINESS_REASONS
    assert all(CODE.match(code) for code in constants)


def test_aggregates_name_registered_constants_and_use_every_one() -> None:
    used = {code for _, code, _ in _rejections()}
    assert used == set(reasons.BUSINESS_REASONS), "a registered code no aggregate gives, or the reverse"


def test_a_rejection_refuses_an_unregistered_code() -> None:
    Rejection(code=reasons.NOT_FOUND, message="ok")
    with pytest.raises(ValueError, match="not a reason code"):
        Rejection(code="made_up_code", message="x")


def test_business_and_bad_input_codes_are_disjoint() -> None:
    bad = _bad_input_codes()
    assert len(bad) >= 7
    assert not bad & reasons.BUSINESS_REASONS
    assert {"accepted", "rejected"} <= _statuses()


def test_the_processor_dead_letters_only_documented_bad_input_codes() -> None:
    # Every rc.<CODE> the processor names must be one of the codes found above (and so documented below).
    tree = ast.parse(Path(command_step.__file__).read_text(encoding="utf-8"))
    named = {
        getattr(rc, node.attr)
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "rc"
        and isinstance(getattr(rc, node.attr, None), str)
        and CODE.match(getattr(rc, node.attr))
    }
    named -= _statuses()
    assert named, "the processor names no reason code of esflow.messaging.results"
    assert named <= _bad_input_codes()


# ------------------------------------------------------------------------------ the reason-code tables


def test_every_business_code_is_documented_with_its_details() -> None:
    rows = _table(_section("### Business reason codes"))
    documented = {}
    for code_cell, meaning, details in rows:
        (code,) = _ticked(code_cell)
        assert code not in documented, f"{code} is documented twice"
        assert meaning.endswith(".") and len(meaning) > 20, f"{code}: no meaning"
        documented[code] = set(_ticked(details))
    assert set(documented) == set(reasons.BUSINESS_REASONS)
    for code, keys in documented.items():
        assert keys == _details().get(code, set()), f"{code}: the details column is not what reject() passes"


def test_every_bad_input_code_is_documented() -> None:
    rows = _table(_section("### Bad-input reason codes"))
    documented = {}
    for code_cell, meaning in rows:
        (code,) = _ticked(code_cell)
        assert meaning.endswith(".") and len(meaning) > 20, f"{code}: no meaning"
        documented[code] = meaning
    assert set(documented) == _bad_input_codes()


# ------------------------------------------------------------------------------ rules per command


def _rules() -> str:
    return _section("## Domain rules, command by command")


@pytest.mark.parametrize("aggregate_type", sorted(AGGREGATES))
def test_every_command_has_its_rules_under_its_aggregate(aggregate_type: AggregateType) -> None:
    section = _section(f"### {aggregate_type.capitalize()}", _rules())
    headings = set(re.findall(r"^#### `(\w+)`[ \t]*$", section, re.MULTILINE))
    assert headings == {spec.name for spec in commands_of(aggregate_type)}


@pytest.mark.parametrize("aggregate_type", sorted(AGGREGATES))
def test_each_command_documents_exactly_the_codes_it_can_give(aggregate_type: AggregateType) -> None:
    aggregate = AGGREGATES[aggregate_type]
    module = aggregate.decide.__module__.rsplit(".", 1)[-1]
    per_command = _codes_per_command(module)
    assert set(per_command) == {spec.name for spec in commands_of(aggregate_type)}
    section = _section(f"### {aggregate_type.capitalize()}", _rules())
    known = reasons.BUSINESS_REASONS | _bad_input_codes()
    for command, codes in per_command.items():
        text = _section(f"#### `{command}`", section)
        documented = {t for t in _ticked(text) if t in known}
        assert documented == codes, f"{aggregate_type} {command}: docs say {documented}, decide gives {codes}"


# ------------------------------------------------------------------------------ results


@pytest.mark.parametrize("name", sorted(result_schema.result_json_schema()["$defs"]))
def test_every_result_field_is_documented_in_order(name: str) -> None:
    definition = result_schema.result_json_schema()["$defs"][name]
    answers = _section(ANSWERS)
    level = "####" if f"#### `{name}`" in answers else "###"
    rows = _table(_section(f"{level} `{name}`", answers))
    documented = [_ticked(row[0])[0] for row in rows]
    assert documented == list(definition["properties"]), f"{name}: the field table is not the model's"
    for row in rows:
        assert row[-1].endswith(".") and len(row[-1]) > 10, f"{name}.{row[0]}: no meaning"


def test_every_result_header_is_documented() -> None:
    section = _section("### Headers on results")
    headers = [v for k, v in vars(rc).items() if k.startswith("HEADER_") and isinstance(v, str)]
    assert len(headers) >= 2
    for value in (*headers, rc.RESULT_CONTENT_TYPE, "esflow-result-replayed"):
        assert value in section, f"result header {value} is not documented"


def test_every_dead_letter_header_is_documented() -> None:
    section = _section("### `DeadLetterReport`", _section(ANSWERS))
    names = [v for k, v in vars(deadletters).items() if k.startswith("DLQ_") and isinstance(v, str)]
    assert len(names) >= 5
    for name in names:
        assert f"`{name}`" in section, f"dead-letter header {name} is not documented"


def test_the_committed_result_schema_is_what_the_models_generate() -> None:
    path = ROOT / "schemas" / result_schema.RESULT_SCHEMA_PATH
    assert result_schema.is_current(path), "stale: run `esflow schemas results`"


def test_the_result_schema_takes_one_of_several_models() -> None:
    schema: dict[str, Any] = result_schema.result_json_schema((rc.CommandResult, rc.EventRef))
    assert schema["oneOf"] == [{"$ref": "#/$defs/CommandResult"}, {"$ref": "#/$defs/EventRef"}]
    assert set(schema["$defs"]) == {"CommandResult", "EventRef"}
    assert schema["$defs"]["CommandResult"]["required"] == ["command_id", "status", "processed_at"]
    with pytest.raises(ValueError):
        result_schema.result_json_schema(())


def test_the_cli_writes_the_schema_and_checks_it(tmp_path: Path) -> None:
    run = CliRunner().invoke
    path = tmp_path / result_schema.RESULT_SCHEMA_PATH
    stale = run(schemas, ["results", "--dir", str(tmp_path), "--check"])
    assert isinstance(stale.exception, SchemaError) and "esflow schemas results" in str(stale.exception.hint)
    wrote = run(schemas, ["results", "--dir", str(tmp_path)])
    assert wrote.exit_code == 0, wrote.output
    assert json.loads(path.read_text()) == result_schema.result_json_schema()
    current = run(schemas, ["results", "--dir", str(tmp_path), "--check"])
    assert current.exit_code == 0, current.output


# ------------------------------------------------------------------------------ partitioning


def _partition_rows() -> list[list[str]]:
    return _table(_section("### Topic, value, key and partition"))


@pytest.mark.parametrize("row", _partition_rows(), ids=lambda row: row[0])
def test_the_documented_partitions_are_kafkas(row: list[str]) -> None:
    key = _ticked(row[0])[0].encode()
    hashed, of6, of12 = (int(cell) for cell in row[1:])
    # The documented rule (Java's toPositive(murmur2) % n) gives the documented partitions...
    assert ((hashed & 0x7FFFFFFF) % 6, (hashed & 0x7FFFFFFF) % 12) == (of6, of12)
    # ...and librdkafka's murmur2, which the processor checks with and producers must select, agrees.
    assert (partition_for(key, 6), partition_for(key, 12)) == (of6, of12)
