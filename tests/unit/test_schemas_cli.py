"""`esflow schemas check` and `esflow schemas register` through the real CLI entry point."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from ops.schemas import schemas

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "schemas"
ESFLOW = [sys.executable, "-c", "from esflow.cli import main; main()"]


def field(definition: dict[str, Any], name: str) -> dict[str, Any]:
    """The field ``name`` of a record definition."""
    found: dict[str, Any] = next(f for f in definition["fields"] if f["name"] == name)
    return found


def test_check_passes_on_the_repository_through_the_installed_cli() -> None:
    result = subprocess.run([*ESFLOW, "schemas", "check"], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "55 schemas ok" in result.stdout


def test_check_prints_one_line_per_problem_and_fails(tmp_path: Path) -> None:
    root = tmp_path / "schemas"
    shutil.copytree(SCHEMA_DIR, root)
    path = root / "events/order/OrderPlaced.v3.avsc"
    data = json.loads(path.read_text())
    field(data, "sales_channel").pop("default")  # breaks BACKWARD_TRANSITIVE and drifts from the model
    data["fields"][1].pop("doc")
    path.write_text(json.dumps(data))
    result = subprocess.run(
        [*ESFLOW, "schemas", "check", "--dir", str(root)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert "events/order/OrderPlaced.v3.avsc: field OrderPlaced.customer_id has no doc" in lines
    assert any(line.startswith("OrderPlaced: v3 cannot read v1 (BACKWARD_TRANSITIVE)") for line in lines)
    assert any(line.startswith("OrderPlaced: model drift: sales_channel") for line in lines)
    assert result.stderr.strip() == f"esflow: error: {len(lines)} schema problem(s) in {root}"


def test_check_honours_the_configured_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "schemas"
    shutil.copytree(SCHEMA_DIR, root)
    path = root / "commands/order/PlaceOrder.v3.avsc"
    data = json.loads(path.read_text())
    field(data, "account_id").pop("default")
    field(data, "sales_channel")["type"]["symbols"].reverse()  # enum order is not part of compatibility
    path.write_text(json.dumps(data))
    runner = CliRunner()
    strict = runner.invoke(schemas, ["check", "--dir", str(root)])
    assert "PlaceOrder: v3 cannot read v2 (BACKWARD)" in strict.output
    monkeypatch.setenv("ESFLOW_SCHEMA_COMMAND_COMPATIBILITY", "NONE")
    relaxed = runner.invoke(schemas, ["check", "--dir", str(root)])
    assert "cannot read" not in relaxed.output
    assert "model drift" in relaxed.output  # drift is checked whatever the mode


def test_register_pushes_every_version_to_the_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ESFLOW_SCHEMA_REGISTRY_URL", "mock://cli-test")
    monkeypatch.setenv("ESFLOW_TOPIC_PREFIX", "t1.")
    result = CliRunner().invoke(schemas, ["register"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert len(lines) == 55
    assert "t1.events.product-esflow.events.product.PriceChanged v2 -> id" in "\n".join(lines)


def test_register_without_a_registry_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ESFLOW_SCHEMA_REGISTRY_URL", raising=False)
    result = subprocess.run([*ESFLOW, "schemas", "register"], capture_output=True, text=True, check=False)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "esflow: error: no schema registry configured (set ESFLOW_SCHEMA_REGISTRY_URL or pass --url)"
    )
