"""GraphQL output types: the query answers (derived from their pydantic models) and connections.

Answer types are generated from :mod:`esflow.query.queries` with strawberry's pydantic integration,
so a field added to an answer model appears in the schema without a second declaration.

Pagination follows the GraphQL connection shape clients know (``edges { node }``, ``nodes`` and
``pageInfo { hasNextPage endCursor }``), forward only: pass ``pageInfo.endCursor`` back as ``after``.
The pages are keyset pages (:mod:`esflow.query.base`), so edges carry no cursor of their own: a page
can only be continued from its end.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar
from uuid import UUID

import strawberry
from strawberry.experimental.pydantic import type as from_model

from esflow.query import queries as q
from esflow.query.base import Page

T = TypeVar("T")


def _derive(model: type[Any], name: str, description: str | None = None) -> Any:
    cls = type(name, (), {"__doc__": description or model.__doc__})
    return from_model(model=model, all_fields=True, description=cls.__doc__)(cls)


OrderLine = _derive(q.OrderLine, "OrderLine")
OrderSummary = _derive(q.OrderSummary, "OrderSummary")
Order = _derive(q.OrderDetails, "Order")
StatusTotals = _derive(q.StatusTotals, "StatusTotals")
OrderStatistics = _derive(q.OrderStatistics, "OrderStatistics")
RevenuePeriod = _derive(q.RevenuePeriod, "RevenuePeriod")
Product = _derive(q.Product, "Product")
Account = _derive(q.Account, "Account")
StatementLine = _derive(q.StatementLine, "StatementLine")
ProcessInstance = _derive(q.ProcessInstance, "ProcessInstance")


@strawberry.type(description="Where a page ends: pass endCursor back as `after` for the next page.")
class PageInfo:
    """Forward pagination state."""

    has_next_page: bool
    end_cursor: str | None


@strawberry.type(description="One item of a page.")
class Edge(Generic[T]):
    """An item of a connection."""

    node: T


@strawberry.type(description="One keyset page of a list.")
class Connection(Generic[T]):
    """A page: its items as edges and as nodes, and where it ends."""

    edges: list[Edge[T]]
    nodes: list[T]
    page_info: PageInfo


def connection(page: Page[Any], node_type: Any) -> Any:
    """A :class:`Connection` of ``node_type`` from a bus page."""
    nodes = [node_type.from_pydantic(item) for item in page.items]
    return Connection(
        edges=[Edge(node=n) for n in nodes],
        nodes=nodes,
        page_info=PageInfo(has_next_page=page.next_cursor is not None, end_cursor=page.next_cursor),
    )


@strawberry.type(description="Who the API takes the caller for.")
class Viewer:
    """The caller of this request."""

    role: str
    subject: str | None
    customer_id: UUID | None


__all__ = [
    "Account",
    "Connection",
    "Edge",
    "Order",
    "OrderLine",
    "OrderStatistics",
    "OrderSummary",
    "PageInfo",
    "ProcessInstance",
    "Product",
    "RevenuePeriod",
    "StatementLine",
    "StatusTotals",
    "Viewer",
    "connection",
]
