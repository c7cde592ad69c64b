"""The query bus against real Postgres: exact cache, single flight, ask_many, consistency waits, errors."""

from __future__ import annotations

import asyncio
import threading
from typing import Any
from uuid import uuid4

import pytest
from prometheus_client import REGISTRY

from api.queries import HANDLERS
from esflow.query.base import Query
from esflow.query.bus import ConsistencyTimeout, QueryBus, UnknownQuery
from esflow.query.consistency import ConsistencyToken
from esflow.query.queries import CountOrders, OrderById, OrderStatisticsQuery, ProductCatalogue, SearchOrders
from tests.integration.query.conftest import ReadModels

pytestmark = pytest.mark.integration


def asks(query: str, outcome: str) -> float:
    return REGISTRY.get_sample_value("esflow_query_asks_total", {"query": query, "outcome": outcome}) or 0.0


def test_a_cached_answer_is_served_until_the_checkpoint_moves(read_models: ReadModels) -> None:
    read_models.feed_generated(200)

    async def main() -> None:
        bus = read_models.bus()
        try:
            hits, misses = asks("CountOrders", "hit"), asks("CountOrders", "miss")
            first = await bus.ask(CountOrders())
            again = await bus.ask(CountOrders())
            assert first == again > 0
            assert (asks("CountOrders", "hit") - hits, asks("CountOrders", "miss") - misses) == (1, 1)
            await asyncio.to_thread(read_models.feed_generated, 200)
            after = await bus.ask(CountOrders())
            assert after > first
            assert asks("CountOrders", "miss") - misses == 2
            # A write to a projection the query does not read leaves its entry alone: the key is only
            # the checkpoints of query.reads (products move product_catalog, not orders).
            products = await bus.ask(ProductCatalogue(first=5))
            assert products == await bus.ask(ProductCatalogue(first=5))
            assert asks("ProductCatalogue", "hit") >= 1
        finally:
            await bus.close()

    asyncio.run(main())


def test_the_ttl_is_an_upper_bound(read_models: ReadModels) -> None:
    read_models.feed_generated(100)

    async def main() -> None:
        bus = QueryBus.connect(
            HANDLERS, read_models.settings, ttl_s=0.0, pool_size=2
        )  # every entry expires at once
        try:
            misses = asks("OrderStatisticsQuery", "miss")
            await bus.ask(OrderStatisticsQuery())
            await bus.ask(OrderStatisticsQuery())
            assert asks("OrderStatisticsQuery", "miss") - misses == 2
        finally:
            await bus.close()

    asyncio.run(main())


def test_identical_concurrent_asks_run_once(read_models: ReadModels) -> None:
    read_models.feed_generated(200)
    runs = 0

    async def main() -> None:
        nonlocal runs
        bus = read_models.bus()
        inner = bus.handlers[SearchOrders]

        async def slow(conn: Any, query: SearchOrders) -> Any:
            nonlocal runs
            runs += 1
            await asyncio.sleep(0.3)  # holds the flight open while the others arrive
            return await inner(conn, query)

        bus.handlers[SearchOrders] = slow
        try:
            answers = await asyncio.gather(*(bus.ask(SearchOrders(first=10)) for _ in range(20)))
            assert runs == 1
            assert all(a == answers[0] for a in answers) and len(answers[0].items) == 10
            other = await bus.ask(SearchOrders(first=11))
            assert runs == 2 and other.items[:10] == answers[0].items
        finally:
            await bus.close()

    asyncio.run(main())


def test_ask_many_answers_in_order_from_one_snapshot(read_models: ReadModels) -> None:
    read_models.feed_generated(300)

    async def main() -> None:
        bus = read_models.bus()
        try:
            queries: list[Query[Any]] = [
                CountOrders(),
                SearchOrders(first=500),
                OrderStatisticsQuery(),
                CountOrders(),
            ]
            count, page, stats, count_again = await bus.ask_many(queries)
            assert count == count_again == len(page.items) == stats.orders
            assert [count, page, stats, count_again] == [await bus.ask(q) for q in queries]
        finally:
            await bus.close()

    asyncio.run(main())


def test_consistent_with_waits_for_the_write(read_models: ReadModels) -> None:
    read_models.feed_generated(100)
    later = read_models.workload.events(60)
    placed = next(e for e in later if e.event.type_name() == "OrderPlaced")
    # The token the write will have: frame a copy of the offsets without applying anything yet.
    saved = dict(read_models.offsets)
    raws = read_models.frame(later)
    read_models.offsets = saved
    token = ConsistencyToken(tuple(sorted({(r.topic, r.partition, r.offset) for r in raws})))

    async def main() -> None:
        bus = read_models.bus()
        try:
            assert await bus.ask(OrderById(order_id=placed.metadata.aggregate_id)) is None  # cached: None
            timer = threading.Timer(0.5, read_models.feed, [later])
            timer.start()
            try:
                order = await bus.ask(
                    OrderById(order_id=placed.metadata.aggregate_id), consistent_with=token, timeout_s=30
                )
            finally:
                timer.join()
            assert order is not None and order.order_id == placed.metadata.aggregate_id
        finally:
            await bus.close()

    asyncio.run(main())


def test_consistency_timeout_names_the_projection_and_how_far_behind(read_models: ReadModels) -> None:
    token = read_models.feed_generated(50)
    topic, partition, offset = next(p for p in token.positions if p[0].endswith("events.order"))
    ahead = ConsistencyToken(((topic, partition, offset + 7),))

    async def main() -> None:
        bus = read_models.bus()
        try:
            with pytest.raises(ConsistencyTimeout) as caught:
                await bus.ask(CountOrders(), consistent_with=ahead, timeout_s=0.3)
            message = str(caught.value)
            assert "projection orders" in message and "7 offset(s) behind" in message, message
            assert f"{topic}[{partition}] is at offset {offset}, the token needs {offset + 7}" in message
            assert caught.value.projection == "orders" and caught.value.behind == 7
            # A token of a topic the projection does not read is passed at once.
            other = ConsistencyToken((("elsewhere.events.nothing", 0, 10**9),))
            assert await bus.ask(CountOrders(), consistent_with=other) >= 0
        finally:
            await bus.close()

    asyncio.run(main())


def test_an_unknown_query_type_is_refused(read_models: ReadModels) -> None:
    class Nobody(Query[int]):
        reads = ("orders",)
        order_id: str = str(uuid4())

    async def main() -> None:
        bus = read_models.bus()
        try:
            with pytest.raises(UnknownQuery, match="no handler for Nobody"):
                await bus.ask(Nobody())
        finally:
            await bus.close()

    asyncio.run(main())
