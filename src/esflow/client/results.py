"""Waiting for command results: one background consumer of ``command-results`` per client.

The listener positions itself at each partition's high-water mark *before* the first command it waits
for is sent, so a result can only land after that position and cannot be missed. It reads with
read_committed (results are written inside the processor's transactions: an aborted attempt's result is
never seen).

A sender waits under two keys (docs/domain.md, "Who may answer"): the answer key of its command
(aggregate type, aggregate id, command id), registered before the send, and the dead-letter report key of
the exact position its delivery report named, registered once the broker acknowledged. Nothing else is
taken for its answer: a report keyed by some other position, whatever command id it claims, belongs to
whoever wrote that other record. Reports may arrive before the delivery report is served, so recent
unclaimed ones are kept for a while.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from confluent_kafka import Consumer, TopicPartition

from esflow.domain.messages import CommandEnvelope
from esflow.errors import ClientError, DecodeError
from esflow.messaging.kafka import consumer_config, watermarks
from esflow.messaging.results import CommandResult, DeadLetterReport, answer_key, is_report_key, report_key
from esflow.messaging.topics import results_topic
from esflow.settings import Settings

Callback = Callable[[CommandResult], object]

RECENT_REPORTS = 10_000
"""Unclaimed dead-letter reports kept for a delivery report that has not been served yet."""


@dataclass(slots=True)
class _Waiter:
    envelope: CommandEnvelope
    callback: Callback
    keys: list[bytes]


class ResultListener:
    """Delivers results of the commands a client waits for."""

    def __init__(self, settings: Settings, *, start_timeout_s: float = 30.0) -> None:
        self._topic = results_topic(settings.topics)
        # No group: positions are set by hand and nothing is committed.
        # A short fetch wait: results arrive in bursts at transaction commits, and librdkafka's default
        # (500 ms) can hold a read_committed fetch that long before returning what just became stable.
        self._consumer = Consumer(
            consumer_config(
                settings.kafka, "esflow-results-unused", **{"log_level": 2, "fetch.wait.max.ms": 10}
            )
        )
        md = self._consumer.list_topics(self._topic, timeout=start_timeout_s)
        meta = md.topics.get(self._topic)
        if meta is None or meta.error is not None:
            self._consumer.close()
            raise ClientError(f"topic {self._topic} does not exist", hint="run `esflow topics apply`")
        positions = []
        for p in meta.partitions:
            _low, high = watermarks(self._consumer, self._topic, p, timeout_s=start_timeout_s)
            positions.append(TopicPartition(self._topic, p, high))
        self._consumer.assign(positions)
        self._waiters: dict[bytes, _Waiter] = {}
        self._reports: OrderedDict[bytes, bytes] = OrderedDict()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="esflow-results", daemon=True)
        self._thread.start()

    def expect(self, envelope: CommandEnvelope, callback: Callback) -> None:
        """Call ``callback`` (on the listener thread) with the result of ``envelope`` once it arrives.

        Register before sending; then call :meth:`sent` with the position the broker acknowledged, so a
        dead-letter report for that record reaches the callback too.
        """
        if self._error is not None:
            raise ClientError(f"the result listener stopped: {self._error}")
        meta = envelope.metadata
        key = answer_key(meta.aggregate_type, str(meta.aggregate_id), str(meta.command_id))
        with self._lock:
            self._waiters[key] = _Waiter(envelope, callback, [key])

    def sent(self, envelope: CommandEnvelope, topic: str, partition: int, offset: int) -> None:
        """The broker stored ``envelope`` at this position: a report for it is its answer too."""
        meta = envelope.metadata
        answer = answer_key(meta.aggregate_type, str(meta.aggregate_id), str(meta.command_id))
        key = report_key(topic, partition, offset)
        with self._lock:
            waiter = self._waiters.get(answer)
            if waiter is None:  # answered already, or forgotten
                return
            early = self._reports.pop(key, None)
            if early is None:
                waiter.keys.append(key)
                self._waiters[key] = waiter
                return
            for k in waiter.keys:
                self._waiters.pop(k, None)
        self._deliver(waiter, key, early, topic, partition, offset)

    def forget(self, envelope: CommandEnvelope) -> None:
        """Stop waiting for ``envelope`` (after a timeout)."""
        meta = envelope.metadata
        answer = answer_key(meta.aggregate_type, str(meta.aggregate_id), str(meta.command_id))
        with self._lock:
            waiter = self._waiters.pop(answer, None)
            for k in waiter.keys if waiter is not None else ():
                self._waiters.pop(k, None)

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                # consume(n, timeout) blocks for the whole timeout unless n messages arrive: wait for the
                # first message with poll(), then take whatever else is already there without waiting.
                first = self._consumer.poll(0.1)
                if first is None:
                    continue
                for msg in [first, *self._consumer.consume(500, 0)]:
                    key = msg.key()
                    if msg.error() or key is None:
                        continue
                    with self._lock:
                        waiter = self._waiters.pop(key, None)
                        if waiter is None:
                            if is_report_key(key):
                                self._reports[key] = msg.value() or b""
                                if len(self._reports) > RECENT_REPORTS:
                                    self._reports.popitem(last=False)
                            continue
                        for k in waiter.keys:
                            self._waiters.pop(k, None)
                    self._deliver(waiter, key, msg.value() or b"", msg.topic(), msg.partition(), msg.offset())
        except BaseException as exc:  # surfaced to the next caller of expect()
            self._error = exc
        finally:
            self._consumer.close()

    @staticmethod
    def _deliver(
        waiter: _Waiter,
        key: bytes,
        value: bytes,
        topic: str | None,
        partition: int | None,
        offset: int | None,
    ) -> None:
        try:
            if is_report_key(key):
                report = DeadLetterReport.from_bytes(value)
                result = report.as_rejection(waiter.envelope.metadata.command_id)
            else:
                result = CommandResult.from_bytes(value)
        except ValueError as exc:
            err = DecodeError(
                f"unreadable command result under {key!r}: {exc}",
                topic=topic, partition=partition, offset=offset,
            )  # fmt: skip
            raise err from exc
        waiter.callback(result)

    def close(self) -> None:
        """Stop the background consumer."""
        self._stop.set()
        self._thread.join(timeout=10)
