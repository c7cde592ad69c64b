"""`ops` (stack, demo, images, topics, schemas) uses the deployables only through their public modules.

import-linter has no allow-list contract, so this test is the boundary's check. Benchmarks
(``ops/bench``) are exempt on purpose: they time a deployable's internals (the processor's state and
restore, the projections' runtime) and are not something other code builds on.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEPLOYABLES = ("producers", "processors", "projections", "api")
PUBLIC = {
    # Load generation and the reference workload (the command SDK now lives in the library).
    "producers.loadgen",
    "producers.workload",
    # Which projections exist (the processor is only ever started as `esflow processor run`).
    "projections.registry",
}


def _imports(path: Path) -> list[str]:
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module in DEPLOYABLES:  # `from producers import loadgen`
                names += [f"{node.module}.{alias.name}" for alias in node.names]
            else:
                names.append(node.module)
    return [n for n in names if n.split(".")[0] in DEPLOYABLES]


def test_ops_imports_only_public_modules_of_the_deployables() -> None:
    sources = [p for p in (ROOT / "ops").rglob("*.py") if "bench" not in p.relative_to(ROOT / "ops").parts]
    assert sources
    private = {
        f"{p.relative_to(ROOT)}: {name}" for p in sources for name in _imports(p) if name not in PUBLIC
    }
    assert not private, f"ops reaches into a deployable's internals: {sorted(private)}"


def test_the_check_sees_a_private_import(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("from processors.state import AggregateRecord\nfrom producers import loadgen\n")
    assert _imports(module) == ["processors.state", "producers.loadgen"]
