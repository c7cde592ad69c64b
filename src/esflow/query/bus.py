"""The query bus: ``ask`` a typed query, optionally after your own write, through an exact cache.

Exactness. A read model changes only in a projection batch, which moves the partitions' checkpoints in
the same transaction as the rows (:mod:`esflow.readmodel.store`); the ``bi.projection_status`` view has
those offsets (``last_offset``) for every live version. So the state of the projections a query reads
is named exactly by their live version numbers and those offsets: the *checkpoint key*. A cache entry
is stored under the key read in the same REPEATABLE READ snapshot as the answer, and served only while
a fresh read of the key gives the same key; a TTL only bounds how long an entry may live. Any batch
applied changes the key, so no entry is ever served once a newer event is visible.

Cost. A cached ask must learn the current key, and learns it from the database: one indexed statement
(registry join status view). Concurrent asks share it: an ask waits for the next key read to *start*
(never joins one already running, which could predate a commit it has seen), so one round trip serves
every ask that arrived during the previous one, like a group commit (``ops/bench/api.py``: 0.07 key
reads per cached ask at 16 askers). The alternative, the applier sending LISTEN/NOTIFY after each
commit, would save the round trip, but a notification arrives after the commit: between the two an
entry older than the data would be served, so exactness would rest on timing. Reading the key keeps it
a fact of the database, and grouping makes it cheap.

Single flight. Identical asks (equal query, same key) that miss together run the handler once; the
others await its answer. An answer read at a later key than the asker saw is newer, never older.

Read-your-writes. ``consistent_with=token`` first waits until every projection in ``query.reads`` has
applied the token's offsets (:func:`esflow.query.consistency.lagging`, the rule the command SDK's
waiter applies), polling the same shared key read (its offsets are the checkpoints: the applier writes
both in one transaction), so waiting askers cost no extra round trips. Then it asks as usual; the key
read after the wait is at or past the token, so a cached answer is too.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import sqlalchemy as sa
from cachetools import LRUCache
from prometheus_client import Counter, Histogram
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from esflow.errors import ClientError, ResultTimeout
from esflow.messaging.topics import source_topic
from esflow.query.base import Query
from esflow.query.consistency import ConsistencyToken, lagging
from esflow.query.sql import fetch
from esflow.readmodel.versions import Layout
from esflow.settings import Settings, TopicSettings, load_settings

log = logging.getLogger("esflow.query")

R = TypeVar("R")

Handler = Callable[[AsyncConnection, Any], Awaitable[Any]]
"""``async def handler(conn, query) -> answer``: reads the ``bi`` views on ``conn`` (search path)."""

Key = tuple[tuple[str, int | None, tuple[tuple[str, int, int], ...]], ...]
"""Per projection read (sorted by name): its live version and its (topic, partition, offset)s."""

ASKS = Counter(
    "esflow_query_asks_total",
    "Queries answered, by type and how: hit (cache), miss (handler ran), joined (awaited an identical "
    "ask already running), uncached (bus without cache), error.",
    ["query", "outcome"],
)
WAITS = Counter(
    "esflow_query_consistency_waits_total",
    "Asks with a consistency token, by type and outcome (passed at once, waited, timeout).",
    ["query", "outcome"],
)
WAIT_SECONDS = Histogram(
    "esflow_query_consistency_wait_seconds",
    "Time an ask waited for the projections it reads to pass its consistency token.",
    ["query"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
SECONDS = Histogram(
    "esflow_query_seconds",
    "Time to answer a query through the bus, waits included, by type.",
    ["query"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)


KEY_READS = Counter(
    "esflow_query_key_reads_total",
    "Reads of the checkpoint key (one serves every cached ask that arrived while the previous one ran).",
)


class QueryError(ClientError):
    """A query the bus cannot answer (unknown type, or its handler failed)."""


class UnknownQuery(QueryError):
    """No handler is registered for the query's type."""


class QueryTimeout(QueryError):
    """The handler did not answer within the ask's timeout."""


class ConsistencyTimeout(ResultTimeout):
    """A projection the query reads did not pass the consistency token within the timeout."""

    def __init__(
        self, query: str, projection: str, lagging: Sequence[tuple[str, int, int, int | None]], waited: float
    ) -> None:
        t, p, want, have = lagging[0]
        self.projection = projection
        self.behind = sum(w - (h if h is not None else -1) for _, _, w, h in lagging)
        where = (
            f"it has applied nothing from {t}[{p}] (needs offset {want})"
            if have is None
            else f"{t}[{p}] is at offset {have}, the token needs {want}"
        )
        super().__init__(
            f"{query}: projection {projection} is {self.behind} offset(s) behind the consistency token "
            f"after {waited:.1f}s ({where}"
            + (f"; {len(lagging) - 1} more partition(s) behind" if len(lagging) > 1 else "")
            + ")",
            hint=f"is `esflow projector run {projection}` up and keeping up? see `esflow projection status`",
        )


