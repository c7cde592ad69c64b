"""Waiting for command results: one background consumer of ``command-results`` per client.

The listener positions itself at each partition's high-water mark *before* the first command it waits
for is sent, so a result can only land after that position and cannot be missed. It reads with
read_committed (results are written inside the processor's transactions: an aborted attempt's result is
never seen) and hands each result whose command id has a waiter to that waiter; others are dropped.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from uuid import UUID

from confluent_kafka import Consumer, TopicPartition

from esflow.errors import ClientError, DecodeError
from esflow.messaging.kafka import consumer_config, watermarks
from esflow.messaging.results import CommandResult
from esflow.messaging.topics import results_topic
from esflow.settings import Settings

Callback = Callable[[CommandResult], object]


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
        self._waiters: dict[bytes, Callback] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="esflow-results", daemon=True)
        self._thread.start()

    def expect(self, command_id: UUID, callback: Callback) -> None:
        """Call ``callback`` (on the listener thread) when the result of ``command_id`` arrives."""
        if self._error is not None:
            raise ClientError(f"the result listener stopped: {self._error}")
        with self._lock:
            self._waiters[str(command_id).encode()] = callback

    def forget(self, command_id: UUID) -> None:
        """Stop waiting for ``command_id`` (after a timeout)."""
        with self._lock:
            self._waiters.pop(str(command_id).encode(), None)

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                # consume(n, timeout) blocks for the whole timeout unless n messages arrive: wait for the
                # first message with poll(), then take whatever else is already there without waiting.
                first = self._consumer.poll(0.1)
                if first is None:
                    continue
                for msg in [first, *self._consumer.consume(500, 0)]:
                    if msg.error():
                        continue
                    key = msg.key()
                    with self._lock:
                        callback = self._waiters.pop(key, None) if key is not None else None
                    if callback is None:
                        continue
                    try:
                        result = CommandResult.from_bytes(msg.value() or b"")
                    except ValueError as exc:
                        err = DecodeError(
                            f"unreadable command result: {exc}",
                            topic=msg.topic(), partition=msg.partition(), offset=msg.offset(),
                        )  # fmt: skip
                        raise err from exc
                    callback(result)
        except BaseException as exc:  # surfaced to the next caller of expect()
            self._error = exc
        finally:
            self._consumer.close()

    def close(self) -> None:
        """Stop the background consumer."""
        self._stop.set()
        self._thread.join(timeout=10)
