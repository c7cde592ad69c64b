"""A new instance restores what the last one committed: from snapshots, or from the events alone."""

from __future__ import annotations

import uuid

from confluent_kafka import KafkaException, Producer
from confluent_kafka.admin import AdminClient

from esflow.messaging.kafka import partition_for, producer_config
from esflow.messaging.topics import apply, catalogue
from tests.integration.processor.conftest import RunningFactory
from tests.integration.processor.kit import (
    CODEC,
    Env,
    Results,
    Sender,
    deposit,
    envelope,
    open_account,
    withdraw,
)
from tests.support.wait import eventually


def _first_run(
    sender: Sender, results: Results, running: RunningFactory
) -> tuple[uuid.UUID, list[uuid.UUID]]:
    proc = running(instance_id="one")
    acc = uuid.uuid4()
    sent = sender.send(
        [envelope(acc, open_account()), envelope(acc, deposit(100)), envelope(acc, withdraw(500))]
    )
    results.wait([e.metadata.command_id for e in sent])
    others = sender.send([envelope(uuid.uuid4(), open_account()) for _ in range(20)])
    results.wait([e.metadata.command_id for e in others])
    proc.stop()
    # The instance reports not ready once it has closed: left the group, flushed its producer.
    eventually(lambda: not proc.metrics.ready, timeout=60, what="the first instance to close")
    return acc, [e.metadata.command_id for e in sent]


def _replay(sender: Sender, results: Results, acc: uuid.UUID, first: list[uuid.UUID]) -> None:
    """Re-send the first run's commands with their ids, then one more: check the answers."""
    originals = {cid: results.by_id[cid][0] for cid in first}
    again = [envelope(acc, c, command_id=cid) for c, cid in
             zip([open_account(), deposit(100), withdraw(500)], first, strict=True)]  # fmt: skip
    sender.send(again)
    nxt = sender.send([envelope(acc, withdraw(60))])[0]
    after = results.wait([nxt.metadata.command_id])[nxt.metadata.command_id]
    assert after.status == "accepted" and after.version == 3  # balance 100 was restored: 60 fits
    for cid in first:
        assert len(results.by_id[cid]) == 2, "the duplicate was answered once, not executed"
        replayed, original = results.by_id[cid][1], originals[cid]
        assert (replayed.status, replayed.version, replayed.reason) == (
            original.status,
            original.version,
            original.reason,
        )
        assert [(e.event_id, e.offset) for e in replayed.events] == [
            (e.event_id, e.offset) for e in original.events
        ]


def test_restart_restores_state_and_idempotency_window(
    penv: Env, sender: Sender, results: Results, running: RunningFactory
) -> None:
    acc, first = _first_run(sender, results, running)
    second = running(instance_id="two")
    _replay(sender, results, acc, first)
    cache = next(
        c
        for p in range(penv.topics.partitions)
        if (c := second.cache(penv.name("commands.account"), p)) and len(c)
    )
    assert cache.events_until >= 0


def test_restore_falls_back_to_the_event_log(
    penv: Env, sender: Sender, results: Results, running: RunningFactory, admin: AdminClient
) -> None:
    acc, first = _first_run(sender, results, running)
    # Lose every account snapshot: the next instance must fold events.account instead.
    snapshots = penv.name("snapshots.account")
    admin.delete_topics([snapshots], operation_timeout=30)[snapshots].result(30)
    spec = [s for s in catalogue(penv.topics) if s.name == snapshots]
    # The deletion completes asynchronously: re-creating the topic fails until it has.
    eventually(
        lambda: apply(admin, spec) or True, timeout=60, interval=0.2, retry_on=(KafkaException, Exception),
        what="the snapshot topic to be re-created",
    )  # fmt: skip
    running(instance_id="two")
    # Rejected commands appended nothing, so only accepted ones are rebuilt into the window.
    accepted = [cid for cid in first if results.by_id[cid][0].status == "accepted"]
    rejected = [cid for cid in first if cid not in accepted]
    originals = {cid: results.by_id[cid][0] for cid in first}
    again = [envelope(acc, c, command_id=cid) for c, cid in
             zip([open_account(), deposit(100)], accepted, strict=True)]  # fmt: skip
    sender.send(again)
    nxt = sender.send([envelope(acc, withdraw(60))])[0]
    after = results.wait([nxt.metadata.command_id])[nxt.metadata.command_id]
    assert after.status == "accepted" and after.version == 3
    for cid in accepted:
        replayed, original = results.by_id[cid][1], originals[cid]
        assert (replayed.status, replayed.version) == (original.status, original.version)
        assert [(e.event_id, e.offset) for e in replayed.events] == [
            (e.event_id, e.offset) for e in original.events
        ]
    assert len(results.by_id[rejected[0]]) == 1


def test_an_unreadable_snapshot_rejects_its_aggregate_only(
    penv: Env, sender: Sender, results: Results, running: RunningFactory
) -> None:
    broken, healthy = uuid.uuid4(), uuid.uuid4()
    producer = Producer(producer_config(penv.kafka))
    key = str(broken).encode()
    producer.produce(
        penv.name("snapshots.account"),
        b"{not a snapshot",
        key,
        partition=partition_for(key, penv.topics.partitions),
    )
    producer.flush(30)
    running()
    topic = penv.name("commands.account")
    where = sender.send_raw("account", CODEC.encode(envelope(broken, open_account()), topic=topic), key)
    [ok] = sender.send([envelope(healthy, open_account())])
    assert results.report(where).reason == "processing_error"  # dead-lettered, reported at its position
    assert results.one(ok).status == "accepted"