@dataclass(frozen=True, slots=True)
class _Entry:
    key: Key
    value: Any
    stored_at: float


def _positions(rows: Sequence[Mapping[str, Any]], projections: Sequence[str]) -> dict[str, Any]:
    found: dict[str, tuple[int | None, list[tuple[str, int, int]]]] = {}
    for row in rows:
        entry = found.setdefault(row["projection"], (row["version"], []))
        if row["topic"] is not None:
            entry[1].append((row["topic"], row["partition"], row["last_offset"]))
    return {p: (found[p][0], tuple(sorted(found[p][1]))) if p in found else (None, ()) for p in projections}


class QueryBus:
    """Answers typed queries with registered handlers, through an exact cache with single flight.

    ``handlers`` maps each query type to its handler. ``cache_size`` 0 turns the cache (and single
    flight, which needs the key) off: every ask runs its handler (one autocommit statement). ``ttl_s`` is only
    an upper bound on an entry's life; exactness comes from the checkpoint key.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        handlers: Mapping[type[Query[Any]], Handler],
        *,
        layout: Layout,
        topics: TopicSettings | None = None,
        cache_size: int = 10_000,
        ttl_s: float = 300.0,
        poll_s: float = 0.01,
    ) -> None:
        self.engine = engine
        self.handlers = dict(handlers)
        self.layout = layout
        self.topics = topics or TopicSettings()
        self._reads_topics: dict[str, frozenset[str]] = {}
        self.ttl_s = ttl_s
        self.poll_s = poll_s
        self._cache: LRUCache[Query[Any], _Entry] | None = LRUCache(cache_size) if cache_size > 0 else None
        self._flights: dict[tuple[Query[Any], Key], asyncio.Future[Any]] = {}
        self._watched: set[str] = {p for t in self.handlers for p in t.reads}
        self._next_read: asyncio.Future[dict[str, Any]] | None = None
        self._reader: asyncio.Task[None] | None = None
        status = sa.table(
            "projection_status",
            sa.column("projection", sa.Text),
            sa.column("topic", sa.Text),
            sa.column("partition", sa.Integer),
            sa.column("last_offset", sa.BigInteger),
            schema=layout.bi,
        )
        registry = sa.table(
            "projection_versions",
            sa.column("projection", sa.Text),
            sa.column("version", sa.Integer),
            sa.column("state", sa.Text),
            sa.column("aggregates", sa.ARRAY(sa.Text)),
            schema=layout.base,
        )
        self._key_sql = (
            sa.select(registry.c.projection, registry.c.version, registry.c.aggregates, status.c.topic,
                      status.c.partition,
                      status.c.last_offset)
            .select_from(registry.outerjoin(status, status.c.projection == registry.c.projection))
            .where(registry.c.state == "live",
                   registry.c.projection == sa.any_(sa.bindparam("names", type_=sa.ARRAY(sa.Text))))
        )  # fmt: skip

    @classmethod
    def connect(
        cls,
        handlers: Mapping[type[Query[Any]], Handler],
        settings: Settings | None = None,
        *,
        pool_size: int = 10,
        cache_size: int = 10_000,
        ttl_s: float = 300.0,
    ) -> QueryBus:
        """A bus on its own async engine, reading the ``bi`` views of the configured installation."""
        settings = settings or load_settings()
        layout = Layout(settings.projections.db_schema)
        engine = create_async_engine(
            settings.postgres.database_url,
            # Autocommit: a single statement is its own snapshot, and a read needs no BEGIN and no
            # ROLLBACK round trips (they tripled an uncached ask's round trips). Answers that must be
            # read together take an explicit REPEATABLE READ transaction (_fetch).
            isolation_level="AUTOCOMMIT",
            pool_pre_ping=False,
            pool_size=pool_size,
            max_overflow=pool_size,
            connect_args={"options": f"-c search_path={layout.bi},{layout.base}", "connect_timeout": 5},
        )
        return cls(
            engine,
            handlers,
            layout=layout,
            topics=settings.topics,
            cache_size=cache_size,
            ttl_s=ttl_s,
        )

    async def close(self) -> None:
        """Release the connections."""
        if self._reader is not None and not self._reader.done():
            self._reader.cancel()
        self._next_read = None
        await self.engine.dispose()

    @property
    def cached(self) -> bool:
        """Whether this bus caches answers."""
        return self._cache is not None

    # ------------------------------------------------------------------------------------- asking

    async def ask(
        self, query: Query[R], *, consistent_with: ConsistencyToken | None = None, timeout_s: float = 5.0
    ) -> R:
        """The answer to ``query``; after ``consistent_with``'s writes are visible to it, if given.

        Raises :class:`ConsistencyTimeout` (naming the lagging projection and how far behind it is) or
        :class:`QueryTimeout` past ``timeout_s``, :class:`UnknownQuery` for an unregistered type; a
        handler's own errors pass through (:class:`~esflow.query.base.BadCursor` for a cursor the query
        did not hand out, ``AmbiguousOrderNumber``): the caller's mistakes, not the bus's.
        """
        name = type(query).type_name()
        started = time.perf_counter()
        self._handler(query)
        try:
            if consistent_with is not None and consistent_with.positions:
                await self._wait(query, consistent_with, deadline=started + timeout_s)
            remaining = max(0.001, started + timeout_s - time.perf_counter())
            try:
                async with asyncio.timeout(remaining):
                    answer: R = await self._answer(query)
            except TimeoutError:
                raise QueryTimeout(f"{name} took longer than {timeout_s:.1f}s") from None
        except BaseException:
            ASKS.labels(name, "error").inc()
            raise
        finally:
            SECONDS.labels(name).observe(time.perf_counter() - started)
        return answer

    async def ask_many(self, queries: Sequence[Query[Any]], *, timeout_s: float = 5.0) -> list[Any]:
        """The answers to ``queries``, in order, read together: one key read, one snapshot for the misses.

        Answers that come from one snapshot are consistent with each other (e.g. a count and a page).
        """
        started = time.perf_counter()
        for q in queries:
            self._handler(q)
        try:
            async with asyncio.timeout(timeout_s):
                return await self._answer_many(list(queries))
        except TimeoutError:
            raise QueryTimeout(f"{len(queries)} queries took longer than {timeout_s:.1f}s") from None
        finally:
            for q in queries:
                SECONDS.labels(type(q).type_name()).observe(time.perf_counter() - started)

    # ------------------------------------------------------------------------------------ internals

    def _handler(self, query: Query[Any]) -> Handler:
        handler = self.handlers.get(type(query))
        if handler is None:
            raise UnknownQuery(
                f"no handler for {type(query).type_name()}",
                hint="known: " + ", ".join(sorted(t.type_name() for t in self.handlers)),
            )
        return handler

    async def read_key(self, conn: AsyncConnection, projections: Sequence[str]) -> dict[str, Any]:
        """Each projection's live version and checkpoint offsets, as one statement sees them."""
        names = sorted(set(projections))
        rows = await fetch(conn, self._key_sql, {"names": names})
        for row in rows:
            # Which topics each live version reads (for consistency waits): its sources' topics.
            self._reads_topics[row["projection"]] = frozenset(
                source_topic(a, self.topics) for a in row["aggregates"]
            )
        return _positions(rows, names)

    async def current_key(self, projections: Sequence[str]) -> dict[str, Any]:
        """:meth:`read_key` on a connection of its own."""
        async with self.engine.connect() as conn:
            return await self.read_key(conn, projections)

    async def shared_key(self, projections: Sequence[str]) -> dict[str, Any]:
        """The current key, read by a statement that *starts after this call*; shared by concurrent asks.

        Asks arriving while a key read runs all wait for the next one, which starts when the running
        one ends: one round trip serves every ask that arrived meanwhile (group reads, as in a group
        commit), and each of them gets a state at least as new as any it could have seen. Under load
        the reads cost one round trip per round trip, not one per ask.
        """
        if not self._watched.issuperset(projections):
            self._watched.update(projections)
        if self._next_read is None:
            self._next_read = asyncio.get_running_loop().create_future()
            if self._reader is None or self._reader.done():
                self._reader = asyncio.ensure_future(self._read_keys())
        return await asyncio.shield(self._next_read)

    async def _read_keys(self) -> None:
        while self._next_read is not None:
            pending, self._next_read = self._next_read, None
            KEY_READS.inc()
            try:
                state = await self.current_key(sorted(self._watched))
            except asyncio.CancelledError:
                pending.cancel()
                raise
            except Exception as exc:
                pending.set_exception(exc)
                pending.exception()  # retrieved: every asker may have given up
            else:
                pending.set_result(state)

    @staticmethod
    def _key_of(query: Query[Any], state: Mapping[str, Any]) -> Key:
        return tuple((p, *state[p]) for p in sorted(set(query.reads)))

    async def _answer(self, query: Query[R]) -> R:
        name = type(query).type_name()
        if self._cache is None:
            async with self.engine.connect() as conn:
                answer: R = await self._handler(query)(conn, query)
            ASKS.labels(name, "uncached").inc()
            return answer
        key = self._key_of(query, await self.shared_key(query.reads))
        entry = self._cache.get(query)
        if entry is not None and entry.key == key and time.monotonic() - entry.stored_at <= self.ttl_s:
            ASKS.labels(name, "hit").inc()
            return entry.value  # type: ignore[no-any-return]
        flight = self._flights.get((query, key))
        if flight is None:
            outcome = "miss"
            flight = self._flights[(query, key)] = asyncio.ensure_future(self._fetch([query]))
            flight.add_done_callback(functools.partial(self._settled, (query, key)))
        else:
            outcome = "joined"
        # Shielded: an asker that gives up (timeout, disconnect) must not cancel the others' answer.
        (answer,) = await asyncio.shield(flight)
        ASKS.labels(name, outcome).inc()
        return answer

    def _settled(self, key: tuple[Query[Any], Key], done: asyncio.Future[Any]) -> None:
        self._flights.pop(key, None)
        if not done.cancelled():
            done.exception()  # retrieved here: every asker may have given up before it came

    async def _fetch(self, queries: Sequence[Query[Any]]) -> list[Any]:
        """Run the handlers in one read-only snapshot and cache each answer under the key it saw."""
        began = time.monotonic()
        async with self.engine.connect() as raw:
            conn = await raw.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
            async with conn.begin():
                # The key is read first in the same snapshot: the answer is exactly the data at that key.
                state = await self.read_key(conn, [p for q in queries for p in q.reads])
                answers = [await self._handler(q)(conn, q) for q in queries]
        if self._cache is not None:
            now = time.monotonic()
            for q, a in zip(queries, answers, strict=True):
                current = self._cache.get(q)
                # An entry stored by a fetch that ended after this one began may be of a newer snapshot:
                # keep it (either is exact; only the newer one can still be hit).
                if current is None or current.stored_at < began:
                    self._cache[q] = _Entry(self._key_of(q, state), a, now)
        return answers

    async def _answer_many(self, queries: list[Query[Any]]) -> list[Any]:
        if self._cache is None or not queries:
            return [await self._answer(q) for q in queries]
        state = await self.shared_key([p for q in queries for p in q.reads])
        now = time.monotonic()
        answers: list[Any] = [None] * len(queries)
        missing: dict[Query[Any], list[int]] = {}
        joined: list[tuple[int, asyncio.Future[Any]]] = []
        for i, q in enumerate(queries):
            key = self._key_of(q, state)
            entry = self._cache.get(q)
            if entry is not None and entry.key == key and now - entry.stored_at <= self.ttl_s:
                ASKS.labels(type(q).type_name(), "hit").inc()
                answers[i] = entry.value
            elif (flight := self._flights.get((q, key))) is not None:
                ASKS.labels(type(q).type_name(), "joined").inc()
                joined.append((i, flight))
            else:
                missing.setdefault(q, []).append(i)
        if missing:
            fetched = await self._fetch(list(missing))
            for (q, places), answer in zip(missing.items(), fetched, strict=True):
                ASKS.labels(type(q).type_name(), "miss").inc()
                for i in places:
                    answers[i] = answer
        for i, flight in joined:
            (answers[i],) = await asyncio.shield(flight)
        return answers

    async def _wait(self, query: Query[Any], token: ConsistencyToken, *, deadline: float) -> None:
        """Poll the (shared) key until every projection the query reads has passed ``token``."""
        name = type(query).type_name()
        started = time.perf_counter()
        waited = False
        reads = sorted(set(query.reads))
        while True:
            state = await self.shared_key(reads)
            late = [
                (p, lag)
                for p in reads
                if (
                    lag := lagging(
                        token, self._reads_topics.get(p, frozenset()), {(t, n): o for t, n, o in state[p][1]}
                    )
                )
            ]
            if not late:
                break
            now = time.perf_counter()
            if now >= deadline:
                WAITS.labels(name, "timeout").inc()
                raise ConsistencyTimeout(name, late[0][0], late[0][1], now - started)
            waited = True
            await asyncio.sleep(min(self.poll_s, deadline - now))
        WAITS.labels(name, "waited" if waited else "passed").inc()
        WAIT_SECONDS.labels(name).observe(time.perf_counter() - started)


__all__ = [
    "ConsistencyTimeout",
    "Handler",
    "QueryBus",
    "QueryError",
    "QueryTimeout",
    "UnknownQuery",
]
