"""Restore of a process worker's instances: the committed records of one ``process.<name>.state`` partition.

The read is read_committed and stops at the partition's end as that isolation level sees it, so the
records of an aborted or still-open transaction never come back as state (the same reader as the command
processor's snapshot restore, :mod:`processors.restore`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from esflow.settings import KafkaSettings
from processors.restore import _consumer, _read


class StateTopicLoader:
    """Reads one partition of a process state topic (a :class:`~processors.process.manager.StateLoader`)."""

    def __init__(self, kafka: KafkaSettings, topic: str, *, timeout_s: float = 300.0) -> None:
        self.kafka = kafka
        self.topic = topic
        self.timeout_s = timeout_s

    def load(self, partition: int) -> Iterator[bytes]:
        """The latest value per key of ``partition`` (tombstones drop a key), in first-seen order."""
        latest: dict[bytes, bytes | None] = {}

        def keep(msg: Any) -> None:
            key = msg.key()
            if key is not None:
                latest[key] = msg.value()

        consumer = _consumer(self.kafka)
        try:
            _read(consumer, self.topic, partition, 0, time.monotonic() + self.timeout_s, keep)
        finally:
            consumer.close()
        return (value for value in latest.values() if value is not None)
