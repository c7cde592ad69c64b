"""The queries of the reference domain and the shapes of their answers.

Every query reads the live version of the read models named in its ``reads`` (the same data the
``bi`` views show, docs/bi.md). Amounts are exact decimals in the currency named beside them; times
are event times (UTC). Authorisation is not here: the API decides who may ask what, and the queries
carry the filters it needs (``customer_id``, ``owner_id``).
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import AfterValidator, AwareDatetime, Field, field_validator, model_validator

from esflow.domain.process.registry import PROCESS_NAMES
from esflow.domain.values import Frozen
from esflow.query.base import MAX_PAGE_SIZE, Page, Query
from esflow.query.numbers import normalise_order_number

PageSize = Annotated[int, Field(ge=1, le=MAX_PAGE_SIZE)]
Cursor = Annotated[str, Field(min_length=1, max_length=512)]
SearchText = Annotated[str, Field(min_length=1, max_length=100)]
Currency = Annotated[str, Field(pattern=r"^[A-Z]{3}$")]


class OrderStatus(StrEnum):
    """Life-cycle stage of an order, as the ``orders`` read model records it."""

    PLACED = "PLACED"
    CONFIRMED = "CONFIRMED"
    PAID = "PAID"
    SHIPPED = "SHIPPED"
    DELIVERED = "DELIVERED"
    CANCELLED = "CANCELLED"


# ------------------------------------------------------------------------------------------- answers


class OrderLine(Frozen):
    """One current line of an order."""

    product_id: UUID
    sku: str
    quantity: int
    unit_price: Decimal
    currency: str


class OrderSummary(Frozen):
    """An order in a list: who, what stage, how much, when."""

    order_id: UUID
    number: str
    """Human-readable order number (:mod:`esflow.query.numbers`)."""
    customer_id: UUID
    status: OrderStatus
    sales_channel: str
    currency: str | None
    item_count: int
    items_total: Decimal
    placed_at: datetime
    updated_at: datetime
    version: int
    """The order's aggregate version after the last event applied (what a command's expected version is)."""


class OrderDetails(OrderSummary):
    """One order with its lines, payment, shipment and the time of every stage."""

    lines: tuple[OrderLine, ...]
    paid_amount: Decimal
    refunded_amount: Decimal
    shipping_city: str | None
    shipping_country: str | None
    payment_ref: str | None
    carrier: str | None
    tracking_number: str | None
    cancel_reason: str | None
    confirmed_at: datetime | None
    paid_at: datetime | None
    shipped_at: datetime | None
    delivered_at: datetime | None
    cancelled_at: datetime | None
    last_refunded_at: datetime | None


class StatusTotals(Frozen):
    """Orders of one status and currency: how many and their totals."""

    status: OrderStatus
    currency: str | None
    orders: int
    items_total: Decimal
    paid_amount: Decimal
    refunded_amount: Decimal


class OrderStatistics(Frozen):
    """Counts and totals by status (and currency: amounts are never added across currencies)."""

    orders: int
    by_status: tuple[StatusTotals, ...]


class RevenuePeriod(Frozen):
    """Revenue of one period (day, ISO week starting Monday, or month) in one currency."""

    period_start: date
    currency: str
    gross: Decimal
    refunds: Decimal
    net: Decimal
    orders: int
    refund_count: int


class Product(Frozen):
    """A product of the catalogue with its stock."""

    product_id: UUID
    sku: str
    name: str
    category: str
    price: Decimal
    currency: str
    on_hand: int
    reserved: int
    available: int
    discontinued: bool
    updated_at: datetime
    version: int


class Account(Frozen):
    """An account and its balance."""

    account_id: UUID
    owner_id: UUID
    currency: str
    balance: Decimal
    deposits_total: Decimal
    withdrawals_total: Decimal
    status: str
    opened_at: datetime
    closed_at: datetime | None
    last_activity_at: datetime
    version: int


class Movement(StrEnum):
    """Kind of a statement line."""

    DEPOSIT = "DEPOSIT"
    WITHDRAWAL = "WITHDRAWAL"


class StatementLine(Frozen):
    """One movement of money on an account, with the balance right after it."""

    event_id: UUID
    version: int
    """The account's aggregate version of the movement (1 is the opening, so lines start at 2)."""
    occurred_at: datetime
    movement: Movement
    amount: Decimal
    """Always positive; ``movement`` says which way."""
    currency: str
    balance_after: Decimal
    reference: str | None


