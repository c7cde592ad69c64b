"""The Faust side of the projections: one app (one consumer group) per worker process, one agent, batches.

``build`` wires one or more :class:`~esflow.readmodel.projection.Projection` objects (each with its own
store, the schema of the version it serves) and a decoder into a
:class:`~projections.transport.ProjectionApp`: a single agent with ``concurrency=1`` (per-partition
order is the projections' correctness) reads every event topic any of them reads and takes batches
with ``take_events``. Each batch is decoded once (when more than one projection is served), then
handed, off the event loop, in turn, to every projection's :class:`~esflow.readmodel.applier.BatchApplier`
(the records of the topics it reads), which applies it in one Postgres transaction with that
projection's checkpoints and retries through outages inside the loop: nothing but shutdown escapes
the loop, because Faust acks and skips a batch whose processing raised. The projections apply a batch
in turn in one thread; the next batch is fetched meanwhile.

A projection that serves alone is the isolated worker; several in one process are a projector host
(docs/readmodels.md, "One projector host"): each keeps its own checkpoints, version schema, dead
letters and halts, and the consumer seeks each partition to the lowest checkpoint of the projections
reading it, so the ones further ahead skip what they already applied.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faust.types

from esflow.messaging.kafka import faust_credentials
from esflow.readmodel.applier import BatchApplier, Stopping
from esflow.readmodel.projection import TP, Decoder, Projection, RawEvent
from esflow.readmodel.store import ProjectionStore
from esflow.settings import KafkaSettings, ProjectionSettings, TopicSettings
from projections.batching import take_adaptive
from projections.fanout import FanOut, Member
from projections.fanout import event_topics as event_topics  # where callers have always found it
from projections.metrics import PrometheusObserver
from projections.transport import CheckpointSeekingConsumer, ProjectionApp, with_timeout

log = logging.getLogger("esflow.projections")


@dataclass
class Runtime:
    """A built worker: its Faust app, each projection's applier, the topics it reads, its data directory."""

    app: ProjectionApp
    appliers: dict[str, BatchApplier]
    """Each served projection's applier, by projection name (in the order given to :func:`build`)."""
    topics: tuple[str, ...]
    agent: Any
    datadir: Path
    """Faust's data directory, this process's own."""

    @property
    def applier(self) -> BatchApplier:
        """The applier of the first (for an isolated worker: the only) projection."""
        return next(iter(self.appliers.values()))

    def stop(self) -> None:
        """Make every applier's waiting retries give up (the worker is shutting down)."""
        for applier in self.appliers.values():
            applier.stop()

    def remove_datadir(self) -> None:
        """Remove the Faust data directory (once the app has stopped: Faust keeps nothing there we need)."""
        shutil.rmtree(self.datadir, ignore_errors=True)


def version_group(settings: ProjectionSettings, projection: str, version: int) -> str:
    """The consumer group (and Faust app id) of one projection version."""
    return f"{settings.group_prefix}-{projection}-v{version}"


def host_group(settings: ProjectionSettings, served: Mapping[str, int]) -> str:
    """The consumer group (and Faust app id) of a host serving these projection versions.

    One projection alone is its version's own group (:func:`version_group`). Hosts serving the same
    versions share a group and split the partitions; a version switch of any of them makes a new group.
    """
    if len(served) == 1:
        ((name, version),) = served.items()
        return version_group(settings, name, version)
    members = "-".join(f"{name}-v{version}" for name, version in sorted(served.items()))
    return f"{settings.group_prefix}-host-{members}"


def build(
    projection: Projection[Any],
    decoder: Decoder[Any],
    store: ProjectionStore,
    *,
    kafka: KafkaSettings,
    topics: TopicSettings,
    settings: ProjectionSettings,
    group_id: str | None = None,
    on_behind: Callable[[int], None] | None = None,
) -> Runtime:
    """A Faust app that keeps ``projection`` up to date in ``store``: the isolated worker.

    ``group_id`` (also the Faust app id) defaults to ``<group_prefix>-<name>``; a projection version
    uses :func:`version_group` so each version has its own consumer group.
    """
    return build_host(
        [Member(projection, store)],
        decoder,
        kafka=kafka,
        topics=topics,
        settings=settings,
        group_id=group_id,
        on_behind=on_behind,
    )


