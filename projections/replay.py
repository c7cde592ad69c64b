"""The bulk replayer: a projection's event topics, from its store's checkpoints, in big batches, fast.

A blue-green rebuild (:mod:`projections.rebuild`) fills a new version's schema by replaying the event
topics from offset 0. Faust's per-message pipeline tops out far below what Postgres takes, so the replay
reads Kafka with a plain confluent-kafka consumer instead, but writes exactly what the live workers
write: every batch goes through :class:`~esflow.readmodel.applier.BatchApplier` (one Postgres
transaction with the checkpoints, outages retried, bad input dead-lettered or halting) with the same
:class:`~esflow.readmodel.projection.Projection` object.

How it reads:

- ``assign()`` on every partition of the projection's topics (no group, no rebalancing), read_committed,
  each from the store's checkpoint + 1 (the beginning when there is none): Postgres is the truth; the
  Kafka offsets of what was applied are committed asynchronously under ``group_id`` only so Kafka tools
  show the progress.
- "The end" of a partition is where librdkafka reports partition EOF: the last offset a read_committed
  consumer can reach, past commit markers and aborted records. The high watermark counts those too, so
  ``high watermark - next offset`` is only an estimate (it never reaches 0 after a transaction); it
  serves for ``lag_threshold > 0``, ETAs and ``projection_status.lag``, never for "fully caught up".

Why it is fast (see ``ops/bench/rebuild.py`` for the figures):

- batches of ``batch_size`` events (20,000), taken with ``consume(n)`` after a ``poll()`` for the first;
- two stages: the calling thread consumes and decodes batch k+1 while one worker thread applies batch
  k (the projection's fold and the COPY, then Postgres works on the other core with the GIL released).
  The worker's :class:`BatchApplier` receives the decoder's results through :class:`_Predecoded`, so
  its ``prepare`` makes the same items (and the same dead letters) without decoding twice;
- the cyclic garbage collector is paused for the run (:func:`_gc_paused`): with 20,000 decoded
  envelopes alive per batch, its automatic passes took 75-85% of the decoding time; it runs
  explicitly between batches instead.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, TIMESTAMP_NOT_AVAILABLE, Consumer, KafkaError, TopicPartition

from esflow.errors import KafkaOperationError, ProjectionError, ProjectionHalted, translate
from esflow.messaging.kafka import consumer_config, watermarks
from esflow.readmodel.applier import BatchApplier, Observer, Stopping
from esflow.readmodel.projection import TP, Decoded, Decoder, Projection, RawEvent
from esflow.readmodel.store import BatchResult, ProjectionStore
from esflow.settings import KafkaSettings, ProjectionSettings, TopicSettings
from projections.runtime import event_topics

log = logging.getLogger("esflow.projections")

_FIRST_WAIT_S = 0.2
"""Longest wait for the first record of a batch (also how often ``stop`` and the timeout are seen)."""
_LINGER_S = 0.05
"""After the first record, how long to wait for the rest of a batch that is not already buffered."""
_FULL_GC_EVERY_S = 30.0
"""Full collections while the collector is paused (young generations are collected every batch)."""


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


class _Predecoded:
    """A decoder that returns what the real decoder returned (or raises what it raised) for a record.

    The replayer decodes a batch in its own thread, ahead of the worker that applies it; the worker's
    :class:`BatchApplier` calls this instead, so it builds the very items it would have built.
    """

    def __init__(self) -> None:
        self.results: Mapping[int, Decoded[Any] | Exception] = {}

    def __call__(self, raw: RawEvent) -> Decoded[Any]:
        result = self.results[id(raw)]
        if isinstance(result, Exception):
            raise result
        return result


def _decode_all(decoder: Decoder[Any], raws: Sequence[RawEvent]) -> dict[int, Decoded[Any] | Exception]:
    """The decoder's result (or exception) for every record with a value, by ``id(raw)``."""
    out: dict[int, Decoded[Any] | Exception] = {}
    for raw in raws:
        if raw.value is None:
            continue  # prepare() rejects tombstones without calling the decoder
        try:
            out[id(raw)] = decoder(raw)
        except Exception as exc:  # untrusted bytes: the applier turns it into a dead letter
            out[id(raw)] = exc
    return out


_gc_lock = threading.Lock()
_gc_depth = 0
_gc_was_enabled = False


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause automatic garbage collection for the block (nested and concurrent uses are counted)."""
    global _gc_depth, _gc_was_enabled
    with _gc_lock:
        if _gc_depth == 0:
            _gc_was_enabled = gc.isenabled()
            gc.disable()
        _gc_depth += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_depth -= 1
            if _gc_depth == 0 and _gc_was_enabled:
                gc.enable()


@dataclass
class _Partition:
    """The replayer's view of one partition."""

    start: int
    """First offset read (checkpoint + 1, or the beginning)."""
    high: int = -1
    """Newest high watermark known (counts commit markers and aborted records)."""
    consumed: int = -1
    """Offset of the last record taken from Kafka."""
    applied: int = -1
    """Offset of the last record committed to Postgres (through a batch)."""
    at_end: bool = False
    """Partition EOF was reported after ``consumed``: nothing readable follows it right now."""

    def lag(self) -> int:
        """Records left after ``applied`` (0 exactly at the end; else from the high watermark)."""
        if self.at_end and self.applied >= self.consumed:
            return 0
        return max(0, self.high - self.applied - 1)


