"""The process-manager step: routes inputs to their instance's partition and runs the instances there.

One :class:`ProcessStep` runs one :class:`~esflow.domain.process.ProcessDefinition` on the transactional
shell (:mod:`processors.loop`); every record it returns is written in the shell's transaction together
with the offsets of the messages it consumed. It reads three kinds of topic:

- **Sources** (``events.<aggregate>`` of the aggregates the process subscribes to, and ``command-results``):
  the *router* half finds the instance an input belongs to and copies the input, unchanged, to
  ``process.<name>.inbox`` keyed by the instance id, so every input of one instance reaches the one
  partition (and the one worker) that holds its state, in order. An event's instance comes from the
  definition (``starts``/``correlate``); an answer's from the ``correlation_id`` *in its body*, which the
  command processor copied from the command this runtime sent (never from headers). Answers whose
  correlation id equals their command id (the client default: not sent by a process) are not routed.
- **The inbox**: the *manager* half feeds each input to its instance and writes the instance's new
  record to the compacted ``process.<name>.state`` (same key, same partition) and the commands it sends
  to ``commands.<aggregate>``. An answer is accepted only if the instance's own record holds a pending
  send with exactly that command id, aggregate type and aggregate id: anyone may write to a results or
  inbox topic, but only this runtime derives and records the ids it waits for.
- **Time** (:meth:`ProcessStep.due`): durable timers and re-sends (answer timeouts, retry back-off) are
  part of the record, so they fire after a restart or a rebalance, each at most once: the firing and the
  record without that timer commit together.

Command ids are ``uuid5(instance, f"{process}/{step}/{attempt}")`` (:func:`esflow.domain.process.command_id`);
the correlation id is the instance id and the causation id the id of the input that caused the send (an
event's id, the answered command's id, or a timer's derived id). A re-send after an answer timeout keeps
its id, so the processor's idempotency window answers it without running it twice; a retry after a
retryable rejection takes the next attempt's id.

State lives in memory per assigned inbox partition; :meth:`ProcessStep.assigned` loads it through the
``loader`` collaborator (the Kafka reads are there). Changes of the open transaction are staged on copies
and promoted by :meth:`ProcessStep.committed` or dropped by :meth:`ProcessStep.aborted`.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol
from uuid import UUID

import orjson
from pydantic import BaseModel, ValidationError

from esflow.domain.catalog import MESSAGE_TYPES
from esflow.domain.messages import Command, EventEnvelope
from esflow.domain.process import (
    ENDED_STATUSES,
    AnswerIn,
    CancelTimer,
    EventIn,
    Input,
    ProcessDefinition,
    Reaction,
    Send,
    SetTimer,
    TimerIn,
    command_id,
)
from esflow.errors import CodecError
from esflow.messaging import topics as topic_names
from esflow.messaging.codec import (
    HEADER_CONTENT_TYPE,
    HEADER_CORRELATION,
    HEADER_ID,
    HEADER_KIND,
    HEADER_TYPE,
    HEADER_VERSION,
    Codec,
)
from esflow.messaging.process_records import HistoryEntry, InstanceRecord, PendingSend, utc
from esflow.messaging.results import CommandResult, is_report_key
from esflow.settings import TopicSettings
from processors.loop import Incoming, Outgoing
from processors.process.metrics import ProcessMetrics

log = logging.getLogger("esflow.process")

HEADER_SOURCE = "esflow-process-source"
"""On an inbox record: ``<topic>/<partition>/<offset>`` of the input it copies (informational only)."""


class StateLoader(Protocol):
    """Reads the committed instance records of one state-topic partition (the Kafka side of a restore)."""

    def load(self, partition: int) -> Iterable[bytes]:
        """Every current value of ``partition`` of the state topic, oldest first (tombstones left out)."""
        ...


@dataclass(frozen=True)
class ProcessTopics:
    """The topics one process reads and writes (names from :mod:`esflow.messaging.topics`)."""

    process: str
    settings: TopicSettings
    subscribes: frozenset[str]

    @property
    def inbox(self) -> str:
        """``process.<name>.inbox``: every input, keyed by instance id."""
        return topic_names.process_inbox_topic(self.process, self.settings)

    @property
    def state(self) -> str:
        """``process.<name>.state``: compacted, one record per instance, co-partitioned with the inbox."""
        return topic_names.process_state_topic(self.process, self.settings)

    @property
    def results(self) -> str:
        """``command-results``."""
        return topic_names.results_topic(self.settings)

    def events(self, aggregate_type: str) -> str:
        """``events.<aggregate>``."""
        return topic_names.event_topic(aggregate_type, self.settings)

    def commands(self, aggregate_type: str) -> str:
        """``commands.<aggregate>``."""
        return topic_names.command_topic(aggregate_type, self.settings)

    @property
    def sources(self) -> list[str]:
        """The topics the router reads."""
        return [*(self.events(a) for a in sorted(self.subscribes)), self.results]

    @property
    def consumed(self) -> list[str]:
        """Every topic the step's consumer subscribes to."""
        return [*self.sources, self.inbox]


