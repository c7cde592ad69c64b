from __future__ import annotations

import uuid

from tests.integration.processor.conftest import RunningFactory
from tests.integration.processor.kit import (
    Env,
    Results,
    Sender,
    deposit,
    envelope,
    events_of,
    open_account,
    withdraw,
)


def test_account_flow(penv: Env, sender: Sender, results: Results, running: RunningFactory) -> None:
    running()
    acc = uuid.uuid4()
    sent = sender.send(
        [envelope(acc, open_account()), envelope(acc, deposit(100)), envelope(acc, withdraw(150))]
    )
    got = results.wait([e.metadata.command_id for e in sent])
    r = [got[e.metadata.command_id] for e in sent]
    assert [x.status for x in r] == ["accepted", "accepted", "rejected"]
    assert r[2].reason == "insufficient_funds"
    events = events_of(penv.kafka, penv, "account")
    assert [e.metadata.aggregate_version for _, e in events] == [1, 2]
