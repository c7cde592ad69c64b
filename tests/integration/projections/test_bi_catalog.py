"""What `esflow db migrate` leaves in PostgreSQL's catalog is what the read-model declarations say."""

from __future__ import annotations

import sqlalchemy as sa

from esflow.readmodel import versions
from esflow.readmodel.bidocs import ddl_type
from esflow.readmodel.store import create_engine
from esflow.settings import PostgresSettings
from projections import registry


def test_the_bi_views_columns_types_and_comments_are_the_declared_ones(
    pg_settings: PostgresSettings, pg_schema: str
) -> None:
    layout = versions.Layout(pg_schema)
    engine = create_engine(pg_settings, pg_schema)
    try:
        versions.install(engine, layout, [factory() for factory in registry.PROJECTIONS.values()])
        with engine.connect() as conn:
            views = conn.execute(
                sa.text(
                    "SELECT c.relname, obj_description(c.oid, 'pg_class') FROM pg_class c "
                    "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = :bi AND c.relkind = 'v'"
                ),
                {"bi": layout.bi},
            ).all()
            columns = conn.execute(
                sa.text(
                    "SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod), "
                    "col_description(c.oid, a.attnum) FROM pg_attribute a "
                    "JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE n.nspname = :bi AND c.relkind = 'v' AND a.attnum > 0 ORDER BY c.relname, a.attnum"
                ),
                {"bi": layout.bi},
            ).all()
    finally:
        engine.dispose()

    declared = registry.views()
    assert dict(views) == {
        v.name: f"{v.comment}\nGrain: {v.grain}\nFreshness: {v.freshness}" for v, _ in declared
    }
    spelled = {
        "timestamp with time zone": "timestamptz",
        "character(3)": "char(3)",
        "character(2)": "char(2)",
    }
    in_catalog: dict[str, list[tuple[str, str, str]]] = {}
    for view, name, type_, comment in columns:  # in view column order
        in_catalog.setdefault(view, []).append((name, spelled.get(type_, type_), comment))
    assert in_catalog == {
        v.name: [(c.name, ddl_type(table.c[c.name]), c.comment) for c in v.columns] for v, table in declared
    }
