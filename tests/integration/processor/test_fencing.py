"""KIP-447 fencing: an instance that lost its partitions (a zombie) cannot commit what it processed."""

from __future__ import annotations

import logging
import uuid
from typing import Any

import pytest
from confluent_kafka import Consumer

from processors.processor import Processor
from tests.integration.processor.conftest import RunningFactory
from tests.integration.processor.kit import (
    CODEC,
    Env,
    Results,
    Sender,
    deposit,
    envelope,
    events_of,
    open_account,
    read_all,
)
from tests.support.wait import eventually


class _StaleGroupMetadata:
    """The zombie's consumer as it was before the rebalance: same client, old group generation."""

    def __init__(self, consumer: Consumer, stale: Any) -> None:
        self._consumer = consumer
        self._stale = stale

    def consumer_group_metadata(self) -> Any:
        return self._stale

    def __getattr__(self, name: str) -> Any:
        return getattr(self._consumer, name)


def _step(proc: Processor, results: Results) -> None:
    proc.run_once()
    results.poll(0)


def test_a_zombie_cannot_commit(
    penv: Env, sender: Sender, results: Results, running: RunningFactory, caplog: pytest.LogCaptureFixture
) -> None:
    acc = uuid.uuid4()
    opened = sender.send([envelope(acc, open_account())])[0]
    zombie = Processor(
        penv.kafka, penv.topics,
        penv.processor_settings(instance_id="zombie", max_poll_interval_ms=6000, session_timeout_ms=6000),
        CODEC,
    )  # fmt: skip
    zombie.start()
    try:
        eventually(
            lambda: opened.metadata.command_id in results.by_id,
            timeout=60,
            step=lambda: _step(zombie, results),
            what="the zombie to answer the first command",
        )
        stale = zombie.consumer.consumer_group_metadata()
        # The zombie reads the next command, then stalls (a GC pause, a frozen VM) before committing it.
        dep = sender.send([envelope(acc, deposit(10))])[0]
        batch: list[Any] = []
        eventually(
            lambda: batch,
            timeout=30,
            step=lambda: batch.extend(zombie.consumer.consume(100, 0.2)),
            what="the zombie to read the deposit",
        )
        # Meanwhile the group moves on: the zombie misses max.poll.interval and a healthy instance
        # takes over its partitions and processes the same command.
        running(instance_id="healthy")
        result = results.wait([dep.metadata.command_id], timeout=90)[dep.metadata.command_id]
        assert result.status == "accepted" and result.version == 2
        # The zombie wakes up and tries to commit with the group generation it had.
        zombie._consumer = _StaleGroupMetadata(zombie.consumer, stale)  # type: ignore[assignment]
        committed_before = zombie.committed_batches
        with caplog.at_level(logging.WARNING, logger="esflow.processor"):
            zombie.process(batch)
        assert zombie.committed_batches == committed_before, "the zombie committed"
        assert zombie.aborted_batches >= 1
        refusals = [r.getMessage() for r in caplog.records if "aborting the batch" in r.getMessage()]
        assert refusals, "no abort logged"
        assert any(code in refusals[0] for code in ("generation", "member", "fenced", "Fenced")), refusals
    finally:
        zombie._consumer = getattr(zombie._consumer, "_consumer", zombie._consumer)
        zombie.close()
    # Exactly one deposit event and one answer are visible to read_committed readers ...
    events = [e for _, e in events_of(penv.kafka, penv, "account") if e.metadata.aggregate_id == acc]
    assert [e.metadata.aggregate_version for e in events] == [1, 2]
    results.poll(1.0)
    assert len(results.by_id[dep.metadata.command_id]) == 1
    # ... while the log itself holds the zombie's aborted attempt (read_uncommitted sees it).
    raw = [
        CODEC.decode(m.value(), kind="event")
        for m in read_all(penv.kafka, penv.name("events.account"), isolation="read_uncommitted")
    ]
    attempts = [e for e in raw if e.metadata.command_id == dep.metadata.command_id]
    assert len(attempts) == 2, "the zombie did write, inside a transaction that was aborted"
