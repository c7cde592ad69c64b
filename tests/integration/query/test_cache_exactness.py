"""Issue 14 acceptance: under concurrent writes, a cached ask never answers older than what it could see.

One writer applies batches to the read models through the real applier, one transaction per batch and
projection. Right after each batch (and before the next: it is the only writer) it records the truth,
the answers of an *uncached* bus, so ``truth[i]`` is exactly the data after batch ``i``. Meanwhile
readers ask a cached bus again and again, each noting ``seen``, the number of batches committed when
the ask began. The property: every cached answer equals ``truth[j]`` for some ``j >= seen``, i.e. it is
the data of a state at least as new as the one the asker could already see. Hypothesis varies the
batch sizes, the number of readers and the mix of queries.

The check is shown able to fail: the same scenario against a bus whose cache ignores the checkpoints
(a TTL-only cache, the usual design) is caught serving stale answers.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping
from datetime import date
from typing import Any
from uuid import UUID

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from api.queries import HANDLERS
from esflow.query.base import Query
from esflow.query.bus import Key, QueryBus
from esflow.query.queries import (
    CountOrders,
    OrderFilter,
    OrdersOfCustomer,
    OrderStatisticsQuery,
    OrderStatus,
    ProductCatalogue,
    RevenueReport,
    SearchOrders,
)
from tests.integration.query.conftest import ReadModels

pytestmark = pytest.mark.integration


def queries(customer: UUID) -> list[Query[Any]]:
    """Queries whose answers change with most batches (so a stale answer is visible as one)."""
    return [
        CountOrders(),
        CountOrders(filter=OrderFilter(statuses=(OrderStatus.PAID,))),
        OrderStatisticsQuery(),
        SearchOrders(first=5),
        OrdersOfCustomer(customer_id=customer, first=3),
        ProductCatalogue(first=5, low_stock_below=20),
        RevenueReport(from_day=date(2020, 1, 1), to_day=date(2030, 1, 1), granularity="month"),
    ]


class TtlOnlyBus(QueryBus):
    """The usual cache: keyed by the query alone, expiring after a TTL. Used to show the check bites."""

    @staticmethod
    def _key_of(query: Query[Any], state: Mapping[str, Any]) -> Key:
        return ()


Record = tuple[Query[Any], int, Any]


async def scenario(
    models: ReadModels, cached: QueryBus, batches: list[int], readers: int, mix: list[Query[Any]], seed: int
) -> tuple[list[dict[Query[Any], Any]], list[Record]]:
    """Run one writer and ``readers`` readers together; the truth per state and what the readers got."""
    uncached = models.bus(cache_size=0)
    truth: list[dict[Query[Any], Any]] = [{q: await uncached.ask(q) for q in mix}]
    committed = 0
    done = False
    got: list[Record] = []

    async def writer() -> None:
        nonlocal committed, done
        try:
            for size in batches:
                await asyncio.to_thread(models.feed_generated, size)
                committed += 1
                truth.append({q: await uncached.ask(q) for q in mix})
                await asyncio.sleep(0.02)  # let the readers fill the cache at this state
        finally:
            done = True

    async def reader(n: int) -> None:
        rng = random.Random(seed * 100 + n)
        while not done:
            q = rng.choice(mix)
            seen = committed
            got.append((q, seen, await cached.ask(q, timeout_s=30)))
        for q in mix:  # once the writes have stopped, every answer is the last state's
            got.append((q, committed, await cached.ask(q, timeout_s=30)))

    try:
        await asyncio.gather(writer(), *(reader(n) for n in range(readers)))
    finally:
        await uncached.close()
    return truth, got


def stale(truth: list[dict[Query[Any], Any]], got: list[Record]) -> list[str]:
    """The answers that match no state at or after the one their asker could see."""
    bad = []
    for q, seen, answer in got:
        if not any(state[q] == answer for state in truth[seen:]):
            older = [i for i, state in enumerate(truth[:seen]) if state[q] == answer]
            bad.append(f"{type(q).type_name()} asked after batch {seen} got the answer of batch(es) {older}")
    return bad


def hits() -> float:
    return sum(
        s.value
        for metric in REGISTRY.collect()
        if metric.name == "esflow_query_asks"
        for s in metric.samples
        if s.name == "esflow_query_asks_total" and s.labels.get("outcome") == "hit"
    )


@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    batches=st.lists(st.integers(min_value=1, max_value=40), min_size=2, max_size=6),
    readers=st.integers(min_value=1, max_value=6),
    picks=st.sets(st.integers(min_value=0, max_value=6), min_size=1),
    seed=st.integers(min_value=0, max_value=1000),
)
def test_a_cached_ask_is_never_older_than_what_its_asker_could_see(
    primed: ReadModels, batches: list[int], readers: int, picks: set[int], seed: int
) -> None:
    mix = [queries(primed.workload.customers[0])[i] for i in sorted(picks)]
    before = hits()

    async def main() -> tuple[list[dict[Query[Any], Any]], list[Record]]:
        cached = primed.bus()
        try:
            return await scenario(primed, cached, batches, readers, mix, seed)
        finally:
            await cached.close()

    truth, got = asyncio.run(main())
    assert not stale(truth, got), stale(truth, got)[:5]
    assert len(got) >= len(mix) * readers
    # The cache was used (the property is about cached answers, not a bus that always misses).
    assert hits() > before


@pytest.fixture
def primed(read_models: ReadModels) -> ReadModels:
    read_models.feed_generated(300)
    return read_models


def test_the_check_catches_a_cache_keyed_by_the_query_alone(primed: ReadModels) -> None:
    mix = queries(primed.workload.customers[0])

    async def main() -> tuple[list[dict[Query[Any], Any]], list[Record]]:
        cached = TtlOnlyBus.connect(HANDLERS, primed.settings, ttl_s=60.0)
        try:
            return await scenario(primed, cached, [30] * 4, 3, mix, seed=1)
        finally:
            await cached.close()

    truth, got = asyncio.run(main())
    assert truth[0] != truth[-1]
    assert stale(truth, got), "a query-keyed cache served only fresh answers: the check cannot fail"
