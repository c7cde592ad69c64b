"""The transactional projection store: read-model rows and checkpoints in one Postgres transaction.

The pattern is the tracking table of pyeventsourcing's ``postgres.py``: every batch locks the
projection's checkpoint rows of the partitions it touches (``SELECT ... FOR UPDATE``), drops the events
at or below them, writes the rest through the projection, and moves the checkpoints, all before one
``COMMIT``. A redelivered event is therefore skipped, a crash before the commit leaves nothing behind,
and a zombie worker that still holds a revoked partition waits on the row lock and then sees the newer
checkpoint. Isolation is READ COMMITTED, set explicitly: the row lock, not snapshot isolation, is what
serialises two writers of one partition, and the cross-partition read models use commutative upserts.

Round trips. A live batch of one projection is a handful of statements, and on a busy box each round
trip is a wake-up of a Postgres backend and of this thread, so a projector host's round (every
projection in turn) is mostly these waits. The store therefore opens the transaction itself: ``BEGIN``
travels with the checkpoint lock, and the progress statement with ``COMMIT``, each pair as one
simple-protocol query (values bound client-side as literals by :mod:`psycopg.sql`), the connection in
autocommit so that psycopg sends no ``BEGIN`` of its own. A fold projection's batch is then four round
trips (lock, load, upsert, progress+commit) where it was six.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
import sqlalchemy as sa
from psycopg import sql
from sqlalchemy.dialects.postgresql import insert as pg_insert

from esflow.readmodel.bulk import UpsertMethod, driver_connection
from esflow.readmodel.projection import TP, Decoded, Item, Projection, Rejected
from esflow.readmodel.tables import checkpoints, dead_letters
from esflow.settings import PostgresSettings

ISOLATION_LEVEL = "READ COMMITTED"

CHECKPOINT_CHANNEL = "esflow_checkpoints"
"""Every batch's transaction sends ``NOTIFY esflow_checkpoints, '<projection>'``: Postgres delivers it
at the commit, so a waiter (:class:`esflow.query.consistency.ProjectionWaiter`) that LISTENs reads the
checkpoints when they moved instead of polling. A hint only: the checkpoint rows stay the truth, and
notifications of one transaction with the same payload arrive once."""


def create_engine(
    postgres: PostgresSettings, schema: str, *, pool_size: int = 2, pre_ping: bool = True
) -> sa.Engine:
    """An engine whose connections use ``schema`` first and READ COMMITTED isolation.

    ``pre_ping=False`` saves a round trip on every checkout, for callers that retry a failed
    transaction anyway (the live appliers: a connection that went stale is then one retried batch).
    """
    return sa.create_engine(
        postgres.database_url,
        isolation_level=ISOLATION_LEVEL,
        pool_pre_ping=pre_ping,
        pool_size=pool_size,
        max_overflow=2,
        connect_args={"options": f"-c search_path={schema},public", "connect_timeout": 5},
    )


@dataclass
class BatchResult:
    """What one batch transaction did."""

    applied: int = 0
    """Events written through the projection."""
    skipped: int = 0
    """Events at or below their partition's checkpoint (redelivered)."""
    dead_lettered: int = 0
    halted: dict[TP, str] = field(default_factory=dict)
    """Partitions stopped by bad input under the halt policy, with the reason."""
    checkpoints: dict[TP, int] = field(default_factory=dict)
    """The checkpoints the batch committed."""


def _partition_arrays(tps: Sequence[TP]) -> tuple[sql.Literal, sql.Literal]:
    """The topics and the partitions of ``tps`` as two array literals, in the same order."""
    return sql.Literal([t for t, _ in tps]), sql.Literal([p for _, p in tps])


@contextmanager
def _rolled_back_on_error(conn: sa.Connection) -> Iterator[None]:
    """Roll back the store's own transaction when the batch fails (psycopg does nothing when idle)."""
    try:
        yield
    except BaseException:
        raw = driver_connection(conn)
        if raw.info.transaction_status != psycopg.pq.TransactionStatus.IDLE and not raw.closed:
            with suppress(psycopg.Error):
                raw.execute("ROLLBACK")
        raise


