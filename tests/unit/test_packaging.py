"""The package's runtime dependencies exclude the test tools (issue 12)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].lower() for r in requirements}


def test_pytest_and_testcontainers_are_test_dependencies_only() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = _names(project["dependencies"])
    dev = _names(project["optional-dependencies"]["dev"])
    for tool in ("pytest", "testcontainers", "pytest-timeout", "hypothesis"):
        assert tool not in runtime, tool
    assert {"pytest", "testcontainers"} <= dev
