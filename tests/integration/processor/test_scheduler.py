"""Scheduled commands through a real broker: the client parks them, the scheduler delivers them when due.

The crash test SIGKILLs `esflow scheduler run` twice while commands are pending, then checks that every
command reached its command topic exactly once (read_committed) and was answered exactly once.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from esflow.client.sender import AsyncCommandClient, CommandClient
from esflow.settings import SchedulerSettings, Settings
from processors.scheduler import Scheduler
from tests.integration.processor.conftest import RunningFactory
from tests.integration.processor.kit import (
    CODEC,
    Env,
    Results,
    Sender,
    deposit,
    envelope,
    open_account,
    read_all,
)
from tests.support.wait import eventually

ESFLOW = str(Path(sys.executable).parent / "esflow")


def _settings(penv: Env, group: str) -> Settings:
    return Settings(
        kafka=penv.kafka,
        topics=penv.topics,
        scheduler=SchedulerSettings(group_id=group, session_timeout_ms=6000, tick_ms=50),
    )


def _open(sender: Sender, results: Results, n: int) -> list[uuid.UUID]:
    accounts = [uuid.uuid4() for _ in range(n)]
    opened = sender.send([envelope(a, open_account()) for a in accounts])
    results.wait([e.metadata.command_id for e in opened], timeout=90)
    return accounts


def _delivered(penv: Env) -> Counter[uuid.UUID]:
    """How often each command id stands in commands.account, as read_committed readers see it."""
    msgs = read_all(penv.kafka, penv.name("commands.account"))
    return Counter(CODEC.decode(m.value(), kind="command").metadata.command_id for m in msgs)


def test_a_scheduled_command_is_processed_once_due_not_before(
    penv: Env, sender: Sender, results: Results, running: RunningFactory
) -> None:
    running(instance_id="p")
    (acc,) = _open(sender, results, 1)
    settings = _settings(penv, f"{penv.group_id}-sched")
    scheduler = Scheduler(settings)
    thread = threading.Thread(target=scheduler.run, daemon=True)
    thread.start()
    try:
        not_before = datetime.now(UTC) + timedelta(seconds=3)
        env = envelope(acc, deposit(5))
        later = envelope(acc, deposit(7))
        with CommandClient(settings) as client:
            receipt = client.send(env, not_before=not_before)
            with pytest.raises(ValueError, match="timezone-aware"):
                client.send(envelope(acc, deposit(1)), not_before=datetime.now())

        async def send_async() -> str:
            client = AsyncCommandClient(settings)
            try:
                return (await client.send(later, not_before=not_before + timedelta(seconds=1))).topic
            finally:
                await client.close()

        assert asyncio.run(send_async()) == receipt.topic == penv.name("scheduled-commands")
        result = results.one(env, timeout=60)
        assert result.status == "accepted" and result.version == 2
        assert result.processed_at is not None and result.processed_at >= not_before
        second = results.one(later, timeout=60)
        assert second.version == 3 and second.processed_at >= not_before + timedelta(seconds=1)
    finally:
        scheduler.stop()
        thread.join(60)
    delivered = _delivered(penv)
    assert delivered[env.metadata.command_id] == delivered[later.metadata.command_id] == 1


def _start(penv: Env, group: str, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        **penv.env_vars(),
        "ESFLOW_SCHEDULER_GROUP_ID": group,
        "ESFLOW_SCHEDULER_INSTANCE_ID": "a",  # a restart fences its killed predecessor at once
        "ESFLOW_SCHEDULER_SESSION_TIMEOUT_MS": "6000",
        "ESFLOW_SCHEDULER_TICK_MS": "50",
    }
    with log.open("ab") as out:
        return subprocess.Popen([ESFLOW, "scheduler", "run"], env=env, stdout=out, stderr=out)


def test_sigkill_with_commands_pending_loses_and_doubles_nothing(
    penv: Env, sender: Sender, results: Results, running: RunningFactory, tmp_path: Path
) -> None:
    running(instance_id="p")
    accounts = _open(sender, results, 6)
    group = f"{penv.group_id}-sched"
    settings = _settings(penv, group)
    # 60 deposits due over 18 s, 10 per account, each account's in the order they were sent. Times are
    # counted from the end of the sending (slow on a busy box), so the kills find commands pending.
    scheduled = [envelope(accounts[i % 6], deposit(i + 1)) for i in range(60)]
    with CommandClient(settings) as client:
        start = datetime.now(UTC) + timedelta(seconds=6)
        for i, env in enumerate(scheduled):
            client.send(env, not_before=max(start, datetime.now(UTC)) + timedelta(milliseconds=i * 300))
    ids = [e.metadata.command_id for e in scheduled]
    log = tmp_path / "scheduler.log"

    def answered() -> int:
        results.poll(0.1)
        return sum(1 for cid in ids if cid in results.by_id)

    proc = _start(penv, group, log)
    try:
        for kill in range(2):
            # Let it deliver some (the first kill lands while most are still pending), then kill it.
            floor = 5 + 20 * kill
            eventually(
                lambda floor=floor: answered() >= floor,  # type: ignore[misc]
                timeout=90,
                what=f"{floor} scheduled commands answered",
                details=lambda: log.read_text(errors="replace")[-2000:],
            )
            assert answered() < len(ids), "everything was delivered before the kill"
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
            proc = _start(penv, group, log)
        eventually(
            lambda: answered() == len(ids),
            timeout=120,
            what="every scheduled command answered",
            details=lambda: log.read_text(errors="replace")[-2000:],
        )
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, log.read_text(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    text = log.read_text(errors="replace")
    assert "0 commands pending" in text, text[-2000:]
    delivered = _delivered(penv)
    assert {cid: delivered[cid] for cid in ids} == dict.fromkeys(ids, 1)
    results.poll(1.0)
    assert all(len(results.by_id[cid]) == 1 for cid in ids), "a command was answered twice"
    assert all(results.by_id[cid][0].status == "accepted" for cid in ids)
    # Each account's deposits were applied in the order they were sent (versions follow the send order).
    for a in accounts:
        mine = [e.metadata.command_id for e in scheduled if e.metadata.aggregate_id == a]
        assert [results.by_id[cid][0].version for cid in mine] == list(range(2, 12))
