"""The pipeline watched from outside, through Kafka only: command outcomes per second and dead letters.

:class:`PipelineWatch` tails two topics on a daemon thread, read_committed, without a consumer group:

- ``command-results``, from a few minutes back: every answer and dead-letter report carries its status
  in a header (:data:`~esflow.messaging.results.HEADER_STATUS`), so counting them by the record
  timestamp gives accepted, rejected and dead-lettered commands per second without parsing a body.
  An answer re-sent for a repeated command id (:data:`~esflow.messaging.results.HEADER_REPLAYED`) counts
  as ``replayed``, not as a second acceptance.
- ``commands.dead-letter``, from its beginning: the exact number of dead letters it holds (within its
  retention) and the latest few with their reason, from the processor's headers
  (:mod:`esflow.messaging.deadletters`).

The results topic is the committed truth of what every processor instance decided, so the figures need
no list of processor metric endpoints, count each command once whichever instance answered it, and
agree with what senders saw. :func:`committed_ends` gives the partitions' last stable offsets, where a
read_committed reader (a projection) stops, for live lag.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    Consumer,
    IsolationLevel,
    KafkaError,
    Message,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, OffsetSpec

from esflow.messaging import results as rc
from esflow.messaging.deadletters import DeadLetter
from esflow.messaging.kafka import consumer_config
from esflow.messaging.topics import dead_letter_topic, results_topic
from esflow.settings import KafkaSettings, TopicSettings

log = logging.getLogger("esflow.watch")

OUTCOMES = ("accepted", "rejected", rc.REPORT_STATUS, "replayed")
"""The outcome names counted, in display order."""


@dataclass(frozen=True)
class Outcomes:
    """Command outcomes over the last seconds, and the dead letters, as of ``at`` (epoch seconds)."""

    at: float
    window_s: float
    per_second: dict[str, float]
    """Outcome -> commands per second over the last ``window_s`` seconds."""
    series: list[dict[str, int]]
    """One dict of outcome counts per second, oldest first, for the last ``len(series)`` seconds."""
    totals: dict[str, int]
    """Outcome -> commands counted since ``since`` (epoch seconds)."""
    since: float
    dead_letters_total: int
    """Records in the dead-letter topic (within its retention)."""
    latest_dead_letters: list[DeadLetter]
    """Newest first."""
    caught_up: bool
    """The tail has read both topics up to where they ended when it started."""
    error: str | None = None


@dataclass
class _State:
    buckets: dict[int, Counter[str]] = field(default_factory=dict)
    totals: Counter[str] = field(default_factory=Counter)
    dead_total: int = 0
    latest: deque[DeadLetter] = field(default_factory=lambda: deque(maxlen=10))
    pending_start: set[tuple[str, int]] = field(default_factory=set)
    error: str | None = None


class PipelineWatch:
    """Tails ``command-results`` and ``commands.dead-letter``; :meth:`outcomes` reads what it has seen.

    ``history_s``: how far back the results are read at start, and how long per-second counts are kept.
    """

    def __init__(
        self,
        kafka: KafkaSettings,
        topics: TopicSettings,
        *,
        history_s: int = 300,
        keep_dead_letters: int = 10,
    ) -> None:
        self.kafka = kafka
        self.results = results_topic(topics)
        self.dead_letters = dead_letter_topic(topics)
        self.history_s = history_s
        self.started_at = time.time()
        self._state = _State(latest=deque(maxlen=keep_dead_letters))
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start the tail thread (once)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="pipeline-watch", daemon=True)
            self._thread.start()

    @property
    def running(self) -> bool:
        """True while the tail thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the tail thread and close its consumer."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    # ----------------------------------------------------------------------------------------- read

    def outcomes(self, *, window_s: float = 10.0, series_s: int = 60, now: float | None = None) -> Outcomes:
        """Rates over the last ``window_s`` seconds, per-second counts of the last ``series_s`` seconds."""
        now = time.time() if now is None else now
        # The current second is still filling: rates and series end at the last whole one.
        last = int(now) - 1
        with self._lock:
            s = self._state
            series = [
                dict(s.buckets.get(second, Counter())) for second in range(last - series_s + 1, last + 1)
            ]
            window = [
                s.buckets.get(second, Counter()) for second in range(last - int(window_s) + 1, last + 1)
            ]
            per_second = {o: sum(c[o] for c in window) / max(1, int(window_s)) for o in OUTCOMES}
            return Outcomes(
                at=now,
                window_s=float(int(window_s)),
                per_second=per_second,
                series=[{o: c.get(o, 0) for o in OUTCOMES} for c in series],
                totals={o: s.totals[o] for o in OUTCOMES},
                since=self.started_at - self.history_s,
                dead_letters_total=s.dead_total,
                latest_dead_letters=list(reversed(s.latest)),
                caught_up=self._thread is not None and not s.pending_start,
                error=s.error,
            )

    # ----------------------------------------------------------------------------------------- tail

    def _run(self) -> None:
        consumer: Consumer | None = None
        try:
            while not self._stop.is_set():
                try:
                    if consumer is None:
                        consumer = self._open()
                    self._poll(consumer)
                except Exception as exc:  # the page shows the cause; the tail retries until stopped
                    log.warning("pipeline watch: %s", exc)
                    with self._lock:
                        self._state.error = str(exc) or repr(exc)
                    if consumer is not None:
                        consumer.close()
                        consumer = None
                    self._stop.wait(2.0)
        finally:
            if consumer is not None:
                consumer.close()

    def _open(self) -> Consumer:
        consumer = Consumer(
            consumer_config(
                self.kafka,
                f"esflow-watch-{uuid.uuid4().hex[:8]}",
                **{"enable.partition.eof": True, "client.id": "esflow-watch"},
            )
        )
        try:
            metadata = consumer.list_topics(timeout=10)
            missing = [t for t in (self.results, self.dead_letters) if t not in metadata.topics]
            if missing:
                raise RuntimeError(f"topic(s) {', '.join(missing)} missing: run `esflow topics apply`")
            # Results from history_s back (by timestamp); the dead-letter topic whole, to count it.
            # A restart after an error starts over, so the counts are reset with it.
            since_ms = int((time.time() - self.history_s) * 1000)
            wanted = [
                TopicPartition(self.results, p, since_ms) for p in metadata.topics[self.results].partitions
            ]
            starts = consumer.offsets_for_times(wanted, timeout=10)
            assignment = [TopicPartition(tp.topic, tp.partition, tp.offset if tp.offset >= 0 else OFFSET_END)
                          for tp in starts]  # fmt: skip
            assignment += [
                TopicPartition(self.dead_letters, p, OFFSET_BEGINNING)
                for p in metadata.topics[self.dead_letters].partitions
            ]
            consumer.assign(assignment)
        except Exception:
            consumer.close()
            raise
        with self._lock:
            self._state = _State(
                latest=deque(maxlen=self._state.latest.maxlen),
                pending_start={(tp.topic, tp.partition) for tp in assignment},
            )
        self.started_at = time.time()
        return consumer

    def _poll(self, consumer: Consumer) -> None:
        messages = consumer.consume(num_messages=1000, timeout=0.5)
        horizon = int(time.time()) - self.history_s
        with self._lock:
            s = self._state
            s.error = None
            for message in messages:
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        s.pending_start.discard((message.topic() or "", message.partition() or 0))
                        continue
                    if error.fatal() or not error.retriable():
                        raise RuntimeError(error.str())
                    s.error = error.str()
                    continue
                self._count(s, message)
            for second in [b for b in s.buckets if b < horizon]:
                del s.buckets[second]

    def _count(self, s: _State, message: Message) -> None:
        _kind, stamp_ms = message.timestamp()
        if message.topic() == self.dead_letters:
            s.dead_total += 1
            s.latest.append(DeadLetter.from_record(_headers(message), stamp_ms))
            return
        headers = dict(_headers(message))
        status = (headers.get(rc.HEADER_STATUS) or b"").decode()
        if status not in OUTCOMES:
            return  # not a result esflow wrote
        if headers.get(rc.HEADER_REPLAYED) == b"1":
            status = "replayed"
        s.totals[status] += 1
        s.buckets.setdefault(stamp_ms // 1000, Counter())[status] += 1


def _headers(message: Message) -> list[tuple[str, bytes | None]]:
    # A consumed record's headers are (name, bytes) pairs; the client's types also allow a dict and str.
    raw = message.headers() or []
    out: list[tuple[str, bytes | None]] = []
    for name, value in raw.items() if isinstance(raw, dict) else raw:
        out.append((name, value.encode() if isinstance(value, str) else value))
    return out


def committed_ends(
    admin: AdminClient, partitions: Iterable[tuple[str, int]], *, timeout_s: float = 5.0
) -> dict[tuple[str, int], int]:
    """The last stable offset of each (topic, partition): where a read_committed reader stops now.

    One request for all of them; a partition whose answer failed is left out (its lag is then unknown).
    """
    latest = OffsetSpec.latest()  # type: ignore[no-untyped-call]
    wanted = {TopicPartition(t, p): latest for t, p in set(partitions)}
    if not wanted:
        return {}
    futures = admin.list_offsets(
        wanted, isolation_level=IsolationLevel.READ_COMMITTED, request_timeout=timeout_s
    )
    ends: dict[tuple[str, int], int] = {}
    for tp, future in futures.items():
        try:
            ends[(tp.topic, tp.partition)] = int(future.result(timeout=timeout_s).offset)
        except Exception as exc:  # a missing topic or a leader moving: that partition's figure is unknown
            log.debug("list_offsets %s[%d]: %s", tp.topic, tp.partition, exc)
    return ends
