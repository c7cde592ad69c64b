"""Docstrings and comments point only at things that exist: repository paths, and Sphinx cross-references.

A docstring naming a repository path or a root document after it moved or vanished sends readers (and
third parties reading the source for the contract) nowhere; these tests make such a pointer fail.
"""

from __future__ import annotations

import ast
import builtins
import importlib
import re
import tokenize
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CODE_DIRS = ("src", "processors", "producers", "projections", "api", "ops", "tests")
# First components that make a path repository-relative; ``esflow/...`` is short for ``src/esflow/...``.
REPO_ROOTS = {"src", "esflow", "docs", "schemas", "ops", "processors", "producers", "projections", "tests"}
PACKAGES = ("esflow", "processors", "producers", "projections", "api", "ops")
PATH = re.compile(r"(?<![\w./~<>*{}-])((?:[\w.-]+/)+[\w.<>*{}-]*)")
ROOT_FILE = re.compile(r"(?<![\w./-])([\w-]+\.(?:md|toml|yml|yaml|cfg|ini)|Makefile|Dockerfile)\b")
ROLE = re.compile(r":(?:mod|class|func|meth|data|attr|exc|obj):`[~!]?([\w.]+)`")


def _sources() -> list[Path]:
    return sorted(p for d in CODE_DIRS for p in (ROOT / d).rglob("*.py") if ".venv" not in p.parts)


@cache
def _docstrings() -> list[tuple[Path, str | None, str, str]]:
    """(file, enclosing class, name, docstring) of every module, class and function docstring."""
    out: list[tuple[Path, str | None, str, str]] = []
    for path in _sources():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        owner: dict[int, str] = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                for child in ast.walk(node):
                    if child is not node:
                        owner.setdefault(id(child), node.name)
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                doc = ast.get_docstring(node, clean=False)
                if doc:
                    name = getattr(node, "name", "<module>")
                    out.append((path, owner.get(id(node)), name, doc))
    return out


@cache
def _texts() -> list[tuple[Path, str, str]]:
    """(file, where, text) of every docstring and every comment."""
    out = [(path, name, doc) for path, _, name, doc in _docstrings()]
    for path in _sources():
        with path.open(encoding="utf-8") as source:
            for token in tokenize.generate_tokens(source.readline):
                if token.type == tokenize.COMMENT:
                    out.append((path, f"line {token.start[0]}", token.string))
    return out


def _paths(doc: str) -> Iterator[str]:
    for match in PATH.finditer(doc):
        token = match.group(1).rstrip(".,:;")
        if token.split("/", 1)[0] in REPO_ROOTS and not set("<>*{}") & set(token):
            yield token


def _exists(token: str) -> bool:
    candidates = [ROOT / token, ROOT / "src" / token]
    return any(c.exists() for c in candidates)


def test_the_scan_finds_paths_and_root_files() -> None:
    doc = "see ``processors/state.py``, docs/bi.md, schemas/events/<aggregate>/ and README.md; a/b is not."
    assert list(_paths(doc)) == ["processors/state.py", "docs/bi.md"]
    assert ROOT_FILE.findall(doc) == ["README.md"]
    assert len(_docstrings()) > 500
    assert len(_texts()) > len(_docstrings())


def test_docstring_and_comment_paths_exist() -> None:
    missing = [
        f"{path.relative_to(ROOT)} ({name}): {token}"
        for path, name, doc in _texts()
        for token in _paths(doc)
        if not _exists(token)
    ]
    assert not missing, "docstrings or comments name paths that do not exist:\n" + "\n".join(missing)


def test_docstring_and_comment_root_files_exist() -> None:
    missing = [
        f"{path.relative_to(ROOT)} ({name}): {token}"
        for path, name, doc in _texts()
        for token in ROOT_FILE.findall(doc)
        if not (ROOT / token).exists() and not (ROOT / "docs" / token).exists()
    ]
    assert not missing, "docstrings or comments name files that do not exist:\n" + "\n".join(missing)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[0] == "src":
        parts = parts[1:]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _resolves(name: str, here: object) -> bool:
    parts = name.split(".")
    obj: object = here
    if parts[0] in PACKAGES:
        for n in range(len(parts), 0, -1):
            try:
                obj = importlib.import_module(".".join(parts[:n]))
            except ImportError:
                continue
            parts = parts[n:]
            break
        else:
            return False
    elif hasattr(builtins, parts[0]):
        obj = builtins
    for attr in parts:
        if hasattr(obj, attr):
            obj = getattr(obj, attr)
        else:
            # Fields of pydantic models and dataclasses are annotations, not class attributes.
            return attr in getattr(obj, "__annotations__", {}) or attr in getattr(obj, "model_fields", {})
    return True


@pytest.mark.parametrize("package", PACKAGES)
def test_cross_references_resolve(package: str) -> None:
    # Only the library and the deployables: importing test modules would run their collection-time code.
    broken = []
    for path, owner, name, doc in _docstrings():
        module_name = _module_name(path)
        if module_name.split(".")[0] != package or path.name == "__main__.py":
            continue
        module = importlib.import_module(module_name)
        for ref in ROLE.findall(doc):
            # A bare name may be relative to the enclosing class, or to the class the docstring is on.
            scopes = [ref, f"{owner}.{ref}" if owner else f"{name}.{ref}"]
            if not any(_resolves(candidate, module) for candidate in scopes):
                broken.append(f"{path.relative_to(ROOT)} ({name}): {ref}")
    assert not broken, "docstrings cross-reference names that do not exist:\n" + "\n".join(broken)
