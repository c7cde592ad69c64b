"""Real processor processes, a command stream, and the exactly-once checker used by the crash tests."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, TopicPartition

from esflow.domain.aggregates import ACCOUNT, Rejection, execute
from esflow.domain.messages import CommandEnvelope
from esflow.messaging.kafka import consumer_config
from esflow.messaging.results import CommandResult, answer_key, is_report_key
from tests.integration.processor.kit import (
    CODEC,
    Env,
    Sender,
    deposit,
    envelope,
    open_account,
    read_all,
    withdraw,
)
from tests.support.wait import eventually

ESFLOW = str(Path(sys.executable).parent / "esflow")


class ProcessorProcess:
    """``esflow processor run`` as a child process, logging to a file."""

    def __init__(
        self, env: Env, base_env: dict[str, str], log_dir: Path, instance_id: str, **settings: str
    ) -> None:
        self.env = env
        self.instance_id = instance_id
        self.vars = {**base_env, **env.env_vars(), "ESFLOW_PROCESSOR_INSTANCE_ID": instance_id,
                     "ESFLOW_PROCESSOR_BATCH_MAX_MS": "50", **settings}  # fmt: skip
        self.log_dir = log_dir
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        log = (self.log_dir / f"processor-{self.instance_id}-{self.starts}.log").open("wb")
        self.proc = subprocess.Popen(
            [ESFLOW, "processor", "run"], env=self.vars, stdout=log, stderr=subprocess.STDOUT
        )

    def wait_processing(self, timeout: float = 60) -> None:
        """Block until the current incarnation holds partitions (its log says so)."""
        path = self.log_dir / f"processor-{self.instance_id}-{self.starts}.log"

        def assigned() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"processor exited:\n{self.log_text()}")
            return "assigned" in path.read_text(errors="replace")

        eventually(assigned, timeout=timeout, what="the processor to be assigned", details=self.log_text)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def terminate(self, timeout: float = 60) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def ensure_stopped(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)

    def log_text(self) -> str:
        return "\n".join(
            p.read_text(errors="replace")[-3000:]
            for p in sorted(self.log_dir.glob(f"processor-{self.instance_id}-*.log"))
        )


@dataclass
class Stream:
    """Account commands at a steady rate: opens, deposits, withdrawals, stale versions, duplicates."""

    env: Env
    total: int
    rate: float
    accounts: int = 200
    seed: int = 4
    sent: list[CommandEnvelope] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)
    stop: threading.Event = field(default_factory=threading.Event)
    """Set to end the stream before ``total`` (a test that loads until its chaos is over)."""

    def run(self) -> None:
        rnd = random.Random(self.seed)
        sender = Sender(self.env)
        ids = [uuid.uuid4() for _ in range(self.accounts)]
        started = time.monotonic()
        chunk = max(1, int(self.rate / 20))
        while len(self.sent) < self.total and not self.stop.is_set():
            batch: list[CommandEnvelope] = []
            for _ in range(min(chunk, self.total - len(self.sent))):
                n = len(self.sent) + len(batch)
                if n < self.accounts:
                    batch.append(envelope(ids[n], open_account()))
                    continue
                roll = rnd.random()
                acc = rnd.choice(ids)
                if roll < 0.03 and self.sent:  # a client retry: same command id, resent later
                    batch.append(rnd.choice(self.sent[-200:]))
                elif roll < 0.06:
                    batch.append(
                        envelope(acc, deposit(rnd.randint(1, 50)), expected_version=rnd.randint(1, 40))
                    )
                elif roll < 0.6:
                    batch.append(envelope(acc, deposit(rnd.randint(1, 100))))
                else:
                    batch.append(envelope(acc, withdraw(rnd.randint(1, 150))))
            sender.send(batch)
            self.sent.extend(batch)
            ahead = len(self.sent) / self.rate - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)  # pacing the load at its rate, not waiting for anything
        self.done.set()


class EventWatcher:
    """A read_committed consumer following events.account live, recording every event id it is shown."""

    def __init__(self, env: Env) -> None:
        topic = env.name("events.account")
        self.consumer = Consumer(consumer_config(env.kafka, f"watch-{uuid.uuid4().hex}"))
        md = self.consumer.list_topics(topic, timeout=30)
        self.consumer.assign([TopicPartition(topic, p, 0) for p in md.topics[topic].partitions])
        self.seen: list[uuid.UUID] = []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for msg in self.consumer.consume(1000, 0.2):
                if msg.error() is None:
                    self.seen.append(CODEC.decode(msg.value() or b"", kind="event").metadata.event_id)

    def stop(self) -> None:
        """Stop once the reader has caught up (nothing new for two seconds)."""
        count, quiet_since = -1, time.monotonic()
        while time.monotonic() - quiet_since < 2.0:
            if len(self.seen) != count:
                count, quiet_since = len(self.seen), time.monotonic()
            time.sleep(0.1)
        self._stop.set()
        self.thread.join(30)
        self.consumer.close()


def wait_for_results(
    env: Env, sent: list[CommandEnvelope], timeout: float
) -> dict[uuid.UUID, list[CommandResult]]:
    wanted = {e.metadata.command_id for e in sent}
    consumer = Consumer(consumer_config(env.kafka, f"res-{uuid.uuid4().hex}"))
    topic = env.name("command-results")
    md = consumer.list_topics(topic, timeout=30)
    consumer.assign([TopicPartition(topic, p, 0) for p in md.topics[topic].partitions])
    got: dict[uuid.UUID, list[CommandResult]] = defaultdict(list)

    def consume() -> None:
        for msg in consumer.consume(5000, 0.5):
            if msg.error() is None and not is_report_key(msg.key()):
                r = CommandResult.from_bytes(msg.value() or b"")
                got[r.command_id].append(r)

    try:
        eventually(
            lambda: wanted <= got.keys(),
            timeout=timeout,
            step=consume,
            what="every command's result",
            details=lambda: f"{len(wanted - got.keys())} of {len(wanted)} commands unanswered",
        )
    finally:
        consumer.close()
    return got


@dataclass
class Report:
    commands: int
    distinct: int
    accepted: int
    rejected: int
    events: int
    aborted_events: int
    reasons: dict[str, int]


def check_exactly_once(
    env: Env, sent: list[CommandEnvelope], watcher_seen: list[uuid.UUID], window: int = 32
) -> Report:
    """Every command one answer (re-sent ones: the same answer), the domain's verdicts, gap-free event log."""
    results = wait_for_results(env, sent, timeout=120)
    # Re-read everything to the end: late duplicates of answers would show up here.
    all_results: dict[uuid.UUID, list[CommandResult]] = defaultdict(list)
    for msg in read_all(env.kafka, env.name("command-results")):
        assert not is_report_key(msg.key()), "a dead-letter report for a well-formed command"
        r = CommandResult.from_bytes(msg.value() or b"")
        assert msg.key() == answer_key(r.aggregate_type or "", r.aggregate_id or "", str(r.command_id))
        all_results[r.command_id].append(r)
    sends: dict[uuid.UUID, int] = defaultdict(int)
    for e in sent:
        sends[e.metadata.command_id] += 1
    for cid, n in sends.items():
        answers = all_results[cid]
        assert len(answers) == n, f"{cid}: sent {n}x, answered {len(answers)}x"
        assert all(a == answers[0] for a in answers), f"{cid}: answers differ"
    assert set(all_results) == set(sends), "answers to commands nobody sent"
    del results

    # The verdicts are the pure domain's, in per-aggregate command order (one producer, one partition).
    per_aggregate: dict[uuid.UUID, list[CommandEnvelope]] = defaultdict(list)
    for e in sent:
        per_aggregate[e.metadata.aggregate_id].append(e)
    expected_events = 0
    reasons: dict[str, int] = defaultdict(int)
    for commands in per_aggregate.values():
        state: Any = None
        version = 0
        recent: list[uuid.UUID] = []
        for e in commands:
            cid = e.metadata.command_id
            actual = all_results[cid][0]
            if cid in recent:
                continue  # answered from the window: checked above (identical answers)
            decision = execute(ACCOUNT, state, version, e.command, e.metadata.expected_version)
            recent = [*recent, cid][-window:]
            if isinstance(decision, Rejection):
                assert (actual.status, actual.reason, actual.version) == (
                    "rejected",
                    decision.code,
                    version,
                ), (cid, actual)
                reasons[decision.code] += 1
            else:
                version += len(decision)
                state = ACCOUNT.fold(decision, state)
                expected_events += len(decision)
                assert (actual.status, actual.version, len(actual.events)) == (
                    "accepted",
                    version,
                    len(decision),
                )

    committed = [
        CODEC.decode(m.value() or b"", kind="event") for m in read_all(env.kafka, env.name("events.account"))
    ]
    versions: dict[uuid.UUID, list[int]] = defaultdict(list)
    for ev in committed:
        versions[ev.metadata.aggregate_id].append(ev.metadata.aggregate_version)
    for agg, vs in versions.items():
        assert vs == list(range(1, len(vs) + 1)), f"{agg}: versions {vs[:20]}..."
    assert len(committed) == expected_events
    committed_ids = {ev.metadata.event_id for ev in committed}
    for cid in sends:
        for ref in all_results[cid][0].events:
            assert ref.event_id in committed_ids
    leaked = [eid for eid in watcher_seen if eid not in committed_ids]
    assert not leaked, f"a read_committed reader saw {len(leaked)} events of aborted transactions"
    assert len(watcher_seen) == len(set(watcher_seen)) == len(committed)
    uncommitted = read_all(env.kafka, env.name("events.account"), isolation="read_uncommitted")
    accepted = sum(1 for cid in sends if all_results[cid][0].status == "accepted")
    return Report(
        commands=len(sent),
        distinct=len(sends),
        accepted=accepted,
        rejected=len(sends) - accepted,
        events=len(committed),
        aborted_events=len(uncommitted) - len(committed),
        reasons=dict(reasons),
    )


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip() not in ("", "0", "false", "no")
