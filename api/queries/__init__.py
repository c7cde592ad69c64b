"""The query handlers of the API deployable: one async handler per query type of :mod:`esflow.query`.

:data:`HANDLERS` is what a :class:`~esflow.query.bus.QueryBus` is built with; :func:`connect_bus`
builds one on the configured database.
"""

from __future__ import annotations

from typing import Any

from api.queries import accounts, catalogue, orders, processes
from api.queries.orders import AmbiguousOrderNumber
from esflow.query.base import Query
from esflow.query.bus import Handler, QueryBus
from esflow.query.queries import QUERIES
from esflow.settings import Settings

HANDLERS: dict[type[Query[Any]], Handler] = {
    **orders.HANDLERS,
    **catalogue.HANDLERS,
    **accounts.HANDLERS,
    **processes.HANDLERS,
}
"""Every query type's handler."""

_missing = set(QUERIES) - set(HANDLERS)
if _missing:  # pragma: no cover - a new query without a handler is a programming error
    raise RuntimeError(f"query types without a handler: {sorted(q.__name__ for q in _missing)}")


def connect_bus(
    settings: Settings | None = None, *, cache_size: int = 10_000, pool_size: int = 10
) -> QueryBus:
    """A query bus over the configured read models with every handler (``await bus.close()`` it)."""
    return QueryBus.connect(HANDLERS, settings, cache_size=cache_size, pool_size=pool_size)


__all__ = ["HANDLERS", "AmbiguousOrderNumber", "connect_bus"]