@dataclass
class _Turn:
    """What one call of process() or due() changed: staged records and counts for the metrics."""

    dirty: dict[UUID, int] = field(default_factory=dict)
    """Instance id -> inbox partition of every record changed in this call."""
    out: list[Outgoing] = field(default_factory=list)


class ProcessStep:
    """Router and manager of one process definition (see the module docstring)."""

    def __init__(
        self,
        definition: ProcessDefinition[Any],
        codec: Codec,
        topics: ProcessTopics,
        loader: StateLoader,
        *,
        metrics: ProcessMetrics | None = None,
        clock_skew_s: float = 0.0,
    ) -> None:
        self.definition = definition
        self.name = definition.name
        self.codec = codec
        self.topics = topics
        self.loader = loader
        self.metrics = metrics or ProcessMetrics()
        self._skew = timedelta(seconds=clock_skew_s)
        self._events = {topics.events(a): a for a in topics.subscribes}
        self._content_type = codec.framing.content_type.encode()
        self._committed: dict[UUID, InstanceRecord] = {}
        self._partition: dict[UUID, int] = {}
        self._staged: dict[UUID, InstanceRecord] = {}
        self._due: dict[UUID, datetime] = {}
        """Committed instances that wait for a timer or a re-send, and when."""
        self._pending_counts: list[Callable[[], None]] = []
        """Metric updates of the open transaction, applied once it commits."""
        self.routed = 0
        self.handled = 0

    # ---------------------------------------------------------------------------- the Step contract

    def assigned(self, partitions: Sequence[tuple[str, int]]) -> None:
        """Load the records of the newly assigned inbox partitions from the state topic."""
        for topic, partition in partitions:
            if topic != self.topics.inbox:
                continue
            count = 0
            for value in self.loader.load(partition):
                try:
                    record = InstanceRecord.from_bytes(value)
                except ValidationError as exc:
                    log.error("skipping an unreadable state record on %s[%d]: %s", topic, partition, exc)
                    continue
                self._committed[record.instance_id] = record
                self._partition[record.instance_id] = partition
                self._index(record)
                count += 1
            log.info("%s: restored %d instances of %s[%d]", self.name, count, topic, partition)
        self._gauges()

    def revoked(self, partitions: Sequence[tuple[str, int]]) -> None:
        """Forget the instances of revoked inbox partitions (their new owner restores them)."""
        gone = {p for t, p in partitions if t == self.topics.inbox}
        if not gone:
            return
        for iid in [i for i, p in self._partition.items() if p in gone]:
            self._committed.pop(iid, None)
            self._partition.pop(iid, None)
            self._staged.pop(iid, None)
            self._due.pop(iid, None)
        self._gauges()

    def process(self, messages: Sequence[Incoming], now: float) -> Sequence[Outgoing]:
        """Route source messages to the inbox; run inbox messages against their instances."""
        turn = _Turn()
        at = utc(now)
        for message in messages:
            topic = message.topic()
            if topic == self.topics.inbox:
                self._handle(message, at, turn)
            elif topic == self.topics.results:
                self._route_answer(message, turn)
            elif topic in self._events:
                self._route_event(message, turn)
        self._flush_state(turn)
        return turn.out

    def due(self, now: float) -> Sequence[Outgoing]:
        """Fire the timers and re-sends that are due at ``now``."""
        at = utc(now)
        limit = at + self._skew
        turn = _Turn()
        ready = [iid for iid, moment in self._due.items() if moment <= limit]
        ready += [iid for iid, r in self._staged.items() if iid not in self._due and _due_by(r, limit)]
        for iid in ready:
            record = self._stage(iid)
            if record is None or record.final:
                continue
            self._fire(record, self._partition[iid], at, limit, turn)
        self._flush_state(turn)
        return turn.out

    def next_due(self) -> float | None:
        """The earliest committed timer or re-send (the shell polls no longer than until then)."""
        moments = list(self._due.values()) + [m for r in self._staged.values() if (m := r.next_due())]
        return min(moments).timestamp() if moments else None

    def committed(self) -> None:
        """Promote the staged records and count what they did."""
        for iid, record in self._staged.items():
            self._committed[iid] = record
            self._index(record)
        self._staged.clear()
        for count in self._pending_counts:
            count()
        self._pending_counts.clear()
        self._gauges()

    def aborted(self) -> None:
        """Drop the staged records: the shell re-reads the inputs from the committed offsets."""
        self._staged.clear()
        self._pending_counts.clear()

    # ---------------------------------------------------------------------------- queries

    def instance(self, instance_id: UUID) -> InstanceRecord | None:
        """The committed record of an instance this worker holds (tests and tools)."""
        return self._committed.get(instance_id)

    def instances(self) -> list[InstanceRecord]:
        """Every committed record this worker holds."""
        return list(self._committed.values())

    # ---------------------------------------------------------------------------- routing

    def _route_event(self, message: Incoming, turn: _Turn) -> None:
        envelope = self._decode_event(message)
        if envelope is None:
            return
        event_in = EventIn.from_envelope(envelope)
        instance = self.definition.starts(event_in) or self.definition.correlate(event_in)
        if instance is not None:
            self._to_inbox(instance, message, turn)

    def _route_answer(self, message: Incoming, turn: _Turn) -> None:
        key, value = message.key(), message.value()
        if value is None or is_report_key(key):
            # A dead-letter report is keyed by position, not by command: the send's answer timeout
            # covers the (never expected) case of a refused process command.
            return
        try:
            body = orjson.loads(value)
            correlation, command = body.get("correlation_id"), body.get("command_id")
        except (orjson.JSONDecodeError, AttributeError):
            return
        if not correlation or correlation == command:
            return
        try:
            instance = UUID(correlation)
        except (ValueError, TypeError):
            return
        self._to_inbox(instance, message, turn)

    def _to_inbox(self, instance: UUID, message: Incoming, turn: _Turn) -> None:
        source = f"{message.topic()}/{message.partition()}/{message.offset()}".encode()
        turn.out.append(
            Outgoing(self.topics.inbox, str(instance).encode(), message.value(), [(HEADER_SOURCE, source)])
        )
        self.routed += 1

    # ---------------------------------------------------------------------------- the manager

    def _handle(self, message: Incoming, at: datetime, turn: _Turn) -> None:
        key, value = message.key(), message.value()
        partition = message.partition()
        if key is None or value is None or partition is None:
            return
        try:
            instance = UUID(key.decode())
        except (ValueError, UnicodeDecodeError):
            log.warning("%s: inbox record with key %r is not an instance id; dropped", self.name, key)
            return
        self.handled += 1
        if value[:1] == b"{":
            self._handle_answer(instance, partition, value, at, turn)
        else:
            self._handle_event(instance, partition, message, at, turn)

    def _handle_event(
        self, instance: UUID, partition: int, message: Incoming, at: datetime, turn: _Turn
    ) -> None:
        envelope = self._decode_event(message)
        if envelope is None:
            return
        event_in = EventIn.from_envelope(envelope)
        if event_in.aggregate_type not in self.topics.subscribes:
            return
        starts = self.definition.starts(event_in)
        if starts != instance and self.definition.correlate(event_in) != instance:
            return  # routed by someone who does not derive instances as the definition does
        entry = HistoryEntry(
            at=at, direction="in", kind="event", what=envelope.event.type_name(),
            id=event_in.event_id, causation_id=event_in.causation_id,
        )  # fmt: skip
        record = self._stage(instance)
        if record is None:
            if starts != instance:
                return  # advances an instance that does not exist (or no longer exists here)
            reaction = self.definition.start(event_in, at)
            record = InstanceRecord(
                process=self.name, instance_id=instance, status="new", step=reaction.step,
                state={}, started_at=at, updated_at=at,
            )  # fmt: skip
            self._staged[instance] = record
            self._partition[instance] = partition
            self._count(self.metrics.started.labels(self.name).inc)
            record.log(entry)
            record.inputs += 1
            self._apply(record, reaction, event_in.event_id, at, turn)
            return
        if record.final:
            return
        record.log(entry)
        record.inputs += 1
        self._react(record, event_in, event_in.event_id, at, turn)

    def _handle_answer(self, instance: UUID, partition: int, value: bytes, at: datetime, turn: _Turn) -> None:
        try:
            result = CommandResult.from_bytes(value)
        except ValidationError:
            return
        if result.correlation_id != instance:
            return
        record = self._stage(instance)
        if record is None or record.final:
            return
        send = next(
            (
                s
                for s in record.sends.values()
                if s.command_id == result.command_id
                and s.aggregate_type == result.aggregate_type
                and str(s.aggregate_id) == result.aggregate_id
            ),
            None,
        )
        if send is None or send.waiting == "backoff":
            return  # a duplicate answer (after a re-send, or of a rejection being retried), or not ours
        outcome = result.status
        record.log(
            HistoryEntry(
                at=at, direction="in", kind="answer",
                what=outcome if result.reason is None else f"{outcome} ({result.reason})",
                id=result.command_id, causation_id=result.command_id, step=send.step,
            )
        )  # fmt: skip
        record.inputs += 1
        policy = self.definition.retry
        if outcome == "rejected" and result.reason in policy.retryable and send.tries < policy.max_attempts:
            send.waiting = "backoff"
            send.retry_at = at + timedelta(seconds=policy.delay_s(send.attempt))
            send.last_reason, send.last_message = result.reason, result.message
            turn.dirty[instance] = partition
            return
        del record.sends[send.step]
        latency = (at - send.first_sent_at).total_seconds()
        self._count(lambda: self.metrics.step_seconds.labels(self.name).observe(latency))
        answer = AnswerIn(step=send.step, outcome=outcome, reason=result.reason, message=result.message)
        self._react(record, answer, result.command_id, at, turn)

    def _fire(
        self, record: InstanceRecord, partition: int, at: datetime, limit: datetime, turn: _Turn
    ) -> None:
        """Fire ``record``'s due timers (oldest first), then its due re-sends."""
        iid = record.instance_id
        for name, moment in sorted(record.timers.items(), key=lambda kv: kv[1]):
            if moment > limit or record.final or name not in record.timers:
                continue
            del record.timers[name]
            timer = TimerIn(name=name, at=moment)
            cause = uuid.uuid5(iid, f"timer/{name}/{moment.isoformat()}")
            record.log(HistoryEntry(at=at, direction="in", kind="timer", what=name, id=cause))
            self._count(self.metrics.timers.labels(self.name).inc)
            turn.dirty[iid] = partition
            self._react(record, timer, cause, at, turn)
        policy = self.definition.retry
        for send in list(record.sends.values()):
            if send.retry_at > limit or record.final:
                continue
            turn.dirty[iid] = partition
            if send.waiting == "backoff":
                send.attempt += 1
                send.command_id = command_id(self.name, iid, send.step, send.attempt)
            elif send.tries >= policy.max_attempts:
                del record.sends[send.step]
                answer = AnswerIn(
                    step=send.step, outcome="rejected", reason="timeout",
                    message=f"no answer to {send.command_type} after {send.tries} tries",
                )  # fmt: skip
                self._react(record, answer, send.command_id, at, turn)
                continue
            send.tries += 1
            record.attempts += 1
            kind = "retry" if send.waiting == "backoff" else "resend"
            self._count(self.metrics.retries.labels(self.name, kind).inc)
            send.waiting = "answer"
            send.sent_at = at
            send.retry_at = at + timedelta(seconds=policy.answer_timeout_s)
            record.log(
                HistoryEntry(
                    at=at, direction="out", kind=kind, what=send.command_type, id=send.command_id,
                    causation_id=send.causation_id, step=send.step,
                )
            )  # fmt: skip
            turn.out.append(self._command(iid, send, at))

    def _react(self, record: InstanceRecord, message: Input, cause: UUID, at: datetime, turn: _Turn) -> None:
        state = self.definition.state_type.model_validate(record.state)
        reaction = self.definition.react(state, message, at)
        self._apply(record, reaction, cause, at, turn)

    def _apply(
        self, record: InstanceRecord, reaction: Reaction[Any], cause: UUID, at: datetime, turn: _Turn
    ) -> None:
        """Carry out one reaction: new state and status, timers, commands; mark the record dirty."""
        iid = record.instance_id
        before = record.status
        record.state = _json_state(reaction.state)
        record.status, record.step, record.reason = reaction.status, reaction.step, reaction.reason
        record.updated_at = at
        for action in reaction.actions:
            if isinstance(action, SetTimer):
                record.timers[action.name] = action.at
            elif isinstance(action, CancelTimer):
                record.timers.pop(action.name, None)
            elif isinstance(action, Send):
                send = self._new_send(iid, action, cause, at)
                record.sends[action.step] = send
                record.log(
                    HistoryEntry(
                        at=at, direction="out", kind="command", what=send.command_type, id=send.command_id,
                        causation_id=cause, step=send.step,
                    )
                )  # fmt: skip
                turn.out.append(self._command(iid, send, at, action.command))
        if reaction.final:
            record.final = True
            record.timers.clear()
        if reaction.status in ENDED_STATUSES and record.ended_at is None:
            record.ended_at = at
        if reaction.status != before and reaction.status != "running":
            transition = self.metrics.transitions.labels(self.name, reaction.status)
            self._count(transition.inc)
        turn.dirty[iid] = self._partition[iid]

    def _new_send(self, instance: UUID, action: Send, cause: UUID, at: datetime) -> PendingSend:
        return PendingSend(
            step=action.step,
            command_id=command_id(self.name, instance, action.step, 1),
            aggregate_type=action.command.aggregate_type,
            aggregate_id=action.aggregate_id,
            command_type=action.command.type_name(),
            command=action.command.model_dump(mode="json"),
            causation_id=cause,
            first_sent_at=at,
            sent_at=at,
            retry_at=at + timedelta(seconds=self.definition.retry.answer_timeout_s),
        )

    def _command(
        self, instance: UUID, send: PendingSend, at: datetime, command: Command | None = None
    ) -> Outgoing:
        """The command record of ``send``'s current attempt (``command``: its model, when at hand).

        The Avro record is built as :meth:`Codec.encode` would build it from a ``CommandEnvelope``, without
        the envelope models: they only checked what is true by construction here (the aggregate type is
        the command's) and cost a quarter of the worker's time. The processor validates every command.
        """
        if command is None:  # a re-send: the payload kept in the record, back to its model
            model = MESSAGE_TYPES[send.command_type].model
            restored = model.model_validate(send.command)
            assert isinstance(restored, Command)
            command = restored
        record: dict[str, Any] = {
            "metadata": {
                "command_id": send.command_id,
                "aggregate_type": send.aggregate_type,
                "aggregate_id": send.aggregate_id,
                "correlation_id": instance,
                "causation_id": send.causation_id,
                "expected_version": None,
                "issued_at": at,
            },
            **command.model_dump(),
        }
        topic = self.topics.commands(send.aggregate_type)
        headers = [
            (HEADER_TYPE, send.command_type.encode()),
            (HEADER_VERSION, str(command.schema_version).encode()),
            (HEADER_KIND, b"command"),
            (HEADER_ID, str(send.command_id).encode()),
            (HEADER_CORRELATION, str(instance).encode()),
            (HEADER_CONTENT_TYPE, self._content_type),
        ]
        value = self.codec.encode_record(send.command_type, record, topic=topic)
        return Outgoing(topic, str(send.aggregate_id).encode(), value, headers)

    # ---------------------------------------------------------------------------- staging

    def _stage(self, instance: UUID) -> InstanceRecord | None:
        """The instance's record for the open transaction: a copy, so an abort leaves the committed one."""
        record = self._staged.get(instance)
        if record is not None:
            return record
        committed = self._committed.get(instance)
        if committed is None:
            return None
        record = self._staged[instance] = committed.staged_copy()
        return record

    def _flush_state(self, turn: _Turn) -> None:
        for iid, partition in turn.dirty.items():
            record = self._staged[iid]
            turn.out.append(
                Outgoing(self.topics.state, str(iid).encode(), record.to_bytes(), None, partition)
            )

    def _index(self, record: InstanceRecord) -> None:
        moment = record.next_due()
        if moment is None:
            self._due.pop(record.instance_id, None)
        else:
            self._due[record.instance_id] = moment

    def _count(self, update: Callable[[], None]) -> None:
        self._pending_counts.append(update)

    def _gauges(self) -> None:
        running = sum(1 for r in self._committed.values() if r.status not in ENDED_STATUSES)
        self.metrics.running.labels(self.name).set(running)

    def _decode_event(self, message: Incoming) -> EventEnvelope | None:
        try:
            envelope = self.codec.decode(
                message.value() or b"",
                kind="event",
                topic=message.topic(),
                partition=message.partition(),
                offset=message.offset(),
            )
        except CodecError as exc:
            log.warning("%s: skipping an undecodable event: %s", self.name, exc.message)
            return None
        return envelope


def _due_by(record: InstanceRecord, limit: datetime) -> bool:
    moment = record.next_due()
    return moment is not None and moment <= limit


def _json_state(state: BaseModel) -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads(state.model_dump_json())
    return data
