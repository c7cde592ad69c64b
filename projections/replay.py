"""The bulk replayer: a projection's event topics, from its store's checkpoints, in big batches, fast.

A blue-green rebuild (:mod:`projections.rebuild`) fills a new version's schema by replaying the event
topics from offset 0. Faust's per-message pipeline tops out far below what Postgres takes, so the replay
reads Kafka with plain confluent-kafka consumers instead, but writes exactly what the live workers
write: every batch goes through :class:`~esflow.readmodel.applier.BatchApplier` (decoding, one Postgres
transaction with the checkpoints, outages retried, bad input dead-lettered or halting) with the same
:class:`~esflow.readmodel.projection.Projection` object.

How it reads:

- ``assign()`` on every partition of the projection's topics (no group, no rebalancing), read_committed,
  each from the store's checkpoint + 1 (the log's start when there is none): Postgres is the truth; the
  Kafka offsets of what was applied are committed asynchronously under ``group_id`` only so that Kafka
  tools show the progress.
- "The end" of a partition is where librdkafka reports partition EOF: the last offset a read_committed
  consumer can reach, past commit markers and aborted records. The high watermark counts those too, so
  ``high watermark - next offset`` is only an estimate (it never reaches 0 after a transaction); it
  serves ``lag_threshold > 0``, ETAs and ``projection_status.lag``, never "fully caught up".

Why it is fast (``ops/bench/rebuild.py`` measures it; the README has the figures):

- batches of ``batch_size`` events (50,000), taken with one ``poll()`` for the first record and
  ``consume(n)`` for the rest;
- the cyclic garbage collector is paused for the run (:func:`esflow.gctune.paused`): with a batch of
  decoded envelopes alive, its automatic passes took most of the decoding time; a full collection
  runs every half minute instead;
- decoding (the codec) and the projections' folds are pure Python, so one process is bound by the GIL,
  and a thread that decodes ahead of the applying one made it slower, not faster. A large replay is therefore
  split by partition over a few forked processes (one per CPU, :func:`_shards`), each with its own
  consumer, applier and connections; they apply disjoint partitions, exactly like several live workers
  of one projection (checkpoint rows per partition; cross-partition read models use commutative
  upserts in key order). The calling process only merges their progress
  (:mod:`projections.replay_processes` runs them). Small replays (a catch-up before a switch, tests)
  stay in-process.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, Consumer, KafkaError, TopicPartition

from esflow import gctune
from esflow.errors import KafkaOperationError, ProjectionError, ProjectionHalted, translate
from esflow.messaging.kafka import consumer_config, watermarks
from esflow.readmodel.applier import BatchApplier, Observer, Stopping
from esflow.readmodel.projection import TP, Decoder, Projection, RawEvent, records_left
from esflow.readmodel.store import BatchResult, ProjectionStore
from esflow.settings import KafkaSettings, ProjectionSettings, TopicSettings
from projections.fanout import FanOut, Member, event_topics
from projections.replay_processes import Child, run_forked

log = logging.getLogger("esflow.projections")

_FIRST_WAIT_S = 0.2
"""Longest wait for the first record of a batch (also how often ``stop`` and the deadline are seen)."""
_LINGER_S = 0.05
"""After the first record, how long to wait for the rest of a batch that is not already buffered."""
_FULL_GC_EVERY_S = 30.0
"""How often the paused garbage collector runs a full collection (reference cycles are rare here)."""
_EVENTS_PER_PROCESS = 50_000
"""Below this many events per process, forking and connecting costs more than it saves."""


class ReplayTimeout(ProjectionError):
    """A replay did not reach its goal (caught up, or the target offsets) within its time limit."""


@dataclass
class ReplayProgress:
    """Where a replay stands; handed to the ``progress`` callback after every batch."""

    applied: int = 0
    """Events written through the projection."""
    skipped: int = 0
    """Events at or below their partition's checkpoint (already applied)."""
    dead_lettered: int = 0
    batches: int = 0
    started: float = field(default_factory=time.monotonic)
    lag: dict[TP, int] = field(default_factory=dict)
    """Events left per partition (best estimate: 0 exactly once the partition's end was reached)."""
    checkpoints: dict[TP, int] = field(default_factory=dict)
    """The store's checkpoint (last applied offset) per partition."""

    @property
    def total_lag(self) -> int:
        """Events left in all partitions."""
        return sum(self.lag.values())

    @property
    def events_per_s(self) -> float:
        """Events handled (applied, skipped or dead-lettered) per second since the start."""
        elapsed = time.monotonic() - self.started
        done = self.applied + self.skipped + self.dead_lettered
        return done / elapsed if elapsed > 0 else 0.0


