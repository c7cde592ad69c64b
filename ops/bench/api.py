"""Query-side throughput: order-by-id and orders-of-customer through the query bus, beside raw SQL.

Run against a running PostgreSQL (``esflow stack up``, or ESFLOW_DATABASE_URL):

    .venv/bin/python -m ops.bench.api [--events 30000] [--concurrency 16] [--seconds 4] [--rounds 3]

In a fresh installation (removed afterwards) the ``orders`` read model is filled by the real applier
from ``--events`` generated events. Then, for
each query, at the same concurrency (that many asyncio tasks, each asking in a loop), for the same
number of seconds, in alternating rounds of one process:

- ``raw SQL``: the statement the handler runs, as text with the same columns, executed with psycopg 3
  async on one connection per task (server-side prepared after five runs), rows as tuples;
- ``bus uncached``: :class:`QueryBus` without a cache (pool of that many connections): handler, SQL
  Core, rows into pydantic answers;
- ``bus cached``: the exact cache (checkpoint key read per group of asks, then a dict lookup);
- ``HTTP uncached`` / ``HTTP cached``: the same queries as GraphQL over HTTP through a running
  `esflow api run` (cache off / on), one keep-alive aiohttp session per task (:mod:`ops.bench.api_http`;
  ``--no-http`` skips them).

Then each mode runs once more at half its measured maximum rate, paced (latency counted from when
each ask was due), for the p99 target (<= 50 ms at half the maximum).

Every task picks its next order or customer at random from a hot set (``--hot``) of the read model, the
same set for all three. Reported: requests/s and p50/p99 latency per mode (median round by rate), the
cache's hit rate, key reads per ask, and the ratios the issue sets targets for (uncached >= 30% of raw
SQL; cached >= 2x uncached).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import psycopg
import sqlalchemy as sa
from prometheus_client import REGISTRY
from psycopg import sql

from api.queries import HANDLERS
from esflow.messaging.codec import Codec
from esflow.messaging.topics import event_topic
from esflow.query.bus import QueryBus
from esflow.query.queries import OrderById, OrdersOfCustomer
from esflow.readmodel import versions
from esflow.readmodel.applier import BatchApplier
from esflow.readmodel.projection import RawEvent
from esflow.readmodel.store import ProjectionStore, create_engine
from esflow.settings import PostgresSettings, ProjectionSettings, Settings
from ops.bench.api_http import ORDER_BY_ID, ORDERS_OF_CUSTOMER, http_asker, running_api
from ops.bench.projection_workload import Workload
from projections import registry
from projections.registry import EnvelopeDecoder

SUMMARY = (
    "order_id, customer_id, status, sales_channel, currency, item_count, items_total, placed_at, "
    "updated_at, version"
)
DETAILS = (
    f"{SUMMARY}, lines, paid_amount, refunded_amount, shipping_city, shipping_country, payment_ref, "
    "carrier, tracking_number, cancel_reason, confirmed_at, paid_at, shipped_at, delivered_at, "
    "cancelled_at, last_refunded_at"
)
PAGE = 20


def fill(pg: PostgresSettings, schema: str, events: int) -> tuple[list[uuid.UUID], list[uuid.UUID]]:
    """Install ``orders`` under ``schema``, apply ``events`` generated events; the order and customer ids."""
    layout = versions.Layout(schema)
    base = create_engine(pg, schema, pool_size=1)
    with base.begin() as conn:
        conn.execute(sa.text(f"CREATE SCHEMA IF NOT EXISTS {sql.Identifier(schema).as_string()}"))
    projection = registry.get("orders")
    versions.install(base, layout, [projection])
    with base.connect() as conn:
        live = versions.live_version(conn, layout, "orders")
    assert live is not None
    engine = create_engine(pg, live.schema, pool_size=1)
    codec = Codec.from_settings()
    applier = BatchApplier(ProjectionStore(engine), projection, EnvelopeDecoder(codec), ProjectionSettings())
    envelopes = [e for e in Workload(seed=3).events(events) if e.metadata.aggregate_type == "order"]
    offsets: dict[int, int] = {}
    raws = []
    for env in envelopes:
        p = env.metadata.aggregate_id.int % 6
        offsets[p] = offsets.get(p, -1) + 1
        raws.append(RawEvent(event_topic("order"), p, offsets[p], codec.key(env), codec.encode(env)))
    for i in range(0, len(raws), 2000):
        applier.process(raws[i : i + 2000])
    with base.connect() as conn:
        orders = sa.table("orders", sa.column("order_id"), sa.column("customer_id"), schema=layout.bi)
        rows = conn.execute(sa.select(orders.c.order_id, orders.c.customer_id)).all()
    engine.dispose()
    base.dispose()
    return [r[0] for r in rows], sorted({r[1] for r in rows})


def drop(pg: PostgresSettings, schema: str) -> None:
    """Remove the installation and the roles it created."""
    layout = versions.Layout(schema)
    conninfo = pg.database_url.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        names = [r[0] for r in conn.execute("SELECT nspname FROM pg_namespace WHERE nspname LIKE %s",
                                            (schema + r"\_%",))]  # fmt: skip
        for name in [schema, *names]:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(layout.reader_role)))


Ask = Callable[[Any], Awaitable[Any]]
MakeAsks = Callable[[int], Awaitable[tuple[Ask, Callable[[], Awaitable[None]]]]]
Variables = Callable[[Any], dict[str, Any]]


async def drive(
    make_asks: Callable[[int], Awaitable[tuple[Ask, Callable[[], Awaitable[None]]]]],
    keys: Sequence[Any],
    concurrency: int,
    seconds: float,
) -> tuple[float, float, float]:
    """``concurrency`` tasks asking in a loop for ``seconds``: requests/s, p50 and p99 in ms."""
    latencies: list[float] = []
    stop = time.perf_counter() + seconds

    async def task(n: int) -> None:
        ask, close = await make_asks(n)
        rng = random.Random(n)
        try:
            while (now := time.perf_counter()) < stop:
                await ask(rng.choice(keys))
                latencies.append(time.perf_counter() - now)
        finally:
            await close()

    started = time.perf_counter()
    await asyncio.gather(*(task(n) for n in range(concurrency)))
    elapsed = time.perf_counter() - started
    ordered = sorted(latencies)
    return len(ordered) / elapsed, ordered[len(ordered) // 2] * 1000, ordered[int(len(ordered) * 0.99)] * 1000


async def paced(
    make_asks: Callable[[int], Awaitable[tuple[Ask, Callable[[], Awaitable[None]]]]],
    keys: Sequence[Any],
    concurrency: int,
    rate: float,
    seconds: float,
) -> tuple[float, float, float]:
    """Asks at a fixed ``rate`` (spread over ``concurrency`` tasks): achieved requests/s, p50, p99 (ms).

    Latency counts from when an ask was *due*, not when it was sent: an ask held up behind a slow one
    is charged the wait (no coordinated omission).
    """
    latencies: list[float] = []
    interval = concurrency / rate
    start = time.perf_counter() + 0.05
    end = start + seconds

    async def task(n: int) -> None:
        ask, close = await make_asks(n)
        rng = random.Random(n)
        due = start + n * interval / concurrency
        try:
            while due < end:
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                await ask(rng.choice(keys))
                latencies.append(time.perf_counter() - due)
                due += interval
        finally:
            await close()

    await asyncio.gather(*(task(n) for n in range(concurrency)))
    ordered = sorted(latencies)
    elapsed = max(time.perf_counter() - start, seconds)
    return len(ordered) / elapsed, ordered[len(ordered) // 2] * 1000, ordered[int(len(ordered) * 0.99)] * 1000


def raw_asker(
    conninfo: str, text: str
) -> Callable[[int], Awaitable[tuple[Ask, Callable[[], Awaitable[None]]]]]:
    """Each task: its own psycopg connection running ``text`` (prepared by psycopg after five runs)."""

    async def make(n: int) -> tuple[Ask, Callable[[], Awaitable[None]]]:
        conn = await psycopg.AsyncConnection.connect(conninfo, autocommit=True)

        async def ask(key: Any) -> Any:
            return await (await conn.execute(text, (key,))).fetchall()

        return ask, conn.close

    return make


def bus_asker(
    bus: QueryBus, query: Callable[[Any], Any]
) -> Callable[[int], Awaitable[tuple[Ask, Callable[[], Awaitable[None]]]]]:
    """Each task: asks ``bus`` (shared, with its pool)."""

    async def make(n: int) -> tuple[Ask, Callable[[], Awaitable[None]]]:
        async def ask(key: Any) -> Any:
            return await bus.ask(query(key))

        async def nothing() -> None:
            return None

        return ask, nothing

    return make


def outcomes(query: str) -> dict[str, float]:
    """The bus's ask counters of one query type, by outcome."""
    return {o: sample("esflow_query_asks_total", query=query, outcome=o) for o in ("hit", "miss", "joined")}


