"""The scheduler: delivers scheduled commands (``send --at``) when due, on the transactional shell.

It reads ``scheduled-commands`` (keyed by aggregate id) and keeps each command that is not yet due in the
compacted, co-partitioned ``scheduled-commands.pending`` (keyed by the command's source position), written
in the same transaction as the consumed offsets; a due command goes to its command topic together with
the tombstone of its pending record. So a SIGKILL or a rebalance loses none (the new owner loads the
pending partition on assignment) and delivers none twice from one schedule record: a transaction that
delivered it also deleted it. The command is delivered byte for byte, keeping its command id, so even a
client's own re-send is absorbed by the processor's idempotency. Due commands go out ordered by (due
time, source offset): one aggregate's commands share a partition, so they keep their order.

A record that names no valid schedule or a topic that is not a command topic goes to the dead-letter
topic (the scheduler must not become a way to write into event or result topics).
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from esflow.domain.aggregates import AGGREGATES
from esflow.messaging import results as rc
from esflow.messaging import topics as topic_names
from esflow.messaging.deadletters import (
    DLQ_ERROR,
    DLQ_OFFSET,
    DLQ_PARTITION,
    DLQ_PROCESSOR,
    DLQ_REASON,
    DLQ_TOPIC,
)
from esflow.messaging.kafka import read_to_end
from esflow.messaging.scheduling import read_schedule, state_headers
from esflow.settings import SchedulerSettings, Settings
from processors.loop import Incoming, LoopOptions, Outgoing, TransactionalLoop
from processors.metrics import Metrics

log = logging.getLogger("esflow.scheduler")


@dataclass(order=True, frozen=True, slots=True)
class Pending:
    """One scheduled command waiting in the scheduler's state."""

    due: float
    """Epoch seconds."""
    partition: int
    offset: int
    """Position of its source record: orders ties, and its ``state_key``."""
    target: str = field(compare=False)
    key: bytes | None = field(compare=False)
    value: bytes | None = field(compare=False)
    headers: tuple[tuple[str, bytes], ...] = field(compare=False)
    """The command's own headers."""

    @property
    def state_key(self) -> bytes:
        """Its key in ``scheduled-commands.pending``."""
        return f"{self.partition}:{self.offset}".encode()


LoadPending = Callable[[int], Iterable[Incoming]]
"""The committed records of one pending-state partition, oldest first (the step's only Kafka reads)."""


