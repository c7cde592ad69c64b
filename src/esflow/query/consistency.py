"""Read-your-writes: consistency tokens and waiting for a projection to pass them.

An accepted command's result names where its events landed (topic, partition, offset). A projection
has applied them once its Postgres checkpoint for each of those partitions is at or past that offset —
the checkpoint is written in the same transaction as the rows, so from then on a reader sees the write.
The checkpoints read are the live version's (the one the `bi` views show): a version switch happens only
when the new version has applied at least as much of every partition, so a token once passed stays
passed for readers of the views.

Decision (issue "one home for each thing"): the SDK reads the checkpoints through the read-model
registry (``esflow.readmodel.versions``) directly rather than through a freshness service. The
checkpoint that proves a write visible lives in the same database as the rows, so any freshness API would
be this query behind one more hop. The cost, SQL drivers, is paid only by code that waits: this module is
the only part of the SDK that imports them, and an import-linter contract ("A command client loads no
SQL") keeps ``esflow.client.sender`` from importing it.

Waiting does not poll: the waiter LISTENs on :data:`~esflow.readmodel.store.CHECKPOINT_CHANNEL`, which
every projection batch notifies at its commit, and reads the checkpoints again when the projection it
waits for committed (LISTEN before the first read, so no commit between the read and the wait is
missed). The notification is a hint; the answer is always the checkpoint rows, read afresh, and a
fallback read every :data:`FALLBACK_S` covers workers that do not notify (older releases).
"""

from __future__ import annotations

import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass

import sqlalchemy as sa

from esflow.client.preflight import ServiceNotRunning
from esflow.errors import ClientError, ResultTimeout, translated
from esflow.messaging.results import CommandResult
from esflow.messaging.topics import source_topic
from esflow.readmodel import versions
from esflow.readmodel.bulk import driver_connection
from esflow.readmodel.store import CHECKPOINT_CHANNEL, create_engine
from esflow.settings import Settings, load_settings

TP = tuple[str, int]

LIVE_TTL_S = 0.5
"""How long a waiter trusts its lookup of a projection's live version."""

FALLBACK_S = 0.25
"""Longest a waiter goes without reading the checkpoints while it waits (no notification came)."""


@dataclass(frozen=True)
class ConsistencyToken:
    """The highest event offset a write produced, per partition."""

    positions: tuple[tuple[str, int, int], ...]

    @classmethod
    def from_result(cls, result: CommandResult) -> ConsistencyToken:
        """The token of an accepted result (a rejected one wrote nothing: an empty token)."""
        best: dict[TP, int] = {}
        for ref in result.events:
            tp = (ref.topic, ref.partition)
            best[tp] = max(best.get(tp, -1), ref.offset)
        return cls(tuple(sorted((t, p, o) for (t, p), o in best.items())))

    def merge(self, other: ConsistencyToken) -> ConsistencyToken:
        """A token covering both writes (e.g. several commands of one request)."""
        best = {(t, p): o for t, p, o in self.positions}
        for t, p, o in other.positions:
            best[(t, p)] = max(best.get((t, p), -1), o)
        return ConsistencyToken(tuple(sorted((t, p, o) for (t, p), o in best.items())))

    def __str__(self) -> str:
        """Compact form for headers and URLs: ``topic:partition:offset,…``."""
        return ",".join(f"{t}:{p}:{o}" for t, p, o in self.positions)

    @classmethod
    def parse(cls, text: str) -> ConsistencyToken:
        """The inverse of ``str(token)``."""
        positions = []
        for part in filter(None, text.split(",")):
            topic, _, rest = part.rpartition(":")
            topic, _, partition = topic.rpartition(":")
            if not topic:
                raise ClientError(
                    f"malformed consistency token part {part!r} (expected topic:partition:offset)"
                )
            positions.append((topic, int(partition), int(rest)))
        return cls(tuple(sorted(positions)))


def lagging(
    token: ConsistencyToken, topics: Collection[str], have: Mapping[TP, int]
) -> list[tuple[str, int, int, int | None]]:
    """The token's partitions a projection has not applied: (topic, partition, wanted, applied or None).

    ``topics`` are the topics the projection reads, ``have`` its checkpoints. Partitions of topics the
    projection does not read are not waited for (a write can touch several aggregates; a read model
    sees only its own). No topics at all means no live version: everything lags.
    """
    if not topics:
        return [(t, p, o, None) for t, p, o in token.positions]
    return [
        (t, p, o, have.get((t, p))) for t, p, o in token.positions if t in topics and have.get((t, p), -1) < o
    ]


