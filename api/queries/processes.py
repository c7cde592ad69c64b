"""Handlers of the process queries: instances of the process managers from ``bi.process_instances``."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from api.queries.views import process_instances
from esflow.query.base import BadCursor, Page, Query, decode_cursor, encode_cursor
from esflow.query.bus import Handler
from esflow.query.queries import ProcessInstance, ProcessStatus, SearchProcesses

p = process_instances.c
INSTANCE = (
    p.process, p.instance_id, p.status, p.step, p.reason, p.started_at, p.updated_at, p.ended_at,
    p.deadline, p.deadline_name, p.pending_commands, p.attempts, p.inputs,
)  # fmt: skip


async def process_status(conn: AsyncConnection, query: ProcessStatus) -> tuple[ProcessInstance, ...]:
    """The instances with one id (one per process that has it), by process name."""
    select = sa.select(*INSTANCE).where(p.instance_id == query.instance_id)
    if query.process is not None:
        select = select.where(p.process == query.process)
    rows = (await conn.execute(select.order_by(p.process))).mappings()
    return tuple(ProcessInstance.model_validate(dict(r)) for r in rows)


async def search_processes(conn: AsyncConnection, query: SearchProcesses) -> Page[ProcessInstance]:
    """Instances newest started first (then by process and id), one keyset page."""
    select = sa.select(*INSTANCE)
    if query.process is not None:
        select = select.where(p.process == query.process)
    if query.statuses:
        select = select.where(p.status.in_([s.value for s in query.statuses]))
    if query.after is not None:
        at, process, iid = decode_cursor(query.after, 3)
        try:
            position = (
                sa.literal(datetime.fromisoformat(at), sa.DateTime(timezone=True)),
                sa.literal(str(process), sa.Text),
                sa.literal(UUID(iid), p.instance_id.type),
            )
        except (TypeError, ValueError) as exc:
            raise BadCursor(f"cursor {query.after[:40]!r} does not belong to this query") from exc
        select = select.where(sa.tuple_(p.started_at, p.process, p.instance_id) < sa.tuple_(*position))
    order = (p.started_at.desc(), p.process.desc(), p.instance_id.desc())
    rows = (await conn.execute(select.order_by(*order).limit(query.first + 1))).mappings().all()
    items = tuple(ProcessInstance.model_validate(dict(r)) for r in rows[: query.first])
    cursor = None
    if len(rows) > query.first:
        last = items[-1]
        cursor = encode_cursor(last.started_at.isoformat(), last.process, str(last.instance_id))
    return Page[ProcessInstance](items=items, next_cursor=cursor)


HANDLERS: dict[type[Query[Any]], Handler] = {
    ProcessStatus: process_status,
    SearchProcesses: search_processes,
}
"""The process queries' handlers, by query type."""