def sample(name: str, **labels: str) -> float:
    """A counter's value in the default registry (0 when never incremented)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def bench(pg: PostgresSettings, schema: str, hot: Sequence[Any], args: argparse.Namespace) -> None:
    """Measure every mode for both queries, rounds alternating, and print the table."""
    settings = Settings(postgres=pg, projections=ProjectionSettings(db_schema=schema))
    layout = versions.Layout(schema)
    conninfo = pg.database_url.replace("postgresql+psycopg://", "postgresql://", 1)
    bi = sql.Identifier(layout.bi).as_string()
    orders, customers = hot
    cases: dict[str, tuple[Sequence[Any], str, Callable[[Any], Any], str, Variables]] = {
        "order-by-id": (orders, f"SELECT {DETAILS} FROM {bi}.orders WHERE order_id = %s",
                        lambda k: OrderById(order_id=k), ORDER_BY_ID, lambda k: {"id": str(k)}),
        "orders-of-customer": (
            customers,
            f"SELECT {SUMMARY} FROM {bi}.orders WHERE customer_id = %s "
            f"ORDER BY placed_at DESC, order_id DESC LIMIT {PAGE + 1}",
            lambda k: OrdersOfCustomer(customer_id=k, first=PAGE),
            ORDERS_OF_CUSTOMER, lambda k: {"id": str(k), "n": PAGE},
        ),
    }  # fmt: skip
    buses = {
        "bus uncached": QueryBus.connect(HANDLERS, settings, cache_size=0, pool_size=args.concurrency),
        "bus cached": QueryBus.connect(HANDLERS, settings, pool_size=args.concurrency),
    }
    apis = contextlib.ExitStack()
    try:
        # The HTTP rows: an `esflow api run` per cache mode on the same installation (ops.bench.api_http).
        http = {
            mode: apis.enter_context(running_api(pg, schema, cached=cached, pool_size=args.concurrency))
            for mode, cached in (("HTTP uncached", False), ("HTTP cached", True))
            if args.http
        }
        modes = ("raw SQL", "bus uncached", "bus cached", *http)
        for case, (keys, text, query, http_query, http_vars) in cases.items():
            name = type(query(keys[0])).type_name()

            def asker(mode: str, text: str = text, query: Any = query, http_query: str = http_query,
                      http_vars: Variables = http_vars) -> MakeAsks:  # fmt: skip
                if mode == "raw SQL":
                    return raw_asker(conninfo, text)
                if mode in http:
                    return http_asker(*http[mode], http_query, http_vars)
                return bus_asker(buses[mode], query)

            results: dict[str, list[tuple[float, float, float]]] = {}
            cached_asks = hits = key_reads = 0.0
            for _ in range(args.rounds):
                for mode in modes:
                    make = asker(mode)
                    before = (outcomes(name), sample("esflow_query_key_reads_total"))
                    results.setdefault(mode, []).append(
                        await drive(make, keys, args.concurrency, args.seconds)
                    )
                    if mode == "bus cached":
                        after = outcomes(name)
                        cached_asks += sum(after[o] - before[0][o] for o in ("hit", "miss", "joined"))
                        hits += after["hit"] - before[0]["hit"]
                        key_reads += sample("esflow_query_key_reads_total") - before[1]
            print(f"\n{case}: {args.concurrency} concurrent askers, {len(keys)} hot keys, {args.rounds} "
                  f"rounds of {args.seconds:.0f}s per mode, alternating (median round)")  # fmt: skip
            median = {m: sorted(r)[len(r) // 2] for m, r in results.items()}
            for mode, (rate, p50, p99) in median.items():
                spread = ", ".join(f"{r[0]:,.0f}" for r in results[mode])
                print(
                    f"  {mode:<13} {rate:>9,.0f} req/s  p50 {p50:6.2f} ms  p99 {p99:6.2f} ms  "
                    f"(rounds: {spread})"
                )
            raw, uncached, cached = (median[m][0] for m in ("raw SQL", "bus uncached", "bus cached"))
            print(f"  uncached / raw SQL {uncached / raw:.0%} (target >= 30%); "
                  f"cached / uncached {cached / uncached:.1f}x (target >= 2x); "
                  f"hit rate {hits / max(cached_asks, 1):.0%}; "
                  f"key reads per cached ask {key_reads / max(cached_asks, 1):.2f}")  # fmt: skip
            if http:
                http_uncached, http_cached = median["HTTP uncached"][0], median["HTTP cached"][0]
                print(f"  HTTP uncached / raw SQL {http_uncached / raw:.0%} (target >= 30%); HTTP cached / "
                      f"HTTP uncached {http_cached / http_uncached:.1f}x (target >= 2x)")  # fmt: skip
            for mode in modes:
                make = asker(mode)
                target = median[mode][0] / 2
                rate, p50, p99 = await paced(make, keys, args.concurrency, target, args.seconds)
                print(f"  at half its maximum, {mode:<13} {rate:>8,.0f} req/s  p50 {p50:6.2f} ms  "
                      f"p99 {p99:6.2f} ms (target p99 <= 50 ms)")  # fmt: skip
    finally:
        apis.close()
        for bus in buses.values():
            await bus.close()


def main(argv: list[str] | None = None) -> int:
    """Fill a fresh installation, measure, print, clean up."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=30_000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--hot", type=int, default=500, help="orders / customers asked about")
    parser.add_argument(
        "--no-http", dest="http", action="store_false", help="skip the rows through `esflow api run`"
    )
    args = parser.parse_args(argv)
    pg = PostgresSettings()
    schema = f"bench_api_{uuid.uuid4().hex[:8]}"
    try:
        started = time.perf_counter()
        orders, customers = fill(pg, schema, args.events)
        rng = random.Random(1)
        hot = (
            rng.sample(orders, min(args.hot, len(orders))),
            rng.sample(customers, min(args.hot, len(customers))),
        )
        print(f"{len(orders)} orders of {len(customers)} customers from {args.events} events "
              f"(filled in {time.perf_counter() - started:.1f}s)")  # fmt: skip
        asyncio.run(bench(pg, schema, hot, args))
    finally:
        drop(pg, schema)
    return 0


if __name__ == "__main__":
    sys.exit(main())
