"""The JSON Schema of a ``command-results`` value, generated from the result models.

Producers written in other languages read their answers from ``command-results``; the models in
:mod:`esflow.messaging.results` define those values, and this module turns them into one JSON Schema
(draft 2020-12), committed as ``schemas/results/command-result.schema.json`` so a third party needs no
Python. ``esflow schemas results`` writes it, ``--check`` (and a unit test) fails when the committed file
is not what the models generate. ``docs/domain.md`` explains every field.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from esflow.messaging import results

RESULT_MODELS: tuple[type[BaseModel], ...] = (results.CommandResult, results.DeadLetterReport)
"""Every model a ``command-results`` value can be; the schema accepts exactly one of them (``oneOf``)."""

RESULT_SCHEMA_PATH = Path("results") / "command-result.schema.json"
"""Where the schema lives, relative to the schema root (``schemas/``)."""

_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def result_json_schema(models: Sequence[type[BaseModel]] = RESULT_MODELS) -> dict[str, Any]:
    """One JSON Schema whose instances are exactly the values of ``models`` (validation mode)."""
    if not models:
        raise ValueError("a result schema needs at least one model")
    refs, top = models_json_schema(
        [(model, "validation") for model in models], ref_template="#/$defs/{model}"
    )
    return {
        "$schema": _DIALECT,
        "title": "esflow command-results value",
        "description": (
            "The JSON value of a record on the command-results topic (UTF-8, content-type "
            "application/vnd.esflow.command-result+json). Generated from esflow.messaging.results; "
            "docs/domain.md explains every field, the record keys and the headers."
        ),
        "oneOf": [refs[(model, "validation")] for model in models],
        "$defs": top["$defs"],
    }


def render(models: Sequence[type[BaseModel]] = RESULT_MODELS) -> str:
    """The schema file's text: two-space indented JSON and a final newline, stable from run to run."""
    return json.dumps(result_json_schema(models), indent=2, ensure_ascii=False) + "\n"


def is_current(path: Path, models: Sequence[type[BaseModel]] = RESULT_MODELS) -> bool:
    """True when ``path`` holds exactly what ``models`` generate."""
    return path.is_file() and path.read_text(encoding="utf-8") == render(models)


def write(path: Path, models: Sequence[type[BaseModel]] = RESULT_MODELS) -> None:
    """Write the generated schema to ``path`` (creating its folder)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(models), encoding="utf-8")
