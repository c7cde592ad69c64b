"""The ``Query`` root: each field checks who may ask, builds a typed query and asks the bus.

Authorisation happens here, before the bus is asked (the bus answers anyone): operators read
everything; a customer reads their own orders and accounts, and the product catalogue (which they need
to place an order); anonymous callers read nothing but the schema. A customer asking for another
customer's order or account gets ``FORBIDDEN``, never an empty answer. Every field takes
``consistentWith``: the ``consistencyToken`` of a mutation, so the answer includes that write.
"""

from __future__ import annotations

import datetime as dt
import logging
from enum import Enum
from typing import Annotated, Any, TypeVar
from uuid import UUID

import strawberry
from pydantic import ValidationError
from strawberry.experimental.pydantic import input as input_from_model

from api.graphql import types as t
from api.graphql.context import (
    ApiError,
    Info,
    invalid_input,
    own_customer,
    parse_token,
    require_customer_access,
    require_login,
    require_operator,
)
from api.queries import AmbiguousOrderNumber
from esflow.query import queries as q
from esflow.query.base import BadCursor
from esflow.query.base import Query as TypedQuery
from esflow.query.bus import ConsistencyTimeout, QueryError, QueryTimeout

log = logging.getLogger("esflow.api")

R = TypeVar("R")

# pydantic's AwareDatetime has no GraphQL scalar: the time bounds are declared as DateTime here (a time
# without an offset still fails the model's validation, naming the field).
OrderFilterInput = input_from_model(model=q.OrderFilter, all_fields=True, name="OrderFilterInput")(
    type(
        "OrderFilterInput",
        (),
        {
            "__doc__": q.OrderFilter.__doc__,
            "__annotations__": {"placed_from": dt.datetime | None, "placed_to": dt.datetime | None},
            "placed_from": None,
            "placed_to": None,
        },
    )
)


@strawberry.enum(description="Length of a revenue report's periods.")
class Granularity(Enum):
    """Day, ISO week (from Monday) or month."""

    DAY = "day"
    WEEK = "week"
    MONTH = "month"


def build(info: Info, query_type: type[TypedQuery[R]], **fields: Any) -> TypedQuery[R]:
    """A typed query from the field's arguments (``BAD_USER_INPUT`` naming the argument if invalid)."""
    first = fields.get("first")
    limit = info.context.settings.api.max_page_size
    if isinstance(first, int) and first > limit:
        raise ApiError(
            f"first: at most {limit} items per page (asked for {first})", "BAD_USER_INPUT", fields=["first"]
        )
    try:
        return query_type(**{k: v for k, v in fields.items() if v is not None})
    except ValidationError as exc:
        raise invalid_input(exc) from exc


async def ask(info: Info, query: TypedQuery[R], consistent_with: str | None) -> R:
    """The bus's answer, its failures as errors the caller can act on."""
    ctx = info.context
    token = parse_token(consistent_with)
    try:
        return await ctx.bus.ask(query, consistent_with=token, timeout_s=ctx.settings.api.query_timeout_s)
    except ConsistencyTimeout as exc:
        raise ApiError(str(exc), "CONSISTENCY_TIMEOUT", projection=exc.projection) from exc
    except QueryTimeout as exc:
        raise ApiError(str(exc), "TIMEOUT") from exc
    except BadCursor as exc:
        raise ApiError(f"after: {exc}", "BAD_USER_INPUT", fields=["after"]) from exc
    except AmbiguousOrderNumber as exc:
        raise ApiError(str(exc), "AMBIGUOUS") from exc
    except QueryError as exc:
        log.exception("query %s failed", type(query).type_name())
        raise ApiError(str(exc), "QUERY_FAILED") from exc


def _filter(value: Any) -> q.OrderFilter:
    if value is None:
        return q.OrderFilter()
    try:
        result: q.OrderFilter = value.to_pydantic()
    except ValidationError as exc:
        raise invalid_input(exc, "filter") from exc
    return result


ConsistentWith = Annotated[
    str | None,
    strawberry.argument(description="A mutation's consistencyToken: answer only once that write is visible."),
]