class ProcessState(StrEnum):
    """Where a process-manager instance is (:data:`esflow.domain.process.base.Status`)."""

    RUNNING = "running"
    COMPLETED = "completed"
    COMPENSATING = "compensating"
    COMPENSATED = "compensated"
    FAILED = "failed"


class ProcessInstance(Frozen):
    """One process-manager instance (saga): its status, step, deadline and re-sends."""

    process: str
    """The process's name (order_fulfilment, funds_transfer)."""
    instance_id: UUID
    """The id of the aggregate it is about (the order id, the transfer id)."""
    status: ProcessState
    step: str
    reason: str | None
    """Why it compensated or failed."""
    started_at: datetime
    updated_at: datetime
    ended_at: datetime | None
    deadline: datetime | None
    """The earliest timer it waits for."""
    deadline_name: str | None
    pending_commands: int
    attempts: int
    """Re-sends so far (retries and answer timeouts)."""
    inputs: int


def _known_process(value: str) -> str:
    if value not in PROCESS_NAMES:
        raise ValueError(f"unknown process {value!r}; the processes are: {', '.join(PROCESS_NAMES)}")
    return value


ProcessName = Annotated[str, AfterValidator(_known_process)]


# ------------------------------------------------------------------------------------------- filters


class OrderFilter(Frozen):
    """Which orders: every condition given must hold (none given: every order)."""

    statuses: tuple[OrderStatus, ...] = ()
    customer_id: UUID | None = None
    placed_from: AwareDatetime | None = None
    """Inclusive."""
    placed_to: AwareDatetime | None = None
    """Exclusive."""
    min_total: Decimal | None = None
    """Inclusive, on ``items_total`` (in each order's own currency)."""
    max_total: Decimal | None = None
    """Inclusive."""
    currency: Currency | None = None
    search: SearchText | None = None
    """Matched against the order number, city, payment reference, carrier and tracking number."""

    @field_validator("statuses")
    @classmethod
    def _sorted(cls, value: tuple[OrderStatus, ...]) -> tuple[OrderStatus, ...]:
        # The same set of statuses in another order is the same query (and the same cache entry).
        return tuple(sorted(set(value)))

    @model_validator(mode="after")
    def _ranges(self) -> OrderFilter:
        if self.placed_from and self.placed_to and self.placed_from >= self.placed_to:
            raise ValueError("placed_from must be before placed_to")
        if self.min_total is not None and self.max_total is not None and self.min_total > self.max_total:
            raise ValueError("min_total must not exceed max_total")
        return self


# ------------------------------------------------------------------------------------------- queries


class OrderById(Query[OrderDetails | None]):
    """One order (None when the orders read model does not have it)."""

    reads = ("orders",)
    result = OrderDetails | None
    order_id: UUID


class OrderByNumber(Query[OrderDetails | None]):
    """One order by its human-readable number (None when none has it).

    Raises ``AmbiguousOrderNumber`` (from the handler) if two orders share the number, which random
    order ids make very unlikely (:mod:`esflow.query.numbers`).
    """

    reads = ("orders",)
    result = OrderDetails | None
    number: str

    @field_validator("number")
    @classmethod
    def _canonical(cls, value: str) -> str:
        # One spelling per number: 7k2m9qxd4hta and 7K2M-9QXD-4HTA are one query, one cache entry.
        return normalise_order_number(value)


class OrdersOfCustomer(Query[Page[OrderSummary]]):
    """A customer's orders, newest first (by placed_at, then order id), one keyset page at a time."""

    reads = ("orders",)
    result = Page[OrderSummary]
    customer_id: UUID
    first: PageSize = 20
    after: Cursor | None = None


class SearchOrders(Query[Page[OrderSummary]]):
    """Every order matching ``filter``, newest first, one keyset page at a time."""

    reads = ("orders",)
    result = Page[OrderSummary]
    filter: OrderFilter = OrderFilter()
    first: PageSize = 20
    after: Cursor | None = None


