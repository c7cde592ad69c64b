"""How far each projection version has got: the report behind `esflow projection status` and the console.

Read from the registry and each version schema's own bookkeeping (``projection_status``,
``projection_dead_letters``); nothing here talks to Kafka. ``lag`` is what the worker last wrote (the
records left after its last batch, :func:`~esflow.readmodel.projection.records_left`); a caller that can
ask the broker for the partitions' ends computes a live figure with :func:`live_records_left`, which
also covers a worker that stopped writing.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa

from esflow.readmodel.projection import TP, records_left
from esflow.readmodel.tables import dead_letters, status
from esflow.readmodel.versions import Layout, list_versions

WITH_BOOKKEEPING = ("live", "standby", "building", "failed")
"""Version states whose schema exists and holds checkpoints, status rows and dead letters."""


def _in_schema(conn: sa.Connection, schema: str) -> sa.Connection:
    # The bookkeeping tables carry no schema (tables.py); each version's copy is reached by translation.
    return conn.execution_options(schema_translate_map={None: schema})


def version_report(
    conn: sa.Connection, layout: Layout, names: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """One dict per version: registry fields, partitions (offset, lag, freshness), totals, progress.

    ``names`` None reports every projection in the registry; a named projection without a version is
    reported as ``not installed``. A ``building`` version also gets ``progress``, ``events_per_s`` and
    ``eta_s``.
    """
    now = time.time()
    everything = list_versions(conn, layout)
    chosen = list(names) if names is not None else list(dict.fromkeys(v.projection for v in everything))
    out: list[dict[str, Any]] = []
    for name in chosen:
        found = [v for v in everything if v.projection == name]
        for v in found:
            entry: dict[str, Any] = {
                "projection": name,
                "version": v.version,
                "state": v.state,
                "schema": v.schema,
                "code_version": v.code_version,
                "aggregates": list(v.aggregates),
                "created_at": v.created_at,
                "live_since": v.live_since,
                "error": v.error,
            }
            if v.state in WITH_BOOKKEEPING:
                scoped = _in_schema(conn, v.schema)
                rows = scoped.execute(
                    sa.select(
                        status.c.topic, status.c.partition, status.c.last_offset, status.c.lag,
                        status.c.events_applied, status.c.last_event_at, status.c.updated_at,
                        status.c.halted, status.c.error,
                    )
                    .where(status.c.projection == name)
                    .order_by(status.c.topic, status.c.partition)
                ).mappings()  # fmt: skip
                partitions = [dict(r) for r in rows]
                applied = sum(int(p["events_applied"]) for p in partitions)
                lag = sum(int(p["lag"] or 0) for p in partitions)
                dead = scoped.execute(
                    sa.select(sa.func.count())
                    .select_from(dead_letters)
                    .where(dead_letters.c.projection == name)
                ).scalar_one()
                entry.update(partitions=partitions, events_applied=applied, lag=lag, dead_letters=int(dead))
                if v.state == "building":
                    elapsed = max(1e-3, now - v.created_at.timestamp())
                    rate = applied / elapsed
                    entry["progress"] = applied / (applied + lag) if applied + lag else 0.0
                    entry["events_per_s"] = round(rate, 1)
                    entry["eta_s"] = round(lag / rate, 1) if rate > 0 else None
            out.append(entry)
        if not found:
            out.append({"projection": name, "version": None, "state": "not installed"})
    return out


def live_records_left(
    partitions: Sequence[Mapping[str, Any]], ends: Mapping[TP, int], expected: Iterable[TP] = ()
) -> int | None:
    """Records still to apply over ``partitions`` (report rows) given each partition's end offset now.

    ``ends`` maps (topic, partition) to where a read_committed reader stops (the last stable offset). A
    partition whose end is unknown counts with the lag its worker last wrote. ``expected`` names the
    partitions the version reads: one without a row has applied nothing yet, so all of it is left.
    None when nothing is known.
    """
    total: int | None = None
    seen: set[TP] = set()
    for p in partitions:
        tp = (p["topic"], p["partition"])
        seen.add(tp)
        end = ends.get(tp)
        left = records_left(int(p["last_offset"]), end) if end is not None else p.get("lag")
        if left is not None:
            total = (total or 0) + int(left)
    for tp in expected:
        if tp not in seen and tp in ends:
            seen.add(tp)
            # Offset -1: nothing of the partition applied, so every record before its end is left.
            total = (total or 0) + int(records_left(-1, ends[tp]) or 0)
    return total


def process_instances_by_status(conn: sa.Connection, layout: Layout) -> list[dict[str, Any]] | None:
    """Process instances counted by type and status from the ``process_instances`` bi view, if there is one.

    None while no such view exists (the process managers' read model is not installed). The type column
    is optional: a view without one is counted by status alone.
    """
    columns: set[str] = set(
        conn.execute(
            sa.select(sa.column("column_name"))
            .select_from(sa.table("columns", schema="information_schema"))
            .where(sa.column("table_schema") == layout.bi, sa.column("table_name") == "process_instances")
        ).scalars()
    )
    if "status" not in columns:
        return None
    type_column = next((c for c in ("process_type", "type", "process") if c in columns), None)
    keys = [c for c in (type_column, "status") if c is not None]
    view = sa.table("process_instances", *(sa.column(k) for k in keys), schema=layout.bi)
    selected = [view.c[k] for k in keys]
    rows = conn.execute(
        sa.select(*selected, sa.func.count().label("instances")).group_by(*selected).order_by(*selected)
    ).all()
    return [
        {"type": row[0] if type_column else None, "status": row[-2], "instances": int(row[-1])}
        for row in rows
    ]
