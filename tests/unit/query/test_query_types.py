"""Pure parts of the query side: order numbers, cursors, query identity (the cache key), errors."""

from __future__ import annotations

from decimal import Decimal
from uuid import UUID

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from esflow.query.base import BadCursor, Page, decode_cursor, encode_cursor
from esflow.query.bus import ConsistencyTimeout
from esflow.query.numbers import BadOrderNumber, order_id_range, order_number, parse_order_number
from esflow.query.queries import (
    CountOrders,
    OrderByNumber,
    OrderFilter,
    OrderStatus,
    OrderSummary,
    RevenueReport,
    SearchOrders,
)


@given(st.uuids())
def test_an_order_number_turns_back_into_a_range_holding_its_order(order_id: UUID) -> None:
    number = order_number(order_id)
    assert len(number) == 14 and number.count("-") == 2
    lo, hi = order_id_range(number)
    assert lo <= order_id <= hi
    assert order_number(lo) == order_number(hi) == number
    assert order_id_range(number.lower().replace("-", "")) == (lo, hi)


@given(st.uuids(), st.uuids())
def test_different_numbers_have_disjoint_ranges(a: UUID, b: UUID) -> None:
    if order_number(a) != order_number(b):
        (alo, ahi), (blo, bhi) = order_id_range(order_number(a)), order_id_range(order_number(b))
        assert ahi < blo or bhi < alo


def test_crockford_spellings_are_read_and_nonsense_refused() -> None:
    assert parse_order_number("O0II-LL00-0000") == parse_order_number("0011-1100-0000")
    for bad in ("", "7K2M-9QXD-4HT", "7K2M-9QXD-4HTAA", "7K2M-9QXD-4HTU", "7K2M 9QXD 4HTA!"):
        with pytest.raises(BadOrderNumber):
            parse_order_number(bad)
    with pytest.raises(ValidationError, match="not an order number"):
        OrderByNumber(number="hello")


@given(st.lists(st.one_of(st.integers(-(2**63), 2**63 - 1), st.text(max_size=20)), min_size=1, max_size=3))
def test_a_cursor_holds_its_values(values: list[object]) -> None:
    cursor = encode_cursor(*values)
    assert decode_cursor(cursor, len(values)) == values
    with pytest.raises(BadCursor):
        decode_cursor(cursor, len(values) + 1)


def test_a_forged_cursor_is_refused() -> None:
    for text in ("!!!", "bm90IGpzb24", encode_cursor("a")[:-2] + "~~"):
        with pytest.raises(BadCursor):
            decode_cursor(text, 1)


def test_equal_queries_are_one_cache_key() -> None:
    a = SearchOrders(filter=OrderFilter(statuses=(OrderStatus.PAID, OrderStatus.PLACED)), first=10)
    b = SearchOrders(
        filter=OrderFilter(statuses=(OrderStatus.PLACED, OrderStatus.PAID, OrderStatus.PAID)), first=10
    )
    assert a == b and hash(a) == hash(b)
    assert OrderByNumber(number="7k2m9qxd4hta") == OrderByNumber(number="7K2M-9QXD-4HTA")
    assert {CountOrders(), CountOrders()} == {CountOrders()}
    assert CountOrders() != SearchOrders()  # type: ignore[comparison-overlap]
    with pytest.raises(ValidationError):
        CountOrders(filter=OrderFilter(min_total=Decimal(5), max_total=Decimal(1)))
    with pytest.raises(ValidationError):
        SearchOrders(first=0)
    with pytest.raises(ValidationError):
        RevenueReport(from_day="2026-02-01", to_day="2026-01-01")


def test_a_cached_page_cannot_be_changed_by_one_caller() -> None:
    page = Page[OrderSummary](items=(), next_cursor=None)
    with pytest.raises(ValidationError):
        page.next_cursor = "x"  # type: ignore[misc]
    assert isinstance(page.items, tuple)


def test_a_consistency_timeout_says_which_projection_and_how_far_behind() -> None:
    err = ConsistencyTimeout(
        "OrderById", "orders", [("events.order", 2, 120, 100), ("events.order", 0, 10, None)], 5.04
    )
    text = str(err)
    assert err.projection == "orders" and err.behind == 20 + 11
    assert "OrderById: projection orders is 31 offset(s) behind the consistency token after 5.0s" in text
    assert "events.order[2] is at offset 100, the token needs 120; 1 more partition(s) behind" in text
    assert "esflow projector run orders" in (err.hint or "")
