"""Catch-up at bulk speed: a worker far behind applies the backlog with the replayer, then goes live.

Faust's per-message pipeline is far slower than the bulk replayer (:mod:`projections.replay`: assign,
read_committed, batches of ``rebuild_batch_size`` written with COPY, forked per CPU). So a worker that
starts more than ``catchup_threshold`` events behind (a new installation, a long stop) first replays
the backlog of the projections it serves that are behind, together (each record read and decoded
once, :class:`~projections.fanout.FanOut`), each into its live (or pinned) version, then starts its
Faust app; a running worker whose batches show it that far behind re-executes itself into
the same path (:mod:`projections.worker`).

The handover is exact by construction, not by bookkeeping: the replayer commits each batch's rows
with its checkpoints in one Postgres transaction, exactly as the live applier does, and the Faust
consumer seeks every partition it is assigned to the Postgres checkpoint + 1. Whatever the replayer
committed is where the live tail starts; whatever it had not committed (SIGKILL mid-batch) left
nothing behind and is read again. A redelivered record is skipped by the checkpoint row lock.

Several workers of one projection version (hosts splitting the partitions) would each replay every
partition; a Postgres advisory lock per projection version lets one of them catch up while the others
wait, then look again (and find the backlog gone). The lock is a session lock: a SIGKILLed holder's
connection drops and the lock with it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import sqlalchemy as sa

from esflow.errors import ProjectionHalted
from esflow.messaging.codec import Codec
from esflow.readmodel.store import ProjectionStore, create_engine
from esflow.readmodel.versions import Version
from esflow.settings import ProjectionSettings, Settings
from projections import registry
from projections.fanout import Member
from projections.replay import Replayer
from projections.runtime import host_group

log = logging.getLogger("esflow.projections")


@contextmanager
def _catching_up(engine: sa.Engine, keys: Sequence[str]) -> Iterator[None]:
    """Hold the advisory locks of ``keys`` (waiting for other workers' catch-ups to finish).

    Taken in sorted order, so two hosts serving overlapping projections cannot deadlock.
    """
    with engine.connect() as conn:
        for key in sorted(keys):
            conn.execute(sa.text("SELECT pg_advisory_lock(hashtext(:k))"), {"k": key})
        conn.commit()
        try:
            yield
        finally:
            for key in sorted(keys, reverse=True):
                conn.execute(sa.text("SELECT pg_advisory_unlock(hashtext(:k))"), {"k": key})
            conn.commit()


def handover_lag(settings: ProjectionSettings, partitions: int) -> int:
    """How far behind each of ``partitions`` partitions the catch-up may stop: the live tail does the rest.

    At most a batch per partition, and together at most half the threshold, so a worker that just
    caught up does not find itself past the threshold again at once.
    """
    return min(settings.batch_size, settings.catchup_threshold // (2 * max(1, partitions)))


def catch_up(
    served: Sequence[tuple[str, Version]], settings: Settings, stop: threading.Event | None = None
) -> dict[str, int]:
    """Replay the backlog of the served projections more than ``catchup_threshold`` events behind.

    They are replayed together (:meth:`Replayer.for_members`: each record read and decoded once, each
    projection applying its part into its own version) until every partition is within
    :func:`handover_lag` events of its end; the live tail takes the rest. Returns the events the replay
    handled, under the replayed projections' names joined by ``+`` (empty when none was behind).
    Returns early, inside the replay, once ``stop`` is set.
    """
    ps = settings.projections
    if ps.catchup_threshold <= 0:
        return {}
    decoder = registry.SourceDecoder(Codec.from_settings(settings.schemas))
    version_of = dict(served)
    engines = {name: create_engine(settings.postgres, version.schema) for name, version in served}
    try:
        members = {name: Member(registry.get(name), ProjectionStore(engines[name])) for name in engines}

        def replayer(names: Sequence[str]) -> Replayer:
            return Replayer.for_members(
                [members[n] for n in names],
                decoder,
                topics=settings.topics,
                kafka=settings.kafka,
                group_id=host_group(ps, {n: version_of[n].version for n in names}),
                settings=ps,
                batch_size=ps.rebuild_batch_size,
            )

        def behind(names: Sequence[str]) -> list[str]:
            out = []
            for name in names:
                try:
                    lag = sum(replayer([name]).behind().values())
                except Exception as exc:  # topics missing, Kafka slow: the live tail copes, as it did
                    log.warning("%s: cannot tell how far behind it is, no bulk catch-up: %s", name, exc)
                    continue
                if lag > ps.catchup_threshold:
                    out.append(name)
            return out

        chosen = behind(list(engines))
        if not chosen:
            return {}
        keys = [f"esflow-catchup:{version_of[n].schema}:{n}" for n in chosen]
        with _catching_up(engines[chosen[0]], keys):
            # Another worker may have caught up while this one waited for the locks.
            chosen = behind(chosen)
            if not chosen or (stop is not None and stop.is_set()):
                return {}
            bulk = replayer(chosen)
            lags = bulk.behind()
            log.warning("%s: about %d events behind: catching up in bulk", bulk.name, sum(lags.values()))
            try:
                report = bulk.run(lag_threshold=handover_lag(ps, len(lags)), stop=stop)
            except ProjectionHalted as exc:
                # on_bad_input=halt: the live applier meets the same record and halts that partition
                # of that projection alone, while the rest keeps going; crashing here would loop.
                log.error("%s: bulk catch-up halted, the live tail takes over: %s", bulk.name, exc)
                return {}
        handled = report.applied + report.skipped + report.dead_lettered
        log.warning(
            "%s: caught up in bulk: %d events at %.0f/s (once per projection applying them); the live "
            "tail starts at the checkpoints",
            bulk.name,
            handled,
            report.events_per_s,
        )
        return {bulk.name: handled}
    finally:
        for engine in engines.values():
            engine.dispose()