class SchedulerStep:
    """Stages scheduled commands, and hands out the due ones (a :class:`~processors.loop.Step`)."""

    def __init__(
        self,
        *,
        source_topic: str,
        pending_topic: str,
        command_topics: Iterable[str],
        dead_letter_topic: str,
        load: LoadPending,
        instance: str = "scheduler",
        max_per_turn: int = 1000,
    ) -> None:
        self.source_topic = source_topic
        self.pending_topic = pending_topic
        self.command_topics = frozenset(command_topics)
        self.dead_letter_topic = dead_letter_topic
        self.load = load
        self.instance = instance
        self.max_per_turn = max_per_turn
        self._heap: list[Pending] = []
        """The committed pending commands of the assigned partitions."""
        self._staged: list[Pending] = []
        """Read this turn, already recorded in the pending topic (or delivered) by this transaction."""
        self._unrecorded: list[Pending] = []
        """Read this turn and due at once: delivered by :meth:`due` unless over the cap, then recorded."""
        self._taken: list[Pending] = []
        """Committed ones this turn's transaction delivers."""

    # ------------------------------------------------------------------------------ Step

    def assigned(self, partitions: Sequence[tuple[str, int]]) -> None:
        """Load the pending commands of the new partitions."""
        loaded = 0
        for topic, partition in partitions:
            if topic != self.source_topic:  # pragma: no cover - the loop subscribes to the source only
                continue
            live: dict[bytes, Pending] = {}
            for record in self.load(partition):
                key = record.key()
                if key is None:
                    continue
                value = record.value()
                if value is None:
                    live.pop(key, None)
                    continue
                pending = _from_state(key, value, record.headers(), partition)
                if pending is None:
                    log.warning("unreadable pending record %r in %s[%d]", key, self.pending_topic, partition)
                    continue
                live[key] = pending
            self._heap.extend(live.values())
            loaded += len(live)
        heapq.heapify(self._heap)
        log.info("loaded %d pending scheduled commands", loaded)

    def revoked(self, partitions: Sequence[tuple[str, int]]) -> None:
        """Forget the pending commands of those partitions."""
        gone = {p for t, p in partitions if t == self.source_topic}
        self._heap = [p for p in self._heap if p.partition not in gone]
        heapq.heapify(self._heap)

    def process(self, messages: Sequence[Incoming], now: float) -> Sequence[Outgoing]:
        """Record each command not yet due; keep the due ones for :meth:`due` (same transaction)."""
        out: list[Outgoing] = []
        for message in messages:
            partition, offset = message.partition() or 0, message.offset() or 0
            try:
                schedule = read_schedule(message.headers())
                if schedule.target_topic not in self.command_topics:
                    raise ValueError(f"{schedule.target_topic!r} is not a command topic")
            except ValueError as exc:
                out.append(self._dead_letter(message, str(exc)))
                continue
            pending = Pending(
                schedule.not_before, partition, offset, schedule.target_topic,
                message.key(), message.value(), tuple(schedule.headers),
            )  # fmt: skip
            if pending.due <= now:
                self._unrecorded.append(pending)
            else:
                self._staged.append(pending)
                out.append(self._record(pending))
        return out

    def due(self, now: float) -> Sequence[Outgoing]:
        """The due commands (at most ``max_per_turn``), each with the tombstone of its pending record."""
        chosen: list[tuple[Pending, bool]] = []  # (pending, committed in the state)
        heap = self._heap
        fresh = sorted(self._unrecorded)
        self._unrecorded = []
        i = 0
        while len(chosen) < self.max_per_turn:
            take_heap = bool(heap) and heap[0].due <= now and (i >= len(fresh) or heap[0] < fresh[i])
            if take_heap:
                chosen.append((heapq.heappop(heap), True))
            elif i < len(fresh):
                chosen.append((fresh[i], False))
                i += 1
            else:
                break
        out: list[Outgoing] = []
        for pending, committed in chosen:
            out.append(Outgoing(pending.target, pending.key, pending.value, list(pending.headers)))
            if committed:
                self._taken.append(pending)
                out.append(Outgoing(self.pending_topic, pending.state_key, None, None, pending.partition))
        for pending in fresh[i:]:  # over the cap: wait in the state like the others
            self._staged.append(pending)
            out.append(self._record(pending))
        return out

    def next_due(self) -> float | None:
        """The earliest pending command's due time."""
        return self._heap[0].due if self._heap else None

    def committed(self) -> None:
        """What this transaction recorded becomes pending; what it delivered is gone."""
        for pending in self._staged:
            heapq.heappush(self._heap, pending)
        self._staged = []
        self._taken = []

    def aborted(self) -> None:
        """The delivered ones are pending again; the recorded ones will be read again after the rewind."""
        for pending in self._taken:
            heapq.heappush(self._heap, pending)
        self._taken = []
        self._staged = []
        self._unrecorded = []

    def __len__(self) -> int:
        return len(self._heap)

    # ------------------------------------------------------------------------------ records

    def _record(self, pending: Pending) -> Outgoing:
        headers = state_headers(pending.headers, pending.due, pending.target, pending.key)
        return Outgoing(self.pending_topic, pending.state_key, pending.value, headers, pending.partition)

    def _dead_letter(self, message: Incoming, error: str) -> Outgoing:
        where = f"{message.topic()}[{message.partition()}]@{message.offset()}"
        log.warning("dead-lettering %s: %s", where, error)
        headers = [(n, v if isinstance(v, bytes) else (v or "").encode()) for n, v in message.headers() or ()]
        headers += [
            (DLQ_REASON, rc.INVALID_COMMAND.encode()),
            (DLQ_ERROR, error[:2000].encode()),
            (DLQ_TOPIC, str(message.topic()).encode()),
            (DLQ_PARTITION, str(message.partition()).encode()),
            (DLQ_OFFSET, str(message.offset()).encode()),
            (DLQ_PROCESSOR, self.instance.encode()),
        ]
        return Outgoing(self.dead_letter_topic, message.key(), message.value(), headers)


def _from_state(key: bytes, value: bytes, headers: object, partition: int) -> Pending | None:
    """A pending-state record back as a :class:`Pending` (None if it does not parse)."""
    try:
        schedule = read_schedule(headers)  # type: ignore[arg-type]
        where, _, offset = key.decode("ascii").partition(":")
        if int(where) != partition:
            return None
        return Pending(
            schedule.not_before, partition, int(offset), schedule.target_topic,
            schedule.key, value, tuple(schedule.headers),
        )  # fmt: skip
    except ValueError:
        return None


class Scheduler(TransactionalLoop):
    """One scheduler instance: a :class:`SchedulerStep` on a :class:`TransactionalLoop`."""

    step: SchedulerStep

    def __init__(self, settings: Settings, *, metrics: Metrics | None = None) -> None:
        s: SchedulerSettings = settings.scheduler
        topics = settings.topics
        self.source_topic = topic_names.scheduled_topic(topics)
        pending_topic = topic_names.scheduled_pending_topic(topics)
        kafka = settings.kafka

        def load(partition: int) -> Iterable[Incoming]:
            return read_to_end(kafka, pending_topic, [partition], timeout_s=s.load_timeout_s)

        step = SchedulerStep(
            source_topic=self.source_topic,
            pending_topic=pending_topic,
            command_topics=[topic_names.command_topic(a, topics) for a in AGGREGATES],
            dead_letter_topic=topic_names.dead_letter_topic(topics),
            load=load,
            instance=s.transactional_id,
            max_per_turn=s.batch_max_commands,
        )
        super().__init__(
            settings,
            step,
            topics=[self.source_topic],
            group_id=s.group_id,
            transactional_id=s.transactional_id,
            options=LoopOptions(
                batch_max_messages=s.batch_max_commands,
                batch_max_ms=s.tick_ms,
                batch_linger_ms=5,
                transaction_timeout_ms=s.transaction_timeout_ms,
                session_timeout_ms=s.session_timeout_ms,
                max_poll_interval_ms=max(300000, s.session_timeout_ms),
                assign_timeout_s=s.load_timeout_s,
            ),
            metrics=metrics,
            logger=log,
            client_id=f"esflow-scheduler-{s.instance_id}",
        )
