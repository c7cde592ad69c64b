"""Checks a client makes before it waits for something, so a missing service is named at once.

Without them, `esflow send --wait` with no command processor running would sit out the whole timeout
and then say only that nothing came. Each check is one cheap question to Kafka and raises one
:class:`~esflow.errors.ClientError` line naming what to start. This module loads no SQL driver, so the
command client may call it; the read-model counterpart, :func:`esflow.query.consistency.require_projection`,
lives with the other code that reads the projections' registry.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from confluent_kafka import ConsumerGroupState, KafkaError, KafkaException
from confluent_kafka.admin import ConsumerGroupDescription

from esflow.errors import ClientError, translated
from esflow.messaging.kafka import admin_client
from esflow.settings import Settings

DESCRIBE_TIMEOUT_S = 5.0
"""How long to wait for the broker to describe the processor's group: a few seconds, not a result timeout."""

START_PROCESSOR = (
    "start one with `.venv/bin/esflow processor run`, "
    "or the whole pipeline with `.venv/bin/esflow demo --keep-running`"
)


_COORDINATOR_MOVING = frozenset(
    {
        KafkaError.NOT_COORDINATOR,
        KafkaError.COORDINATOR_NOT_AVAILABLE,
        KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
    }
)


class ServiceNotRunning(ClientError):
    """A service the client would wait for is not running, so waiting could only time out."""


def require_processor(
    settings: Settings, topics: Iterable[str], *, timeout_s: float = DESCRIBE_TIMEOUT_S
) -> None:
    """Raise :class:`ServiceNotRunning` unless the processor's consumer group has a member for ``topics``.

    The group is ``settings.processor.group_id``. A group with no members means no processor is
    running (a crashed one drops out after its session timeout). When members report assignments, one of
    them must hold a partition of every topic in ``topics``; a group in the middle of a rebalance reports
    none, and is given the benefit of the doubt.
    """
    group = settings.processor.group_id
    description = _describe(settings, group, timeout_s)
    if (
        description is None
        or not description.members
        or description.state in (ConsumerGroupState.EMPTY, ConsumerGroupState.DEAD)
    ):
        raise ServiceNotRunning(
            f"no command processor is running (consumer group {group} has no members)",
            hint=START_PROCESSOR,
        )
    assigned = {
        tp.topic
        for member in description.members
        if member.assignment is not None
        for tp in member.assignment.topic_partitions
    }
    missing = sorted(set(topics) - assigned)
    if assigned and missing:
        raise ServiceNotRunning(
            f"the command processor (group {group}) does not read {', '.join(missing)}",
            hint="compare ESFLOW_PROCESSOR_AGGREGATES and ESFLOW_TOPIC_PREFIX of processor and client",
        )


def _describe(settings: Settings, group: str, timeout_s: float) -> ConsumerGroupDescription | None:
    """The group's description (None when the broker knows no such group), retrying a moving coordinator."""
    # Only librdkafka's critical messages: the CLI's answer is one line, and the client's own log lines
    # (a purged background queue at close, a refused connection) would be printed around it.
    admin = admin_client(settings.kafka, log_level=2)
    deadline = time.monotonic() + timeout_s
    with translated(f"asking Kafka about the command processor's group {group}"):
        while True:
            left = max(0.5, deadline - time.monotonic())
            future = admin.describe_consumer_groups([group], request_timeout=left)[group]
            try:
                description: ConsumerGroupDescription = future.result(timeout=left + 1)
                return description
            except KafkaException as exc:
                code = exc.args[0].code() if exc.args and isinstance(exc.args[0], KafkaError) else None
                if code == KafkaError.GROUP_ID_NOT_FOUND:
                    return None
                # Right after a broker start the group coordinator is still being elected or loaded.
                if code not in _COORDINATOR_MOVING or time.monotonic() >= deadline:
                    raise
            time.sleep(0.2)


__all__ = ["ServiceNotRunning", "require_processor"]
