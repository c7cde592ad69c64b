"""Every query handler against real Postgres, checked against the read models' rows filtered in Python.

The read models are filled by the real applier from generated order, product and account lives; each
test reads the ``bi`` view rows with plain SQL and works out the expected answer independently of the
handler (filters, keyset pages, groupings), then asks the bus.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Awaitable
from datetime import date, timedelta
from decimal import Decimal
from typing import Any, TypeVar
from uuid import UUID, uuid4

import pytest
import sqlalchemy as sa

from esflow.domain.account import FundsDeposited, FundsWithdrawn
from esflow.query.base import BadCursor, Page, Query, encode_cursor
from esflow.query.numbers import order_number
from esflow.query.queries import (
    AccountBalance,
    AccountsOfOwner,
    AccountStatement,
    CountOrders,
    OrderById,
    OrderByNumber,
    OrderFilter,
    OrdersOfCustomer,
    OrderStatisticsQuery,
    OrderStatus,
    ProcessState,
    ProcessStatus,
    ProductById,
    ProductCatalogue,
    RevenueReport,
    SearchOrders,
    SearchProcesses,
)
from tests.integration.query.conftest import ReadModels
from tests.support.instances import instance_records

pytestmark = pytest.mark.integration

T = TypeVar("T")


def run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await coro

    return asyncio.run(main())


def rows(models: ReadModels, view: str) -> list[dict[str, Any]]:
    with models.base.connect() as conn:
        table = sa.table(view, schema=models.layout.bi)
        return [dict(r) for r in conn.execute(sa.select(sa.text("*")).select_from(table)).mappings()]


def ask_all(models: ReadModels, queries: list[Query[Any]]) -> list[Any]:
    async def main() -> list[Any]:
        bus = models.bus(cache_size=0)
        try:
            return [await bus.ask(q) for q in queries]
        finally:
            await bus.close()

    return asyncio.run(main())


def walk(models: ReadModels, make: Any, page_size: int) -> list[Any]:
    """Every item of a paged query, page by page (``make(first, after)`` builds the query)."""

    async def main() -> list[Any]:
        bus = models.bus(cache_size=0)
        items: list[Any] = []
        after = None
        try:
            for _ in range(1000):
                page: Page[Any] = await bus.ask(make(page_size, after))
                assert len(page.items) <= page_size
                items.extend(page.items)
                if page.next_cursor is None:
                    return items
                assert len(page.items) == page_size
                after = page.next_cursor
            raise AssertionError("pages never ended")
        finally:
            await bus.close()

    return asyncio.run(main())


@pytest.fixture
def filled(read_models: ReadModels) -> ReadModels:
    # Five batches eleven days apart: the data spans weeks and months, not one day.
    for _ in range(5):
        read_models.feed_generated(300)
        read_models.workload.clock += timedelta(days=11)
    return read_models


def newest_first(orders: list[dict[str, Any]]) -> list[UUID]:
    return [
        o["order_id"] for o in sorted(orders, key=lambda o: (o["placed_at"], o["order_id"]), reverse=True)
    ]


def test_order_by_id_and_by_number(filled: ReadModels) -> None:
    orders = rows(filled, "orders")
    assert len(orders) > 50
    some = max(orders, key=lambda o: len(o["lines"]))
    number = order_number(some["order_id"])
    by_id, by_number, by_lower, unknown, unknown_number = ask_all(
        filled,
        [
            OrderById(order_id=some["order_id"]),
            OrderByNumber(number=number),
            OrderByNumber(number=number.lower().replace("-", "")),
            OrderById(order_id=uuid4()),
            OrderByNumber(number=order_number(uuid4())),
        ],
    )
    assert by_id is not None and by_id == by_number == by_lower
    assert by_id.number == number
    for column in ("customer_id", "status", "items_total", "paid_amount", "placed_at", "version", "currency"):
        assert getattr(by_id, column) == some[column], column
    assert {str(line.product_id) for line in by_id.lines} == set(some["lines"])
    assert sum(line.unit_price * line.quantity for line in by_id.lines) == some["items_total"]
    assert unknown is None and unknown_number is None


def test_orders_of_customer_are_keyset_pages_newest_first(filled: ReadModels) -> None:
    orders = rows(filled, "orders")
    by_customer: dict[UUID, list[dict[str, Any]]] = defaultdict(list)
    for o in orders:
        by_customer[o["customer_id"]].append(o)
    customer, theirs = max(by_customer.items(), key=lambda kv: len(kv[1]))
    assert len(theirs) > 5
    got = walk(
        filled, lambda first, after: OrdersOfCustomer(customer_id=customer, first=first, after=after), 3
    )
    assert [o.order_id for o in got] == newest_first(theirs)
    assert all(o.customer_id == customer for o in got)
    with pytest.raises(BadCursor):
        ask_all(filled, [OrdersOfCustomer(customer_id=customer, after="bm90IGEgY3Vyc29y")])


FILTERS = [
    OrderFilter(),
    OrderFilter(statuses=(OrderStatus.PAID, OrderStatus.DELIVERED)),
    OrderFilter(min_total=Decimal("100.00"), max_total=Decimal("400.00"), currency="EUR"),
    OrderFilter(search="lyon"),
    OrderFilter(search="TN", statuses=(OrderStatus.SHIPPED,)),
]


def _matches(o: dict[str, Any], f: OrderFilter) -> bool:
    if f.statuses and o["status"] not in f.statuses:
        return False
    if f.placed_from and o["placed_at"] < f.placed_from:
        return False
    if f.placed_to and o["placed_at"] >= f.placed_to:
        return False
    if f.min_total is not None and o["items_total"] < f.min_total:
        return False
    if f.max_total is not None and o["items_total"] > f.max_total:
        return False
    if f.currency and o["currency"] != f.currency:
        return False
    if f.search:
        text = f.search.lower()
        fields = [o[c] for c in ("shipping_city", "payment_ref", "carrier", "tracking_number")]
        if not any(v and text in v.lower() for v in fields) and order_number(o["order_id"]) != f.search:
            return False
    return True


def test_search_and_count_apply_every_filter(filled: ReadModels) -> None:
    orders = rows(filled, "orders")
    times = sorted(o["placed_at"] for o in orders)
    ranged = OrderFilter(placed_from=times[len(times) // 4], placed_to=times[len(times) // 2])
    by_number = OrderFilter(search=order_number(orders[7]["order_id"]))
    for f in [*FILTERS, ranged, by_number]:
        expected = [o for o in orders if _matches(o, f)]
        assert expected, f"filter {f} selects nothing: a vacuous check"
        got = walk(filled, lambda first, after, f=f: SearchOrders(filter=f, first=first, after=after), 25)
        assert [o.order_id for o in got] == newest_first(expected), f
        (count,) = ask_all(filled, [CountOrders(filter=f)])
        assert count == len(expected), f
    assert len([o for o in orders if _matches(o, FILTERS[1])]) < len(orders)


def test_order_statistics_by_status_and_currency(filled: ReadModels) -> None:
    orders = rows(filled, "orders")
    f = OrderFilter(placed_to=sorted(o["placed_at"] for o in orders)[-10])
    (stats,) = ask_all(filled, [OrderStatisticsQuery(filter=f)])
    expected: dict[tuple[str, str], list[Any]] = defaultdict(lambda: [0, Decimal(0), Decimal(0), Decimal(0)])
    for o in orders:
        if _matches(o, f):
            e = expected[(o["status"], o["currency"])]
            e[0] += 1
            e[1] += o["items_total"]
            e[2] += o["paid_amount"]
            e[3] += o["refunded_amount"]
    got = {
        (t.status.value, t.currency): [t.orders, t.items_total, t.paid_amount, t.refunded_amount]
        for t in stats.by_status
    }
    assert got == dict(expected)
    assert stats.orders == sum(e[0] for e in expected.values()) == len(orders) - 10
    assert len({s for s, _ in got}) >= 4


@pytest.mark.parametrize("granularity", ["day", "week", "month"])
def test_revenue_report_by_period_and_currency(filled: ReadModels, granularity: str) -> None:
    days = rows(filled, "daily_revenue")
    first, last = min(d["day"] for d in days), max(d["day"] for d in days)
    start, end = first + timedelta(days=1), last
    assert start < end

    def period(day: date) -> date:
        if granularity == "week":
            return day - timedelta(days=day.weekday())
        if granularity == "month":
            return day.replace(day=1)
        return day

    expected: dict[tuple[date, str], list[Any]] = defaultdict(lambda: [Decimal(0), Decimal(0), 0])
    for d in days:
        if start <= d["day"] <= end:
            e = expected[(period(d["day"]), d["currency"])]
            e[0] += d["gross"]
            e[1] += d["refunds"]
            e[2] += d["orders"]
    (report, eur) = ask_all(
        filled,
        [
            RevenueReport(granularity=granularity, from_day=start, to_day=end),
            RevenueReport(granularity=granularity, from_day=start, to_day=end, currency="EUR"),
        ],
    )
    got = {(r.period_start, r.currency): [r.gross, r.refunds, r.orders] for r in report}
    assert got == dict(expected)
    assert all(r.net == r.gross - r.refunds for r in report)
    assert [(r.period_start, r.currency) for r in report] == sorted(got)
    assert [r for r in report if r.currency == "EUR"] == list(eur)


def test_product_catalogue_search_low_stock_and_pages(filled: ReadModels) -> None:
    products = rows(filled, "product_catalog")
    assert len(products) > 20

    def expected(search: str | None, below: int | None, discontinued: bool) -> list[UUID]:
        out = [
            p
            for p in products
            if (discontinued or not p["discontinued"])
            and (below is None or p["available"] < below)
            and (search is None or any(search.lower() in p[c].lower() for c in ("sku", "name", "category")))
        ]
        return [p["product_id"] for p in sorted(out, key=lambda p: (p["sku"], p["product_id"]))]

    sku_part = products[3]["sku"][4:9].lower()
    for search, below, discontinued in [
        (None, None, False),
        (None, None, True),
        (None, 10, False),
        (sku_part, None, True),
    ]:
        want = expected(search, below, discontinued)
        assert want, (search, below, discontinued)
        got = walk(
            filled,
            lambda first, after, s=search, b=below, d=discontinued: ProductCatalogue(
                search=s, low_stock_below=b, include_discontinued=d, first=first, after=after
            ),
            7,
        )
        assert [p.product_id for p in got] == want
    assert any(p["discontinued"] for p in products)
    one = products[0]
    (product,) = ask_all(filled, [ProductById(product_id=one["product_id"])])
    assert product is not None and product.available == one["on_hand"] - one["reserved"]


def test_account_balance_and_statement(filled: ReadModels) -> None:
    moves: dict[UUID, list[tuple[int, Decimal]]] = defaultdict(list)
    for env in filled.applied:
        e = env.event
        if isinstance(e, FundsDeposited | FundsWithdrawn):
            sign = 1 if isinstance(e, FundsDeposited) else -1
            moves[env.metadata.aggregate_id].append((env.metadata.aggregate_version, sign * e.amount.amount))
    account_id, history = max(moves.items(), key=lambda kv: len(kv[1]))
    assert len(history) >= 4
    balance, expected = Decimal(0), []
    for version, amount in sorted(history):
        balance += amount
        expected.append((version, abs(amount), balance))
    lines = walk(
        filled, lambda first, after: AccountStatement(account_id=account_id, first=first, after=after), 2
    )
    assert [(line.version, line.amount, line.balance_after) for line in lines] == expected[::-1]
    (account,) = ask_all(filled, [AccountBalance(account_id=account_id)])
    assert account is not None and account.balance == balance
    (owned,) = ask_all(filled, [AccountsOfOwner(owner_id=account.owner_id)])
    assert account in owned
    # A time window cuts the lines but not the balances (they run over the whole history).
    middle = lines[len(lines) // 2]
    (window,) = ask_all(filled, [AccountStatement(account_id=account_id, to_time=middle.occurred_at)])
    assert all(line.occurred_at < middle.occurred_at for line in window.items)
    assert [line.balance_after for line in window.items] == [
        line.balance_after for line in lines if line.occurred_at < middle.occurred_at
    ]


def test_process_status_and_the_instances_newest_first(read_models: ReadModels) -> None:
    records = instance_records(seed=5, instances=150)
    for i in range(0, len(records), 200):  # several batches: later records overwrite earlier rows
        read_models.feed_instances(records[i : i + 200])
    latest = {(r.process, r.instance_id): r for r in records}
    some = list(latest.values())[::7]

    found = ask_all(read_models, [ProcessStatus(instance_id=r.instance_id) for r in some])
    for record, answer in zip(some, found, strict=True):
        (instance,) = answer
        assert (instance.process, instance.instance_id) == (record.process, record.instance_id)
        assert (instance.status.value, instance.step, instance.reason) == (
            record.status,
            record.step,
            record.reason,
        )
        assert (instance.attempts, instance.inputs, instance.pending_commands) == (
            record.attempts, record.inputs, len(record.sends),
        )  # fmt: skip
        assert instance.deadline == (min(record.timers.values()) if record.timers else None)
    other = "funds_transfer" if some[0].process == "order_fulfilment" else "order_fulfilment"
    assert ask_all(read_models, [ProcessStatus(instance_id=some[0].instance_id, process=other)]) == [()]

    def order(r: Any) -> tuple[Any, ...]:
        return (r.started_at, r.process, r.instance_id)

    everything = walk(read_models, lambda first, after: SearchProcesses(first=first, after=after), 17)
    assert [order(i) for i in everything] == sorted((order(r) for r in latest.values()), reverse=True)
    wanted = (ProcessState.COMPENSATED, ProcessState.FAILED)
    ended = walk(
        read_models,
        lambda first, after: SearchProcesses(
            process="order_fulfilment", statuses=wanted, first=first, after=after
        ),
        5,
    )
    expected = [
        order(r)
        for r in latest.values()
        if r.process == "order_fulfilment" and r.status in ("compensated", "failed")
    ]
    assert expected and [order(i) for i in ended] == sorted(expected, reverse=True)
    with pytest.raises(BadCursor):
        ask_all(read_models, [SearchProcesses(after=encode_cursor("not a time", "x", "y"))])
