"""Catch-up at bulk speed: a worker far behind applies the backlog with the replayer, then goes live.

Faust's per-message pipeline is far slower than the bulk replayer (:mod:`projections.replay`: assign,
read_committed, batches of ``rebuild_batch_size`` written with COPY, forked per CPU). So a worker that
starts more than ``catchup_threshold`` events behind (a new installation, a long stop) first replays
the backlog of each projection it serves into that projection's live (or pinned) version, then
starts its Faust app; a running worker whose batches show it that far behind re-executes itself into
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
from projections.replay import Replayer
from projections.runtime import version_group

log = logging.getLogger("esflow.projections")


@contextmanager
def _catching_up(engine: sa.Engine, key: str) -> Iterator[None]:
    """Hold the advisory lock of ``key`` (waiting for another worker's catch-up to finish)."""
    with engine.connect() as conn:
        conn.execute(sa.text("SELECT pg_advisory_lock(hashtext(:k))"), {"k": key})
        conn.commit()
        try:
            yield
        finally:
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
    """Replay the backlog of every served projection more than ``catchup_threshold`` events behind.

    Each is replayed until every partition is within :func:`handover_lag` events of its end (the live
    tail takes the rest). Returns the events each replay handled, by projection (those not behind are
    absent). Returns early, between or inside replays, once ``stop`` is set.
    """
    ps = settings.projections
    done: dict[str, int] = {}
    if ps.catchup_threshold <= 0:
        return done
    decoder = registry.EnvelopeDecoder(Codec.from_settings(settings.schemas))
    for name, version in served:
        if stop is not None and stop.is_set():
            break
        engine = create_engine(settings.postgres, version.schema)
        try:
            replayer = Replayer(
                registry.get(name),
                decoder,
                ProjectionStore(engine),
                kafka=settings.kafka,
                topics=settings.topics,
                group_id=version_group(ps, name, version.version),
                settings=ps,
                batch_size=ps.rebuild_batch_size,
            )
            try:
                first_look = sum(replayer.behind().values())
            except Exception as exc:  # topics missing, Kafka slow: the live tail copes, as it always did
                log.warning("%s: cannot tell how far behind it is, no bulk catch-up: %s", name, exc)
                continue
            if first_look <= ps.catchup_threshold:
                continue
            with _catching_up(engine, f"esflow-catchup:{version.schema}:{name}"):
                # Another worker may have caught up while this one waited for the lock.
                lags = replayer.behind()
                if sum(lags.values()) <= ps.catchup_threshold:
                    continue
                log.warning(
                    "%s: v%d is about %d events behind: catching up in bulk",
                    name,
                    version.version,
                    sum(lags.values()),
                )
                try:
                    report = replayer.run(lag_threshold=handover_lag(ps, len(lags)), stop=stop)
                except ProjectionHalted as exc:
                    # on_bad_input=halt: the live applier meets the same record and halts that
                    # partition alone, while the others keep going; crashing here would loop.
                    log.error("%s: bulk catch-up halted, the live tail takes over: %s", name, exc)
                    continue
            handled = report.applied + report.skipped + report.dead_lettered
            done[name] = handled
            log.warning(
                "%s: caught up in bulk: %d events at %.0f/s; the live tail starts at the checkpoints",
                name,
                handled,
                report.events_per_s,
            )
        finally:
            engine.dispose()
    return done