@dataclass(frozen=True)
class _Applied:
    """What one batch did, as a shard reports it (picklable: crosses from a replay process)."""

    applied: int
    skipped: int
    dead_lettered: int
    checkpoints: dict[TP, int]
    lag: dict[TP, int]


def _merge(report: ReplayProgress, done: _Applied) -> None:
    report.batches += 1
    report.applied += done.applied
    report.skipped += done.skipped
    report.dead_lettered += done.dead_lettered
    report.checkpoints.update(done.checkpoints)
    report.lag.update(done.lag)


@dataclass
class _Partition:
    """A shard's view of one partition."""

    high: int = -1
    """Newest high watermark known (counts commit markers and aborted records)."""
    applied: int = -1
    """Offset of the last record handled by a committed batch (or the checkpoint at the start)."""
    consumed: int = -1
    """Offset of the last record taken from Kafka."""
    at_end: bool = False
    """Partition EOF was reported after ``consumed``: nothing readable follows it right now."""

    def lag(self) -> int:
        """Records left after ``applied`` (0 exactly at the end; else from the high watermark)."""
        if self.at_end and self.applied >= self.consumed:
            return 0
        return max(0, self.high - self.applied - 1)


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _shards(parts: Mapping[TP, _Partition], work: Mapping[TP, int], count: int) -> list[list[TP]]:
    """Split the partitions into ``count`` groups of about equal work (largest first, to the lightest)."""
    groups: list[list[TP]] = [[] for _ in range(count)]
    loads = [0] * count
    for tp in sorted(parts, key=lambda tp: (-work.get(tp, 0), tp)):
        lightest = loads.index(min(loads))
        groups[lightest].append(tp)
        loads[lightest] += work.get(tp, 0)
    return [sorted(g) for g in groups if g]