@dataclass
class _Batch:
    raws: list[RawEvent]
    decoded: dict[int, Decoded[Any] | Exception]
    last: dict[TP, int]
    lag: dict[TP, int]


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
        batch_size: int = 20_000,
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
        self._predecoded = _Predecoded()
        self.applier = self._new_applier()

    def _new_applier(self) -> BatchApplier:
        return BatchApplier(
            self.store, self.projection, self._predecoded, self.settings, observer=self.observer
        )

    # ------------------------------------------------------------------------------------ public

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

        ``stop`` makes it return once the batch in flight has committed; ``timeout_s`` raises
        :class:`ReplayTimeout` (after the batch in flight, whose retries are cut short). A partition
        the applier halts raises :class:`~esflow.errors.ProjectionHalted` once its batch committed.
        """
        if lag_threshold < 0:
            raise ProjectionError(f"lag_threshold must be >= 0, not {lag_threshold}")
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        # A fresh applier per run: halts and a stop request are the business of one run.
        self.applier = self._new_applier()
        consumer = Consumer(
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
        try:
            with _gc_paused():
                return self._run(consumer, lag_threshold, targets, progress, stop, deadline, timeout_s)
        finally:
            consumer.close()

    # ------------------------------------------------------------------------------------ internals

    def _partitions(self, consumer: Consumer) -> list[TP]:
        tps: list[TP] = []
        for topic in self.topics:
            try:
                meta = consumer.list_topics(topic, timeout=30).topics.get(topic)
            except Exception as exc:
                raise translate(exc, context=f"listing partitions of {topic}") from exc
            if meta is None or meta.error is not None or not meta.partitions:
                raise KafkaOperationError(
                    f"topic {topic} does not exist (projection {self.projection.name} reads it)",
                    hint="run `esflow topics apply`",
                )
            tps.extend((topic, p) for p in sorted(meta.partitions))
        return tps

    def _run(
        self,
        consumer: Consumer,
        lag_threshold: int,
        targets: Mapping[TP, int] | None,
        progress: Callable[[ReplayProgress], None] | None,
        stop: threading.Event | None,
        deadline: float | None,
        timeout_s: float | None,
    ) -> ReplayProgress:
        name = self.projection.name
        tps = self._partitions(consumer)
        if targets is not None:
            unknown = sorted(set(targets) - set(tps))
            if unknown:
                raise ProjectionError(
                    f"replay targets name partitions projection {name} does not read: {unknown}"
                )
        done_at = self.store.checkpoints(name, tps)
        state: dict[TP, _Partition] = {}
        for tp in tps:
            start = done_at.get(tp, -1) + 1
            part = _Partition(start=start, consumed=start - 1, applied=start - 1)
            _, part.high = watermarks(consumer, tp[0], tp[1])
            state[tp] = part
        report = ReplayProgress(checkpoints=dict(done_at), lag={tp: p.lag() for tp, p in state.items()})
        consumer.assign(
            [
                TopicPartition(t, p, state[(t, p)].start if (t, p) in done_at else OFFSET_BEGINNING)
                for t, p in tps
            ]
        )
        log.info(
            "replaying %s from %d checkpoint(s): %d partition(s), about %d events",
            name,
            len(done_at),
            len(tps),
            report.total_lag,
        )

        def finished() -> bool:
            if targets is not None:
                return all(report.checkpoints.get(tp, -1) >= offset for tp, offset in targets.items())
            return all(p.lag() <= lag_threshold for p in state.values())

        def timed_out() -> ReplayTimeout:
            goal = "reach its target offsets" if targets is not None else "catch up"
            return ReplayTimeout(
                f"replay of projection {name} did not {goal} within {timeout_s:.0f}s "
                f"({report.total_lag:,} events behind)",
                hint="is Kafka or Postgres slow or unreachable? the next run resumes from the checkpoints",
            )

        last_gc = time.monotonic()
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"replay-{name}")
        pending: tuple[Future[BatchResult], _Batch] | None = None
        try:
            while True:
                if pending is None and (finished() or (stop is not None and stop.is_set())):
                    return report
                if deadline is not None and time.monotonic() > deadline:
                    raise timed_out()
                stopping = stop is not None and stop.is_set()
                batch = None if stopping else self._take(consumer, state)
                if pending is not None:
                    future, applied = pending
                    pending = None
                    result = self._settle(future, deadline, timed_out)
                    self._record(consumer, state, report, applied, result)
                    if progress is not None:
                        progress(report)
                    if time.monotonic() - last_gc > _FULL_GC_EVERY_S:
                        gc.collect()
                        last_gc = time.monotonic()
                    if finished() or (stop is not None and stop.is_set()):
                        return report  # a batch taken meanwhile is dropped: it was not applied
                if batch is not None:
                    pending = (pool.submit(self._apply, batch), batch)
        finally:
            if pending is not None:
                # An error in this thread: let the batch in flight finish (commit or give up) first.
                with contextlib.suppress(Exception):
                    pending[0].result()
            pool.shutdown(wait=True)

    def _settle(
        self, future: Future[BatchResult], deadline: float | None, timed_out: Callable[[], ReplayTimeout]
    ) -> BatchResult:
        """The result of the batch in flight; past the deadline, its retries are cut short."""
        if deadline is not None:
            try:
                return future.result(timeout=max(0.0, deadline - time.monotonic()))
            except FutureTimeout:
                self.applier.stop()  # a retry loop gives up (Stopping); a batch in Postgres commits
                with contextlib.suppress(Stopping):
                    future.result()
                raise timed_out() from None
        return future.result()

    def _take(self, consumer: Consumer, state: dict[TP, _Partition]) -> _Batch | None:
        """Consume up to a batch (None when no record came) and decode it."""
        limit = self.batch_size
        first = consumer.poll(_FIRST_WAIT_S)
        if first is None:
            return None
        messages: list[Any] = [first]  # confluent-kafka types every getter as optional
        if limit > 1 and not all(p.at_end for p in state.values()):
            messages.extend(consumer.consume(limit - 1, _LINGER_S))
        raws: list[RawEvent] = []
        append = raws.append
        last: dict[TP, int] = {}
        # Partition EOF, and the partition's last record before it in this batch (-2: none).
        ends: dict[TP, int] = {}
        for msg in messages:
            err = msg.error()
            if err is not None:
                tp = (msg.topic(), msg.partition())
                if err.code() == KafkaError._PARTITION_EOF:
                    # The consumer queue keeps each partition's order: records before the EOF precede it.
                    ends[tp] = last.get(tp, -2)
                    continue
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
            if tp in state:
                state[tp].at_end = last.get(tp, -2) == before  # no record came after the EOF
        lag: dict[TP, int] = {}
        for tp, offset in last.items():
            part = state[tp]
            part.consumed = offset
            if tp not in ends:
                part.at_end = False
            with contextlib.suppress(Exception):
                _, high = consumer.get_watermark_offsets(TopicPartition(tp[0], tp[1]), cached=True)
                part.high = max(part.high, int(high))
            lag[tp] = 0 if part.at_end else max(0, part.high - offset - 1)
        if not raws:
            return None
        return _Batch(raws, _decode_all(self.decoder, raws), last, lag)

    def _consumer_error(self, tp: TP, err: KafkaError) -> None:
        if err.fatal() or err.code() in (
            KafkaError.UNKNOWN_TOPIC_OR_PART,
            KafkaError._UNKNOWN_PARTITION,
            KafkaError.TOPIC_AUTHORIZATION_FAILED,
        ):
            raise KafkaOperationError(f"replaying {self.projection.name} from {tp[0]}[{tp[1]}]: {err.str()}")
        log.warning("replay of %s: consumer reports %s (retrying)", self.projection.name, err.str())

    def _apply(self, batch: _Batch) -> BatchResult:
        self._predecoded.results = batch.decoded
        try:
            return self.applier.process(batch.raws, lag=batch.lag)
        finally:
            self._predecoded.results = {}

    def _record(
        self,
        consumer: Consumer,
        state: dict[TP, _Partition],
        report: ReplayProgress,
        batch: _Batch,
        result: BatchResult,
    ) -> None:
        report.batches += 1
        report.applied += result.applied
        report.skipped += result.skipped
        report.dead_lettered += result.dead_lettered
        report.checkpoints.update(result.checkpoints)
        halted = dict(self.applier.halted)
        for tp, offset in batch.last.items():
            if tp not in halted:
                state[tp].applied = offset
        for tp, part in state.items():
            report.lag[tp] = part.lag()
        commits = [TopicPartition(t, p, o + 1) for (t, p), o in result.checkpoints.items()]
        if commits:
            with contextlib.suppress(Exception):  # for Kafka tools only; Postgres holds the truth
                consumer.commit(offsets=commits, asynchronous=True)
        if halted:
            text = "; ".join(f"{t}[{p}]: {reason}" for (t, p), reason in sorted(halted.items()))
            raise ProjectionHalted(
                f"replay of projection {self.projection.name} halted: {text}",
                hint="fix the cause (see projection_status / projection_dead_letters), then run it again",
            )