class CountOrders(Query[int]):
    """How many orders match ``filter``."""

    reads = ("orders",)
    result = int
    filter: OrderFilter = OrderFilter()


class OrderStatisticsQuery(Query[OrderStatistics]):
    """Counts and totals of the orders matching ``filter``, by status and currency."""

    reads = ("orders",)
    result = OrderStatistics
    filter: OrderFilter = OrderFilter()


class RevenueReport(Query[tuple[RevenuePeriod, ...]]):
    """Revenue by day, ISO week or month and currency between two days (inclusive), oldest first."""

    reads = ("daily_revenue",)
    result = tuple[RevenuePeriod, ...]
    granularity: Literal["day", "week", "month"] = "day"
    from_day: date
    to_day: date
    currency: Currency | None = None

    @model_validator(mode="after")
    def _range(self) -> RevenueReport:
        if self.from_day > self.to_day:
            raise ValueError("from_day must not be after to_day")
        if (self.to_day - self.from_day).days > 3660:
            raise ValueError("a revenue report covers at most ten years")
        return self


class ProductById(Query[Product | None]):
    """One product of the catalogue (None when unknown)."""

    reads = ("product_catalog",)
    result = Product | None
    product_id: UUID


class ProductCatalogue(Query[Page[Product]]):
    """The catalogue by SKU, one keyset page at a time.

    ``search`` matches SKU, name or category (case-insensitive substring); ``low_stock_below`` keeps the
    products with fewer than that many units available; discontinued products only on request.
    """

    reads = ("product_catalog",)
    result = Page[Product]
    search: SearchText | None = None
    category: SearchText | None = None
    low_stock_below: Annotated[int, Field(ge=1)] | None = None
    include_discontinued: bool = False
    first: PageSize = 50
    after: Cursor | None = None


class AccountBalance(Query[Account | None]):
    """One account with its balance (None when unknown)."""

    reads = ("account_balances",)
    result = Account | None
    account_id: UUID


class AccountsOfOwner(Query[tuple[Account, ...]]):
    """Every account of one owner, oldest first."""

    reads = ("account_balances",)
    result = tuple[Account, ...]
    owner_id: UUID


class AccountStatement(Query[Page[StatementLine]]):
    """An account's deposits and withdrawals, newest first, each with the balance after it.

    Read from the ``event_log`` read model (one row per event, with its payload), which already has
    one row per movement: no extra read model is needed. ``from_time`` inclusive, ``to_time`` exclusive.
    """

    reads = ("event_log",)
    result = Page[StatementLine]
    account_id: UUID
    from_time: AwareDatetime | None = None
    to_time: AwareDatetime | None = None
    first: PageSize = 50
    after: Cursor | None = None


class ProcessStatus(Query[tuple[ProcessInstance, ...]]):
    """The process instances with this id (of ``process`` only, when given): at most one per process."""

    reads = ("process_instances",)
    result = tuple[ProcessInstance, ...]
    instance_id: UUID
    process: ProcessName | None = None


class SearchProcesses(Query[Page[ProcessInstance]]):
    """Process instances, newest started first, of one process and of some statuses when given."""

    reads = ("process_instances",)
    result = Page[ProcessInstance]
    process: ProcessName | None = None
    statuses: tuple[ProcessState, ...] = ()
    first: PageSize = 20
    after: Cursor | None = None

    @field_validator("statuses")
    @classmethod
    def _sorted(cls, value: tuple[ProcessState, ...]) -> tuple[ProcessState, ...]:
        # One query, one cache entry, whatever the order the statuses were named in.
        return tuple(sorted(set(value)))


QUERIES: tuple[type[Query[Any]], ...] = (
    OrderById,
    OrderByNumber,
    OrdersOfCustomer,
    SearchOrders,
    CountOrders,
    OrderStatisticsQuery,
    RevenueReport,
    ProductById,
    ProductCatalogue,
    AccountBalance,
    AccountsOfOwner,
    AccountStatement,
    ProcessStatus,
    SearchProcesses,
)
"""Every query type of the reference domain (the API registers one handler for each)."""