class Replayer:
    """Replays a projection's event topics into its store from the store's own checkpoints, in big batches."""

    def __init__(
        self,
        projection: Projection[Any],
        decoder: Decoder[Any],
        store: ProjectionStore,
        *,
        kafka: KafkaSettings,
        topics: TopicSettings,
        group_id: str,
        settings: ProjectionSettings | None = None,
        batch_size: int = 50_000,
        observer: Observer | None = None,
    ) -> None:
        if batch_size < 1:
            raise ProjectionError(f"batch_size must be at least 1, not {batch_size}")
        self.projection = projection
        self.decoder = decoder
        self.store = store
        self.kafka = kafka
        self.topics = event_topics(projection, topics)
        self.group_id = group_id
        self.settings = settings or ProjectionSettings()
        self.batch_size = batch_size
        self.observer = observer
        self._processes: int | None = None
        """Replay processes; None: one per CPU for a large replay, in-process for a small one."""
        self._used_processes = 0
        """How many the last run used (the bench prints it)."""
        self._fanout: FanOut | None = None
        """Several projections fed from this one replay (:meth:`for_members`)."""

    @classmethod
    def for_members(
        cls, members: Sequence[Member], decoder: Decoder[Any], *, topics: TopicSettings, **options: Any
    ) -> Replayer:
        """One replay feeding several projections (a host's catch-up): each record read and decoded once.

        Each projection applies its part of every batch into its own store, one after another, from the
        lowest checkpoint of the projections reading each partition; ``options`` are the constructor's.
        """
        first = members[0]
        replayer = cls(first.projection, decoder, first.store, topics=topics, **options)
        if len(members) > 1:
            fanout = FanOut(members, decoder, replayer.settings, topics, observer=replayer.observer)
            replayer._fanout = fanout
            replayer.topics = fanout.topics
        return replayer

    @property
    def name(self) -> str:
        """The projection's name (the projections', joined by ``+``, for several)."""
        return self._fanout.name if self._fanout is not None else self.projection.name

    def _applier(self, observer: Observer | None) -> BatchApplier | FanOut:
        if self._fanout is not None:
            return self._fanout
        return BatchApplier(self.store, self.projection, self.decoder, self.settings, observer=observer)

    def _checkpoints(self, tps: list[TP]) -> dict[TP, int]:
        if self._fanout is not None:
            return self._fanout.lowest_checkpoints(set(tps))
        return self.store.checkpoints(self.projection.name, tps)

    # ------------------------------------------------------------------------------------ public

    def behind(self) -> dict[TP, int]:
        """Events left in each partition after the store's checkpoint (from the high watermarks).

        An upper bound: commit markers and aborted records count too (see the module docstring).
        """
        _, report = self._start()
        return report.lag

    def run(
        self,
        *,
        lag_threshold: int = 0,
        targets: Mapping[TP, int] | None = None,
        progress: Callable[[ReplayProgress], None] | None = None,
        stop: threading.Event | None = None,
        timeout_s: float | None = None,
    ) -> ReplayProgress:
        """Replay until caught up, or until the ``targets`` are reached.

        Without ``targets``: until every partition is within ``lag_threshold`` events of its end (0: at
        the end a read_committed consumer can reach now). With them: until every listed partition's
        checkpoint is at or past its target offset.

        ``stop`` makes it return once the batches in flight have committed; ``timeout_s`` raises
        :class:`ReplayTimeout` (after the batches in flight, whose retries are cut short). A partition
        the applier halts raises :class:`~esflow.errors.ProjectionHalted` once its batch committed.
        """
        if lag_threshold < 0:
            raise ProjectionError(f"lag_threshold must be >= 0, not {lag_threshold}")
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        name = self.name
        parts, report = self._start()
        if targets is not None:
            unknown = sorted(set(targets) - set(parts))
            if unknown:
                raise ProjectionError(
                    f"replay targets name partitions projection {name} does not read: {unknown}"
                )
            work = {tp: max(0, o - report.checkpoints.get(tp, -1)) for tp, o in targets.items()}
        else:
            work = {tp: p.lag() for tp, p in parts.items()}
        processes = self._processes or min(_cpus(), max(1, sum(work.values()) // _EVENTS_PER_PROCESS))
        shards = _shards(parts, work, max(1, min(processes, len(parts))))
        log.info(
            "replaying %s: %d partition(s) from %d checkpoint(s), about %d events, %d process(es)",
            name,
            len(parts),
            len(report.checkpoints),
            sum(work.values()),
            len(shards),
        )
        goal = _Goal(lag_threshold, targets)

        def timed_out() -> ReplayTimeout:
            what = "reach its target offsets" if targets is not None else "catch up"
            return ReplayTimeout(
                f"replay of projection {name} did not {what} within {timeout_s:.0f}s "
                f"({report.total_lag:,} events behind)",
                hint="is Kafka or Postgres slow or unreachable? the next run resumes from the checkpoints",
            )

        self._used_processes = len(shards)
        with gctune.paused():
            if len(shards) == 1:
                return self._run_here(parts, goal, report, progress, stop, deadline, timed_out)
            return self._run_forked(shards, parts, goal, report, progress, stop, deadline, timed_out)

    # ------------------------------------------------------------------------------------ set-up

    def _consumer(self) -> Consumer:
        return Consumer(
            consumer_config(
                self.kafka,
                self.group_id,
                **{
                    "enable.partition.eof": True,
                    "fetch.wait.max.ms": 100,
                    "max.partition.fetch.bytes": 8 * 1024 * 1024,
                    "queued.min.messages": 4 * self.batch_size,
                },
            )
        )

    def _start(self) -> tuple[dict[TP, _Partition], ReplayProgress]:
        """Every partition with its checkpoint and high watermark (the metadata client is closed again)."""
        name = self.name
        consumer = self._consumer()
        try:
            tps: list[TP] = []
            for topic in self.topics:
                try:
                    meta = consumer.list_topics(topic, timeout=30).topics.get(topic)
                except Exception as exc:
                    raise translate(exc, context=f"listing partitions of {topic}") from exc
                if meta is None or meta.error is not None or not meta.partitions:
                    raise KafkaOperationError(
                        f"topic {topic} does not exist (projection {name} reads it)",
                        hint="run `esflow topics apply`",
                    )
                tps.extend((topic, p) for p in sorted(meta.partitions))
            done = self._checkpoints(tps)
            parts: dict[TP, _Partition] = {}
            for tp in tps:
                low, high = watermarks(consumer, tp[0], tp[1])
                # Without a checkpoint, start at the log's first offset: an explicit offset, because
                # OFFSET_BEGINNING costs librdkafka an extra lookup (half a second) per partition.
                at = done.get(tp, low - 1)
                parts[tp] = _Partition(high=high, applied=at, consumed=at)
        finally:
            consumer.close()
        report = ReplayProgress(checkpoints=dict(done), lag={tp: p.lag() for tp, p in parts.items()})
        return parts, report

    # ------------------------------------------------------------------------------------ in-process

    def _run_here(
        self,
        parts: dict[TP, _Partition],
        goal: _Goal,
        report: ReplayProgress,
        progress: Callable[[ReplayProgress], None] | None,
        stop: threading.Event | None,
        deadline: float | None,
        timed_out: Callable[[], ReplayTimeout],
    ) -> ReplayProgress:
        applier = self._applier(self.observer)
        # Past the deadline, a batch stuck in its retry loop (Postgres down) gives up with Stopping.
        watchdog = None if deadline is None else threading.Timer(deadline - time.monotonic(), applier.stop)
        if watchdog is not None:
            watchdog.daemon = True
            watchdog.start()

        def applied(done: _Applied) -> None:
            _merge(report, done)
            if progress is not None:
                progress(report)

        def should_stop() -> bool:
            if deadline is not None and time.monotonic() > deadline:
                raise timed_out()
            return stop is not None and stop.is_set()

        try:
            report.lag.update(_Shard(self, parts, applier, goal).run(should_stop, applied))
        except Stopping:
            raise timed_out() from None
        finally:
            if watchdog is not None:
                watchdog.cancel()
        return report

    # ------------------------------------------------------------------------------------ forked

    def _run_forked(
        self,
        shards: list[list[TP]],
        parts: dict[TP, _Partition],
        goal: _Goal,
        report: ReplayProgress,
        progress: Callable[[ReplayProgress], None] | None,
        stop: threading.Event | None,
        deadline: float | None,
        timed_out: Callable[[], ReplayTimeout],
    ) -> ReplayProgress:
        # The Kafka client of _start() is closed by now, so no librdkafka thread of ours is forked
        # mid-operation.
        def work(child: Child[_Applied]) -> dict[TP, int]:
            # Connections of the parent's pool belong to the parent: never touch them here.
            if self._fanout is not None:
                self._fanout.dispose_inherited()
            else:
                self.store.engine.dispose(close=False)
            applier = self._applier(child.observer)
            child.on_abort(applier.stop)
            shard = {tp: parts[tp] for tp in shards[child.index]}
            return _Shard(self, shard, applier, goal).run(child.should_stop, child.report)

        def batch(done: _Applied) -> None:
            _merge(report, done)
            if progress is not None:
                progress(report)

        expired = run_forked(
            len(shards),
            work,
            projection=self.name,
            on_batch=batch,
            on_finished=report.lag.update,
            observer=self.observer,
            stop=stop,
            deadline=deadline,
            known_errors={"ReplayTimeout": ReplayTimeout},
        )
        if expired:
            raise timed_out()
        return report


@dataclass(frozen=True)
class _Goal:
    lag_threshold: int
    targets: Mapping[TP, int] | None


class _Shard:
    """Reads and applies some partitions, one batch after another (in this process)."""

    def __init__(
        self,
        replayer: Replayer,
        parts: dict[TP, _Partition],
        applier: BatchApplier | FanOut,
        goal: _Goal,
    ) -> None:
        self.replayer = replayer
        self.name = replayer.name
        self.parts = parts
        self.applier = applier
        self.batch_size = replayer.batch_size
        targets = goal.targets
        self.targets = None if targets is None else {tp: o for tp, o in targets.items() if tp in parts}
        self.lag_threshold = goal.lag_threshold

    def finished(self) -> bool:
        if self.targets is not None:
            return all(self.parts[tp].applied >= offset for tp, offset in self.targets.items())
        return all(p.lag() <= self.lag_threshold for p in self.parts.values())

    def lags(self) -> dict[TP, int]:
        """Events left per partition of the shard, as far as it knows."""
        return {tp: p.lag() for tp, p in self.parts.items()}

    def run(self, should_stop: Callable[[], bool], applied: Callable[[_Applied], None]) -> dict[TP, int]:
        """Replay until finished or asked to stop; the lags at the end."""
        consumer = self.replayer._consumer()
        try:
            # From the checkpoint + 1 (below the log start after retention: auto.offset.reset=earliest).
            consumer.assign([TopicPartition(t, p, part.applied + 1) for (t, p), part in self.parts.items()])
            last_gc = time.monotonic()
            while not self.finished() and not should_stop():
                batch = self._take(consumer)
                if batch is None:
                    continue
                raws, lag = batch
                result = self.applier.process(raws, lag=lag)
                applied(self._record(consumer, raws, result))
                if self.applier.halted:
                    text = "; ".join(
                        f"{t}[{p}]: {why}" for (t, p), why in sorted(self.applier.halted.items())
                    )
                    raise ProjectionHalted(
                        f"replay of projection {self.name} halted: {text}",
                        hint="fix the cause (projection_status, projection_dead_letters), then run it again",
                    )
                if time.monotonic() - last_gc > _FULL_GC_EVERY_S:
                    gc.collect()
                    last_gc = time.monotonic()
            # The end of a partition may be reported after its last batch (a poll without records).
            return self.lags()
        finally:
            consumer.close()

    def _take(self, consumer: Consumer) -> tuple[list[RawEvent], dict[TP, int]] | None:
        """Consume up to a batch (None when no record came) and the lag after it per partition."""
        first = consumer.poll(_FIRST_WAIT_S)
        if first is None:
            return None
        messages: list[Any] = [first]  # confluent-kafka types every getter as optional
        if self.batch_size > 1 and not all(p.at_end for p in self.parts.values()):
            messages.extend(consumer.consume(self.batch_size - 1, _LINGER_S))
        raws: list[RawEvent] = []
        append = raws.append
        last: dict[TP, int] = {}
        # Partitions that reported EOF, with their last record before it in this batch (-2: none).
        ends: dict[TP, int] = {}
        for msg in messages:
            err = msg.error()
            if err is not None:
                tp = (msg.topic(), msg.partition())
                if err.code() == KafkaError._PARTITION_EOF:
                    # The consumer queue keeps each partition's order: its records precede its EOF.
                    ends[tp] = last.get(tp, -2)
                else:
                    self._consumer_error(tp, err)
                continue
            topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
            kind, ts = msg.timestamp()
            append(
                RawEvent(
                    topic,
                    partition,
                    offset,
                    msg.key(),
                    msg.value(),
                    None if kind == TIMESTAMP_NOT_AVAILABLE else ts,
                )
            )
            last[(topic, partition)] = offset
        for tp, before in ends.items():
            if tp in self.parts:
                self.parts[tp].at_end = last.get(tp, -2) == before  # no record came after the EOF
        lag: dict[TP, int] = {}
        for tp, offset in last.items():
            part = self.parts[tp]
            part.consumed = offset
            if tp not in ends:
                part.at_end = False
            with contextlib.suppress(Exception):
                _, high = consumer.get_watermark_offsets(TopicPartition(tp[0], tp[1]), cached=True)
                part.high = max(part.high, int(high))
            left = records_left(offset, part.high, at_end=part.at_end)
            if left is not None:
                lag[tp] = left
        return (raws, lag) if raws else None

    def _consumer_error(self, tp: TP, err: KafkaError) -> None:
        if err.fatal() or err.code() in (
            KafkaError.UNKNOWN_TOPIC_OR_PART,
            KafkaError._UNKNOWN_PARTITION,
            KafkaError.TOPIC_AUTHORIZATION_FAILED,
        ):
            raise KafkaOperationError(f"replaying {self.name} from {tp[0]}[{tp[1]}]: {err.str()}")
        log.warning("replay of %s: consumer reports %s (retrying)", self.name, err.str())

    def _record(self, consumer: Consumer, raws: list[RawEvent], result: BatchResult) -> _Applied:
        halted = self.applier.halted
        last: dict[TP, int] = {}
        for raw in raws:
            last[(raw.topic, raw.partition)] = raw.offset
        for tp, offset in last.items():
            if tp not in halted:
                self.parts[tp].applied = offset
        commits = [TopicPartition(t, p, o + 1) for (t, p), o in result.checkpoints.items()]
        if commits:
            with contextlib.suppress(Exception):  # for Kafka tools only; Postgres holds the truth
                consumer.commit(offsets=commits, asynchronous=True)
        return _Applied(
            result.applied,
            result.skipped,
            result.dead_lettered,
            dict(result.checkpoints),
            self.lags(),
        )