def build_host(
    members: Sequence[Member],
    decoder: Decoder[Any],
    *,
    kafka: KafkaSettings,
    topics: TopicSettings,
    settings: ProjectionSettings,
    group_id: str | None = None,
    on_behind: Callable[[int], None] | None = None,
) -> Runtime:
    """A Faust app that keeps every member's projection up to date, exactly once in effect.

    Each projection's checkpoints commit with its rows, in its own store. ``group_id`` (also the Faust
    app id) defaults to ``<group_prefix>-<first name>``; hosts use :func:`host_group`. ``on_behind`` is
    called with the events left after a batch when they exceed ``settings.catchup_threshold`` (when that
    is not 0) after an earlier batch was within it: the worker then hands the backlog to the bulk
    catch-up (:mod:`projections.catchup`).
    """
    if not members:
        raise ValueError("a projection worker needs at least one projection")
    first = members[0].projection.name
    app_id = group_id or f"{settings.group_prefix}-{first}"
    # Faust wants a data directory even without tables; keep it out of the working directory, and make
    # it this process's own, so removing it on stop cannot pull it from under another worker.
    root = Path(tempfile.gettempdir()) / "esflow-faust"
    root.mkdir(parents=True, exist_ok=True)
    datadir = Path(tempfile.mkdtemp(prefix=f"{app_id[:100]}-", dir=root))
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
    fanout = FanOut(members, decoder, settings, topics, observer=observer)
    appliers = fanout.appliers

    async def checkpoints(tps: set[TP]) -> dict[TP, int]:
        # A partition is read from the lowest checkpoint of the projections reading it; the others
        # skip what they already applied (their own checkpoint rows say so).
        return await asyncio.to_thread(fanout.lowest_checkpoints, tps)

    app.checkpoint_source = with_timeout(checkpoints, settings.checkpoint_timeout_s)
    names = fanout.topics
    channel = app.topic(
        *names, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"
    )

    async def apply_all(raws: list[RawEvent], lag: dict[TP, int]) -> None:
        """Every projection applies its part of the batch, in turn, in one thread; Stopping if one stops.

        In turn rather than in parallel threads: eight applier threads contending for the GIL starved
        the event loop that feeds the batches; at 1,100 commands/s command->visible p99 went from
        2.0-2.8 s (parallel) to 0.63-0.71 s (in turn), and at 200/s from 100-106 to 90-93 ms.
        """

        def in_turn() -> list[BaseException | None]:
            if fanout.shared is not None:
                fanout.load(raws)
            outcomes: list[BaseException | None] = []
            for applier, mine, their_lag in fanout.shares(raws, lag):
                # Every projection finishes (commits or gives up) before the outcome is judged: a
                # projection's transaction is never left running behind the next batch.
                try:
                    applier.process(mine, lag=their_lag)
                    outcomes.append(None)
                except BaseException as exc:  # judged below, after all of them ran
                    outcomes.append(exc)
            return outcomes

        for outcome in await asyncio.to_thread(in_turn):
            if outcome is not None:
                raise outcome

    async def settle(job: asyncio.Future[Any]) -> bool:
        """Wait for an applied batch; False when an applier gave up because the worker is stopping."""
        try:
            await asyncio.shield(job)
        except asyncio.CancelledError:
            # Shutdown: let the in-flight transactions commit (or give up their retries) before the
            # worker exits, so the last batch is not left to chance.
            fanout.stop()
            with contextlib.suppress(Exception):
                await job
            raise
        except Stopping:
            return False
        return True

    threshold = settings.catchup_threshold if on_behind is not None else 0

    async def project(stream: Any) -> None:
        # One batch is applied (in threads) while Faust fills the next. Faust acks a batch as soon as
        # the loop moves on, so Kafka's committed offset may run ahead of Postgres: harmless, because a
        # restarted worker seeks to the Postgres checkpoints, never to Kafka's offset.
        pending: asyncio.Future[Any] | None = None
        armed = False
        try:
            batches = take_adaptive(stream, settings.batch_size, settings.batch_linger_s, lambda: pending)
            async for events in batches:
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
                pending = asyncio.ensure_future(apply_all(raws, lag))
                for tp, value in lag.items():
                    for name, topics_read in fanout.reads.items():
                        if tp[0] in topics_read:
                            observer.lag(name, tp, value)
                if threshold and on_behind is not None:
                    left = sum(lag.values())
                    # Armed once the tail was within the threshold: a worker that starts behind (or is
                    # still working off what arrived during its catch-up) does not restart in a loop.
                    if left <= threshold:
                        armed = True
                    elif armed:
                        on_behind(left)
        finally:
            if pending is not None and not pending.done():
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await settle(pending)

    agent_name = f"{first}-projector" if len(members) == 1 else "host-projector"
    agent = app.agent(channel, name=agent_name, concurrency=1)(project)
    return Runtime(app=app, appliers=appliers, topics=names, agent=agent, datadir=datadir)


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