@strawberry.type
class Query:
    """Reads, through the query bus (exact cache, read-your-writes with `consistentWith`)."""

    @strawberry.field(description="Who the API takes the caller for (anonymous callers included).")
    def viewer(self, info: Info) -> t.Viewer:
        """The caller."""
        p = info.context.principal
        return t.Viewer(role=p.role.value, subject=p.subject, customer_id=p.customer_id)

    @strawberry.field(description="One order; a customer may only read their own.")
    async def order(self, info: Info, id: UUID, consistent_with: ConsistentWith = None) -> t.Order | None:
        """One order by id."""
        require_login(info)
        found = await ask(info, build(info, q.OrderById, order_id=id), consistent_with)
        if found is None:
            return None
        require_customer_access(info, found.customer_id, f"order {id}")
        return t.Order.from_pydantic(found)

    @strawberry.field(description="One order by its human-readable number; a customer's own only.")
    async def order_by_number(
        self, info: Info, number: str, consistent_with: ConsistentWith = None
    ) -> t.Order | None:
        """One order by number."""
        require_login(info)
        found = await ask(info, build(info, q.OrderByNumber, number=number), consistent_with)
        if found is None:
            return None
        require_customer_access(info, found.customer_id, f"order {number}")
        return t.Order.from_pydantic(found)

    @strawberry.field(description="A customer's orders, newest first (customers: their own; the default).")
    async def orders_of_customer(
        self,
        info: Info,
        customer_id: UUID | None = None,
        first: int = 20,
        after: str | None = None,
        consistent_with: ConsistentWith = None,
    ) -> t.Connection[t.OrderSummary]:
        """One page of a customer's orders."""
        customer = own_customer(info, customer_id, "customerId")
        query = build(info, q.OrdersOfCustomer, customer_id=customer, first=first, after=after)
        return t.connection(await ask(info, query, consistent_with), t.OrderSummary)  # type: ignore[no-any-return]

    @strawberry.field(description="Every order matching the filter, newest first (operators).")
    async def orders(
        self,
        info: Info,
        filter: OrderFilterInput | None = None,  # type: ignore[valid-type]
        first: int = 20,
        after: str | None = None,
        consistent_with: ConsistentWith = None,
    ) -> t.Connection[t.OrderSummary]:
        """One page of matching orders."""
        require_operator(info)
        query = build(info, q.SearchOrders, filter=_filter(filter), first=first, after=after)
        return t.connection(await ask(info, query, consistent_with), t.OrderSummary)  # type: ignore[no-any-return]

    @strawberry.field(description="How many orders match the filter (operators).")
    async def order_count(
        self,
        info: Info,
        filter: OrderFilterInput | None = None,  # type: ignore[valid-type]
        consistent_with: ConsistentWith = None,
    ) -> int:
        """A count."""
        require_operator(info)
        return await ask(info, build(info, q.CountOrders, filter=_filter(filter)), consistent_with)

    @strawberry.field(description="Counts and totals by status and currency (operators).")
    async def order_statistics(
        self,
        info: Info,
        filter: OrderFilterInput | None = None,  # type: ignore[valid-type]
        consistent_with: ConsistentWith = None,
    ) -> t.OrderStatistics:
        """Statistics of the matching orders."""
        require_operator(info)
        stats = await ask(info, build(info, q.OrderStatisticsQuery, filter=_filter(filter)), consistent_with)
        return t.OrderStatistics.from_pydantic(stats)

    @strawberry.field(description="Revenue by period and currency, oldest first (operators).")
    async def revenue_report(
        self,
        info: Info,
        from_day: dt.date,
        to_day: dt.date,
        granularity: Granularity = Granularity.DAY,
        currency: str | None = None,
        consistent_with: ConsistentWith = None,
    ) -> list[t.RevenuePeriod]:
        """A revenue report."""
        require_operator(info)
        query = build(
            info, q.RevenueReport, from_day=from_day, to_day=to_day, granularity=granularity.value,
            currency=currency,
        )  # fmt: skip
        return [t.RevenuePeriod.from_pydantic(r) for r in await ask(info, query, consistent_with)]

    @strawberry.field(description="One product of the catalogue.")
    async def product(self, info: Info, id: UUID, consistent_with: ConsistentWith = None) -> t.Product | None:
        """One product."""
        require_login(info)
        found = await ask(info, build(info, q.ProductById, product_id=id), consistent_with)
        return None if found is None else t.Product.from_pydantic(found)

    @strawberry.field(description="The catalogue by SKU: search, category, low stock.")
    async def products(
        self,
        info: Info,
        search: str | None = None,
        category: str | None = None,
        low_stock_below: int | None = None,
        include_discontinued: bool = False,
        first: int = 50,
        after: str | None = None,
        consistent_with: ConsistentWith = None,
    ) -> t.Connection[t.Product]:
        """One page of the catalogue."""
        require_login(info)
        query = build(
            info, q.ProductCatalogue, search=search, category=category, low_stock_below=low_stock_below,
            include_discontinued=include_discontinued, first=first, after=after,
        )  # fmt: skip
        return t.connection(await ask(info, query, consistent_with), t.Product)  # type: ignore[no-any-return]

    @strawberry.field(description="One account and its balance; a customer may only read their own.")
    async def account(self, info: Info, id: UUID, consistent_with: ConsistentWith = None) -> t.Account | None:
        """One account."""
        require_login(info)
        found = await ask(info, build(info, q.AccountBalance, account_id=id), consistent_with)
        if found is None:
            return None
        require_customer_access(info, found.owner_id, f"account {id}")
        return t.Account.from_pydantic(found)

    @strawberry.field(description="Every account of an owner (customers: their own; the default).")
    async def accounts(
        self, info: Info, owner_id: UUID | None = None, consistent_with: ConsistentWith = None
    ) -> list[t.Account]:
        """An owner's accounts."""
        owner = own_customer(info, owner_id, "ownerId")
        found = await ask(info, build(info, q.AccountsOfOwner, owner_id=owner), consistent_with)
        return [t.Account.from_pydantic(a) for a in found]

    @strawberry.field(description="An account's movements, newest first, with the balance after each.")
    async def account_statement(
        self,
        info: Info,
        account_id: UUID,
        from_time: dt.datetime | None = None,
        to_time: dt.datetime | None = None,
        first: int = 50,
        after: str | None = None,
        consistent_with: ConsistentWith = None,
    ) -> t.Connection[t.StatementLine]:
        """One page of a statement."""
        require_login(info)
        if not info.context.principal.is_operator:
            # The statement does not name the owner: the account's balance row does.
            account = await ask(info, build(info, q.AccountBalance, account_id=account_id), consistent_with)
            if account is None:
                raise ApiError(f"account {account_id} is unknown", "NOT_FOUND")
            require_customer_access(info, account.owner_id, f"account {account_id}")
        query = build(
            info, q.AccountStatement, account_id=account_id, from_time=from_time, to_time=to_time,
            first=first, after=after,
        )  # fmt: skip
        return t.connection(await ask(info, query, consistent_with), t.StatementLine)  # type: ignore[no-any-return]

    @strawberry.field(description="The process-manager instances with this id, one per process (operators).")
    async def process_instances(
        self, info: Info, id: UUID, process: str | None = None, consistent_with: ConsistentWith = None
    ) -> list[t.ProcessInstance]:
        """A process instance's status (an order's fulfilment: the order id; a transfer: its id)."""
        require_operator(info)
        found = await ask(
            info, build(info, q.ProcessStatus, instance_id=id, process=process), consistent_with
        )
        return [t.ProcessInstance.from_pydantic(i) for i in found]

    @strawberry.field(description="Process-manager instances, newest started first (operators).")
    async def processes(
        self,
        info: Info,
        process: str | None = None,
        statuses: list[q.ProcessState] | None = None,
        first: int = 20,
        after: str | None = None,
        consistent_with: ConsistentWith = None,
    ) -> t.Connection[t.ProcessInstance]:
        """One page of process instances of a process and some statuses."""
        require_operator(info)
        query = build(
            info, q.SearchProcesses, process=process, statuses=tuple(statuses) if statuses else None,
            first=first, after=after,
        )  # fmt: skip
        return t.connection(await ask(info, query, consistent_with), t.ProcessInstance)  # type: ignore[no-any-return]


__all__ = ["Granularity", "OrderFilterInput", "Query", "ask", "build"]
