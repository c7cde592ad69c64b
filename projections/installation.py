"""The read-model installation's base schema, as the CLI and the workers reach it: engine, layout, reads."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import sqlalchemy as sa

from esflow.errors import translated
from esflow.readmodel.store import create_engine
from esflow.readmodel.versions import Layout
from esflow.settings import Settings

T = TypeVar("T")


def base_engine(settings: Settings) -> sa.Engine:
    """An engine on the installation's base schema (the caller disposes of it)."""
    return create_engine(settings.postgres, settings.projections.db_schema)


def layout(settings: Settings) -> Layout:
    """Where the installation's schemas, views and roles are."""
    return Layout(settings.projections.db_schema)


def read(settings: Settings, context: str, reader: Callable[[sa.Connection], T]) -> T:
    """Run ``reader`` on a connection to the base schema; driver errors become one-line esflow errors."""
    engine = base_engine(settings)
    try:
        with translated(context), engine.connect() as conn:
            return reader(conn)
    finally:
        engine.dispose()