class ProjectionStore:
    """Applies batches for any projection against one database schema."""

    def __init__(self, engine: sa.Engine, *, method: UpsertMethod = "auto") -> None:
        self.engine = engine
        self.method: UpsertMethod = method

    def checkpoints(self, projection: str, tps: Iterable[TP] | None = None) -> dict[TP, int]:
        """The last applied offset per partition (partitions never applied are absent)."""
        query = sa.select(checkpoints.c.topic, checkpoints.c.partition, checkpoints.c.offset).where(
            checkpoints.c.projection == projection
        )
        wanted = set(tps) if tps is not None else None
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        return {(t, p): o for t, p, o in rows if wanted is None or (t, p) in wanted}

    def _begin_and_lock(self, conn: sa.Connection, projection: str, tps: Sequence[TP]) -> dict[TP, int]:
        """Open the batch's transaction and lock its checkpoint rows (creating missing ones)."""
        raw = driver_connection(conn)
        # Every partition but a projection's first batches already has its row: BEGIN and the lock go
        # in one round trip. Sorted order avoids deadlocks between two workers of one projection during
        # a rebalance.
        with raw.cursor() as cur:
            cur.execute(
                sql.SQL("BEGIN ISOLATION LEVEL {}; {}").format(
                    sql.SQL(ISOLATION_LEVEL), self._lock_statement(projection, tps)
                ),
                prepare=False,  # several statements: never a prepared statement
            )
            cur.nextset()
            done: dict[TP, int] = {(t, p): o for t, p, o in cur.fetchall()}
            if len(done) == len(tps):
                return done
            # Insert the missing rows so FOR UPDATE has something to lock. A deadlock with another worker
            # doing the same (it holds a row locked above and waits on one inserted here) is detected by
            # Postgres and retried by the applier as transient.
            cur.execute(
                sql.SQL(
                    'INSERT INTO projection_checkpoints (projection, topic, partition, "offset") '
                    "SELECT {}, t, p, -1 FROM unnest({}::text[], {}::int[]) AS u(t, p) "
                    "ON CONFLICT DO NOTHING; {}"
                ).format(
                    sql.Literal(projection), *_partition_arrays(tps), self._lock_statement(projection, tps)
                ),
                prepare=False,
            )
            cur.nextset()
            return {(t, p): o for t, p, o in cur.fetchall()}

    @staticmethod
    def _lock_statement(projection: str, tps: Sequence[TP]) -> sql.Composed:
        return sql.SQL(
            'SELECT topic, partition, "offset" FROM projection_checkpoints '
            "WHERE projection = {} AND (topic, partition) IN "
            "(SELECT * FROM unnest({}::text[], {}::int[])) "
            "ORDER BY topic, partition FOR UPDATE"
        ).format(sql.Literal(projection), *_partition_arrays(tps))

    def apply(
        self,
        projection: Projection[Any],
        items: Sequence[Item],
        *,
        halt_on_bad_input: bool = False,
        lag: Mapping[TP, int] | None = None,
    ) -> BatchResult:
        """Apply one batch (items in log order per partition) in one transaction."""
        result = BatchResult()
        tps = sorted({item.raw.tp for item in items})
        if not tps:
            return result
        with self.engine.connect() as conn, _rolled_back_on_error(conn):
            # Autocommit: this method sends BEGIN and COMMIT itself (see the module docstring); every
            # statement in between, the projection's too, runs inside that transaction.
            conn.execution_options(isolation_level="AUTOCOMMIT")
            done = self._begin_and_lock(conn, projection.name, tps)
            fresh: list[Item] = []
            cut: set[TP] = set()
            for item in items:
                tp = item.raw.tp
                if tp in cut:
                    continue
                if item.raw.offset <= done[tp]:
                    result.skipped += 1
                    continue
                if halt_on_bad_input and isinstance(item, Rejected):
                    # Everything before the bad record still counts; the partition stops right here.
                    cut.add(tp)
                    result.halted[tp] = (
                        f"bad input at offset {item.raw.offset} ({item.error_type}): {item.reason}"
                    )
                    continue
                fresh.append(item)
            decoded = [i for i in fresh if isinstance(i, Decoded)]
            rejected = [i for i in fresh if isinstance(i, Rejected)]
            if decoded:
                projection.apply(conn, decoded, method=self.method)
            if rejected:
                conn.execute(
                    pg_insert(dead_letters).on_conflict_do_nothing(),
                    [
                        {
                            "projection": projection.name,
                            "topic": r.raw.topic,
                            "partition": r.raw.partition,
                            "offset": r.raw.offset,
                            "key": r.raw.key,
                            "value": r.raw.value,
                            "reason": r.reason,
                            "error_type": r.error_type,
                        }
                        for r in rejected
                    ],
                )
            result.applied = len(decoded)
            result.dead_lettered = len(rejected)
            last: dict[TP, int] = {}
            counts: dict[TP, int] = defaultdict(int)
            event_time: dict[TP, datetime] = {}
            for item in fresh:
                tp = item.raw.tp
                last[tp] = item.raw.offset
                counts[tp] += 1
                if isinstance(item, Decoded):
                    event_time[tp] = item.occurred_at
            # After the progress (which clears a partition's halt flag), in the same round trip.
            halts = [
                self._halt_statement(projection.name, tp, reason, last.get(tp, done[tp]))
                for tp, reason in result.halted.items()
            ]
            self._write_progress_and_commit(
                conn, projection.name, last, counts, event_time, lag or {}, then=halts
            )
            result.checkpoints = last
        return result

    def _write_progress_and_commit(
        self,
        conn: sa.Connection,
        projection: str,
        last: Mapping[TP, int],
        counts: Mapping[TP, int],
        event_time: Mapping[TP, datetime],
        lag: Mapping[TP, int],
        *,
        then: Sequence[sql.Composable] = (),
    ) -> None:
        """Move the checkpoints and status rows, run ``then``, and COMMIT: one round trip."""
        tps = sorted(last)
        statements = [
            *([self._progress_statement(projection, tps, last, counts, event_time, lag)] if tps else []),
            *then,
        ]
        statements.append(sql.SQL("COMMIT"))
        driver_connection(conn).execute(sql.SQL("; ").join(statements), prepare=False)

    @staticmethod
    def _progress_statement(
        projection: str,
        tps: Sequence[TP],
        last: Mapping[TP, int],
        counts: Mapping[TP, int],
        event_time: Mapping[TP, datetime],
        lag: Mapping[TP, int],
    ) -> sql.Composed:
        # One statement (a data-modifying CTE) for the checkpoints, the status rows and the
        # notification, sent with the COMMIT. The volatile pg_notify keeps its CTE from being inlined
        # (evaluated once; repeats would be merged into one notification anyway).
        topics, parts = _partition_arrays(tps)
        return sql.SQL(
            "WITH u AS (SELECT * FROM unnest({topics}::text[], {parts}::int[], {offs}::bigint[], "
            "{times}::timestamptz[], {lags}::bigint[], {counts}::bigint[]) AS u(t, p, o, at, lag, n)), "
            'moved AS (UPDATE projection_checkpoints AS c SET "offset" = u.o, updated_at = now() '
            "FROM u WHERE c.projection = {projection} AND c.topic = u.t AND c.partition = u.p), "
            "notified AS (SELECT pg_notify({channel}, {projection})) "
            "INSERT INTO projection_status AS t "
            "(projection, topic, partition, last_offset, last_event_at, lag, events_applied) "
            "SELECT {projection}, u.t, u.p, u.o, u.at, u.lag, u.n FROM u CROSS JOIN notified "
            "ON CONFLICT (projection, topic, partition) DO UPDATE SET "
            "last_offset = excluded.last_offset, "
            "last_event_at = COALESCE(excluded.last_event_at, t.last_event_at), "
            "lag = excluded.lag, events_applied = t.events_applied + excluded.events_applied, "
            "updated_at = now(), halted = false, error = NULL"
        ).format(
            projection=sql.Literal(projection),
            channel=sql.Literal(CHECKPOINT_CHANNEL),
            topics=topics,
            parts=parts,
            offs=sql.Literal([last[tp] for tp in tps]),
            times=sql.Literal([event_time.get(tp) for tp in tps]),
            lags=sql.Literal([lag.get(tp) for tp in tps]),
            counts=sql.Literal([counts[tp] for tp in tps]),
        )

    @staticmethod
    def _halt_statement(projection: str, tp: TP, reason: str, offset: int) -> sql.Composed:
        return sql.SQL(
            "INSERT INTO projection_status (projection, topic, partition, last_offset, halted, error) "
            "VALUES ({}, {}, {}, {}, true, {}) "
            "ON CONFLICT (projection, topic, partition) DO UPDATE SET halted = true, "
            "error = excluded.error, updated_at = now()"
        ).format(*(sql.Literal(v) for v in (projection, tp[0], tp[1], offset, reason)))

    def mark_halted(self, projection: str, tp: TP, reason: str) -> None:
        """Record in ``projection_status`` that a partition stopped, and why (its own transaction)."""
        with self.engine.begin() as conn:
            offset = conn.execute(
                sa.select(checkpoints.c.offset).where(
                    checkpoints.c.projection == projection,
                    checkpoints.c.topic == tp[0],
                    checkpoints.c.partition == tp[1],
                )
            ).scalar()
            driver_connection(conn).execute(
                self._halt_statement(projection, tp, reason, -1 if offset is None else offset), prepare=False
            )