class ProjectionWaiter:
    """Reads a projection's checkpoints and waits for them to move.

    One per process, used by one thread at a time: it holds a small connection pool and one listening
    connection.
    """

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or load_settings()
        self._layout = versions.Layout(self.settings.projections.db_schema)
        self._engine = create_engine(self.settings.postgres, self._layout.base, pool_size=1)
        self._live: dict[str, tuple[float, versions.Version | None]] = {}
        self._listener: sa.Connection | None = None

    def listen(self) -> None:
        """Start listening for committed batches (idempotent); call it before the read you wait past."""
        if self._listener is not None:
            return
        conn = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        try:
            driver_connection(conn).execute(f"LISTEN {CHECKPOINT_CHANNEL}")
        except BaseException:
            conn.close()
            raise
        self._listener = conn

    def changed(self, projection: str, timeout: float) -> bool:
        """Block until a batch of ``projection`` commits or ``timeout`` passes; True when one did.

        Every notification already received is consumed, so one call covers any number of commits.
        Listening starts here if :meth:`listen` was not called (then the first call can only time out
        or see commits after it).
        """
        self.listen()
        assert self._listener is not None
        raw = driver_connection(self._listener)
        deadline = time.monotonic() + max(0.0, timeout)
        seen = False
        while True:
            remaining = deadline - time.monotonic()
            # timeout=0 drains what has arrived; once ours is seen, only that is left to do.
            wait = 0.0 if seen or remaining <= 0 else remaining
            got = False
            for note in raw.notifies(timeout=wait, stop_after=1):
                got = True
                seen = seen or note.payload == projection
            if not got and (seen or remaining <= 0):
                return seen

    def checkpoints(self, projection: str) -> tuple[set[str], dict[TP, int]]:
        """The topics the live version reads, and its checkpoints (nothing when none is live yet)."""
        with self._engine.connect() as conn:
            # Polls come every few milliseconds; which version is live changes only at a switch, so it is
            # looked up again after LIVE_TTL_S (a switch never makes a passed token unpassed, it can only
            # make a wait up to that much longer).
            now = time.monotonic()
            cached = self._live.get(projection)
            if cached is None or now - cached[0] > LIVE_TTL_S:
                cached = self._live[projection] = (now, versions.live_version(conn, self._layout, projection))
            live = cached[1]
            if live is None:
                return set(), {}
            topics = {source_topic(a, self.settings.topics) for a in live.aggregates}
            return topics, versions.checkpoints(conn, live.schema, projection)

    def behind(self, token: ConsistencyToken, projection: str) -> list[tuple[str, int, int, int | None]]:
        """The token's partitions the projection has not passed: (topic, partition, wanted, have).

        Partitions of topics the projection does not read are not waited for (a write can touch
        several aggregates; a read model sees only its own).
        """
        if not token.positions:
            return []
        topics, have = self.checkpoints(projection)
        return lagging(token, topics, have)

    def wait(
        self, token: ConsistencyToken, projection: str, *, timeout: float = 10.0, poll_s: float = FALLBACK_S
    ) -> float:
        """Block until ``projection`` has applied every write in ``token``; returns the seconds waited.

        Reads the checkpoints again whenever the projection commits a batch, and at least every
        ``poll_s``. Raises :class:`~esflow.errors.ResultTimeout` naming the lagging partitions.
        """
        start = time.monotonic()
        if token.positions:
            self.listen()
        while True:
            lagging = self.behind(token, projection)
            if not lagging:
                return time.monotonic() - start
            if time.monotonic() - start > timeout:
                t, p, want, have = lagging[0]
                never = have is None
                raise ResultTimeout(
                    f"projection {projection} has not reached {t}[{p}] offset {want} after {timeout:.0f}s "
                    + ("(it has never read that partition)" if never else f"(at {have})"),
                    hint="is `esflow projector run` up, and does this projection read that topic?",
                )
            self.changed(projection, min(poll_s, max(0.0, start + timeout - time.monotonic())))

    def close(self) -> None:
        """Stop listening and release the connection pool."""
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        self._engine.dispose()

    def __enter__(self) -> ProjectionWaiter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def wait_for_projection(
    token: ConsistencyToken | CommandResult,
    projection: str,
    timeout: float = 10.0,
    *,
    settings: Settings | None = None,
) -> float:
    """One-shot :meth:`ProjectionWaiter.wait` (opens and closes a connection)."""
    if isinstance(token, CommandResult):
        token = ConsistencyToken.from_result(token)
    with ProjectionWaiter(settings) as waiter:
        return waiter.wait(token, projection, timeout=timeout)


def require_projection(settings: Settings, projection: str) -> None:
    """Raise :class:`ServiceNotRunning` unless ``projection`` has a live version in the read-model database.

    The registry in PostgreSQL is the truth about which projections exist here (the same lookup the
    consistency waiter makes), so an unknown or not yet migrated name fails before any command is sent.
    """
    layout = versions.Layout(settings.projections.db_schema)
    engine = create_engine(settings.postgres, layout.base, pool_size=1)
    try:
        with translated(f"looking up projection {projection}"), engine.connect() as conn:
            if versions.live_version(conn, layout, projection) is not None:
                return
            known = sorted({v.projection for v in versions.list_versions(conn, layout)})
    finally:
        engine.dispose()
    if projection in known:
        raise ServiceNotRunning(
            f"projection {projection} has no live version",
            hint="see `.venv/bin/esflow projection status`",
        )
    raise ServiceNotRunning(
        f"unknown projection {projection!r}",
        hint=("known: " + ", ".join(known))
        if known
        else "no projection is installed: run `.venv/bin/esflow db migrate`",
    )


__all__ = ["ConsistencyToken", "ProjectionWaiter", "lagging", "require_projection", "wait_for_projection"]
