"""The Faust side of a projection: one app (one consumer group) per projection, one agent, batches.

``build`` wires a :class:`~esflow.readmodel.projection.Projection` and a decoder into a
:class:`~projections.transport.ProjectionApp`: a single agent with ``concurrency=1`` (per-partition
order is the projection's correctness) takes batches with ``take_events`` and hands each, off the
event loop, to a :class:`~esflow.readmodel.applier.BatchApplier`, which applies it in one Postgres
transaction with its checkpoints and retries through outages inside the loop: nothing but shutdown
escapes the loop, because Faust acks and skips a batch whose processing raised.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faust.types

from esflow.messaging.kafka import faust_credentials
from esflow.messaging.topics import event_topic
from esflow.readmodel.applier import BatchApplier, Stopping
from esflow.readmodel.projection import TP, Decoder, Projection, RawEvent
from esflow.readmodel.store import ProjectionStore
from esflow.settings import KafkaSettings, ProjectionSettings, TopicSettings
from projections.metrics import PrometheusObserver
from projections.transport import CheckpointSeekingConsumer, ProjectionApp, with_timeout

log = logging.getLogger("esflow.projections")


@dataclass
class Runtime:
    """A built projection: its Faust app, the agent's applier, the topics it reads, its data directory."""

    app: ProjectionApp
    applier: BatchApplier
    topics: tuple[str, ...]
    agent: Any
    datadir: Path
    """Faust's data directory, this process's own."""

    def remove_datadir(self) -> None:
        """Remove the Faust data directory (once the app has stopped: Faust keeps nothing there we need)."""
        shutil.rmtree(self.datadir, ignore_errors=True)


def event_topics(projection: Projection[Any], topics: TopicSettings) -> tuple[str, ...]:
    """The event topics a projection reads, with the configured prefix."""
    return tuple(event_topic(aggregate, topics) for aggregate in projection.aggregates)


def version_group(settings: ProjectionSettings, projection: str, version: int) -> str:
    """The consumer group (and Faust app id) of one projection version."""
    return f"{settings.group_prefix}-{projection}-v{version}"


def build(
    projection: Projection[Any],
    decoder: Decoder[Any],
    store: ProjectionStore,
    *,
    kafka: KafkaSettings,
    topics: TopicSettings,
    settings: ProjectionSettings,
    group_id: str | None = None,
) -> Runtime:
    """A Faust app that keeps ``projection`` up to date, exactly once in effect.

    ``group_id`` (also the Faust app id) defaults to ``<group_prefix>-<name>``; a projection version
    uses :func:`version_group` so each version has its own consumer group.
    """
    app_id = group_id or f"{settings.group_prefix}-{projection.name}"
    # Faust wants a data directory even without tables; keep it out of the working directory, and make
    # it this process's own, so removing it on stop cannot pull it from under another worker.
    root = Path(tempfile.gettempdir()) / "esflow-faust"
    root.mkdir(parents=True, exist_ok=True)
    datadir = Path(tempfile.mkdtemp(prefix=f"{app_id}-", dir=root))
    observer = PrometheusObserver()
    brokers = [f"kafka://{server.strip()}" for server in kafka.bootstrap_servers.split(",")]
    app = ProjectionApp(
        app_id,
        broker=brokers,
        broker_credentials=faust_credentials(kafka),
        # At-least-once on purpose: Faust's exactly_once has open bugs, and the Postgres checkpoint
        # gives exactly-once in effect; read_committed comes from the transport instead.
        processing_guarantee="at_least_once",
        autodiscover=False,
        store="memory://",
        datadir=datadir,
        web_enabled=settings.web_port > 0,
        web_port=settings.web_port or 6066,
        # No tables: the round-robin assignor, no standby replicas, no leader topic to create.
        table_standby_replicas=0,
        topic_disable_leader=True,
        topic_allow_declare=False,
        consumer_auto_offset_reset="earliest",
        stream_buffer_maxsize=max(4096, 2 * settings.batch_size),
        broker_max_poll_records=max(500, settings.batch_size),
        broker_commit_interval=2.0,
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=min(3.0, settings.session_timeout_s / 3),
        # Faust would otherwise flag a long Postgres outage (the batch retries in the agent) as a
        # stalled stream; the retry loop logs it already.
        stream_processing_timeout=max(300.0, settings.checkpoint_timeout_s),
    )
    applier = BatchApplier(store, projection, decoder, settings, observer=observer)

    async def checkpoints(tps: set[TP]) -> dict[TP, int]:
        return await asyncio.to_thread(store.checkpoints, projection.name, tps)

    app.checkpoint_source = with_timeout(checkpoints, settings.checkpoint_timeout_s)
    names = event_topics(projection, topics)
    channel = app.topic(
        *names, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"
    )

    async def settle(job: asyncio.Future[Any]) -> bool:
        """Wait for an applied batch; False when the applier gave up because the worker is stopping."""
        try:
            await asyncio.shield(job)
        except asyncio.CancelledError:
            # Shutdown: let the in-flight transaction commit (or give up its retries) before the
            # worker exits, so the last batch is not left to chance.
            applier.stop()
            with contextlib.suppress(Exception):
                await job
            raise
        except Stopping:
            return False
        return True

    async def project(stream: Any) -> None:
        # One batch is applied (in a thread) while Faust fills the next. Faust acks a batch as soon as
        # the loop moves on, so Kafka's committed offset may run ahead of Postgres: harmless, because a
        # restarted worker seeks to the Postgres checkpoint, never to Kafka's offset.
        pending: asyncio.Future[Any] | None = None
        try:
            async for events in stream.take_events(settings.batch_size, within=settings.batch_window_s):
                raws = [
                    RawEvent(
                        e.message.topic,
                        e.message.partition,
                        e.message.offset,
                        e.message.key,
                        e.message.value,
                        int(e.message.timestamp * 1000) if e.message.timestamp else None,
                    )
                    for e in events
                ]
                lag = _lag(app, raws)
                if pending is not None and not await settle(pending):
                    return
                pending = asyncio.ensure_future(asyncio.to_thread(applier.process, raws, lag=lag))
                for tp, value in lag.items():
                    observer.lag(projection.name, tp, value)
        finally:
            if pending is not None and not pending.done():
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await settle(pending)

    agent = app.agent(channel, name=f"{projection.name}-projector", concurrency=1)(project)
    return Runtime(app=app, applier=applier, topics=names, agent=agent, datadir=datadir)


def _lag(app: ProjectionApp, raws: list[RawEvent]) -> dict[TP, int]:
    """Records left in each partition after this batch, where the consumer knows its end."""
    last: dict[TP, int] = {}
    for raw in raws:
        last[raw.tp] = raw.offset
    lag: dict[TP, int] = {}
    consumer = app.consumer
    if not isinstance(consumer, CheckpointSeekingConsumer):  # pragma: no cover - ProjectionApp's own
        return lag
    for tp, offset in last.items():
        with contextlib.suppress(Exception):  # not assigned any more (a rebalance): no figure
            left = consumer.records_left(faust.types.TP(*tp), offset)
            if left is not None:
                lag[tp] = left
    return lag
