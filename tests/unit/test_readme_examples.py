"""README.md's shell examples paste into a fresh shell: full path to esflow, no placeholders, all run."""

from __future__ import annotations

import re
import tomllib

from tests.readme import README, runnable_script, shell_blocks

# A command line that calls esflow by bare name (not through .venv/bin/) would fail in a fresh shell.
_BARE = re.compile(r"(^|[;&|(]\s*|\$\()esflow\b")


def _commands(block: str) -> list[str]:
    return [line for line in block.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_the_set_up_is_exactly_the_two_commands() -> None:
    first = shell_blocks()[0][1]
    assert [line.split("#")[0].strip() for line in _commands(first)] == ["make demo", "make test"]


def test_every_example_calls_esflow_by_its_venv_path() -> None:
    bare = [line for _, block in shell_blocks() for line in _commands(block) if _BARE.search(line)]
    assert not bare, f"call .venv/bin/esflow, not esflow: {bare}"
    # ...and that path is what the install creates.
    scripts = tomllib.loads((README.parent / "pyproject.toml").read_text())["project"]["scripts"]
    assert "esflow" in scripts


def test_no_example_holds_a_placeholder() -> None:
    for _, block in shell_blocks():
        assert "…" not in block and "<id>" not in block and "..." not in block, block


def test_every_shell_example_but_the_set_up_and_the_demo_itself_is_run_by_the_e2e_test() -> None:
    blocks = shell_blocks()
    unmarked = [body for marked, body in blocks[1:] if not marked and "demo --keep-running" not in body]
    assert not unmarked, f"mark these for tests/e2e/test_readme.py: {unmarked}"
    script = runnable_script()
    for word in ("send", "tail", "aggregate history", "aggregate state", "loadgen", "db grant-bi"):
        assert f".venv/bin/esflow {word}" in script, word


def test_a_marker_without_a_block_is_caught() -> None:
    text = "intro\n\n<!-- readme-examples: x -->\n```sh\necho hi\n```\n\n```sh\necho no\n```\n"
    assert shell_blocks(text) == [(True, "echo hi\n"), (False, "echo no\n")]
