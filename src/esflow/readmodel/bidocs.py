"""``docs/bi.md``'s view reference, generated from the read-model declarations.

The page has a hand-written part (connecting, guarantees, conventions, how to add a read model) and a
generated part between two marker lines: one section per view of the ``bi`` schema with its comment,
grain, freshness and a table of its columns (name, Postgres type of the underlying column, meaning),
the same texts `esflow db migrate` writes as ``COMMENT ON``. :func:`regenerate` rewrites only the
generated part; the projections deployable's ``python -m projections.bidocs`` runs it over the
registered read models, and a unit test fails while the committed page differs from its output.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from esflow.errors import EsflowError
from esflow.readmodel.contract import View

BEGIN = "<!-- BEGIN GENERATED VIEWS: python -m projections.bidocs; edit the declarations, not this -->"
"""The line after which the generated part starts."""
END = "<!-- END GENERATED VIEWS -->"
"""The line where the generated part ends."""

WIDTH = 105
"""Prose is wrapped at this width (the column tables are one line per column, whatever their width)."""

_DIALECT = postgresql.dialect()  # type: ignore[no-untyped-call]


def ddl_type(column: sa.Column[object]) -> str:
    """The column's type as the DDL spells it (``numeric(20,2)``, ``timestamptz``, ``char(3)``...)."""
    compiled = str(column.type.compile(dialect=_DIALECT)).lower().replace(", ", ",")
    return {"timestamp with time zone": "timestamptz"}.get(compiled, compiled)


def _wrap(text: str) -> str:
    return textwrap.fill(text, width=WIDTH, break_long_words=False, break_on_hyphens=False)


def render_view(view: View, table: sa.Table) -> str:
    """The Markdown section of one view (``table``: the table the view selects from)."""
    rows = "\n".join(f"| `{c.name}` | {ddl_type(table.c[c.name])} | {c.comment} |" for c in view.columns)
    return (
        f"### `{view.name}`\n\n"
        f"{_wrap(view.comment)}\n\n"
        f"{_wrap(f'**Grain:** {view.grain}.')}\n\n"
        f"{_wrap(f'**Freshness:** {view.freshness}')}\n\n"
        "| column | type | meaning |\n"
        "|---|---|---|\n"
        f"{rows}\n"
    )


def render(views: Sequence[tuple[View, sa.Table]]) -> str:
    """The generated part: every view's section, in the given order."""
    return "\n".join(render_view(view, table) for view, table in views)


def regenerate(page: str, views: Sequence[tuple[View, sa.Table]]) -> str:
    """``page`` with the text between its :data:`BEGIN` and :data:`END` lines replaced by :func:`render`."""
    start = page.find(BEGIN + "\n")
    end = page.find("\n" + END, start)
    if start < 0 or end < 0:
        raise EsflowError(
            "the BI page has no generated part", hint=f"put the lines {BEGIN!r} and {END!r} where it goes"
        )
    head = page[: start + len(BEGIN) + 1]
    return f"{head}\n{render(views)}\n{page[end + 1 :]}"
