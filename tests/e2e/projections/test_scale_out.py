"""Scale-out under a rolling restart: 3 processors, 2 projector hosts, every one restarted under load.

Three ``esflow processor run`` instances share the processor group; two ``esflow projector run --host``
processes serve every projection (two workers per projection: each host is a member of every projection's
group). A steady stream of account commands (opens, deposits, withdrawals, stale versions, client
re-sends) runs while each instance in turn is stopped (SIGTERM) and started again, the next one only once
the previous one is back at work. Afterwards: every command has exactly one answer (a re-sent one the same
answer) and the verdicts are the pure domain's, the event log is gap-free and no read_committed reader saw
an aborted event (``check_exactly_once``), and every read model equals the fold of the log.

Issue 15's cluster variant of this runs the same against ``esflow stack up --brokers 3`` by hand
(docs/operations.md); here it runs on the session's broker, in the default test run.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

from esflow.messaging.codec import Codec
from esflow.messaging.topics import apply, catalogue
from projections.registry import PROJECTIONS
from tests.e2e.processor.harness import EventWatcher, ProcessorProcess, Stream, check_exactly_once
from tests.e2e.projections.expected import committed_log, comparable, fold, read_tables
from tests.e2e.projections.harness import Harness
from tests.e2e.projections.test_read_models import TOPICS_OF, _count
from tests.integration.processor.kit import Env
from tests.support.wait import eventually

pytestmark = pytest.mark.e2e

RATE = float(os.environ.get("ESFLOW_ROLLING_RATE", "150"))
"""Commands/s of the load, which runs from before the first restart to a second after the last."""
CODEC = Codec.from_settings()


class Host:
    """One `esflow projector run --host` (every projection), restartable, logging per incarnation."""

    def __init__(self, harness: Harness, name: str) -> None:
        self.harness = harness
        self.name = name
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def log(self) -> Path:
        return self.harness.logs / f"{self.name}-{self.starts}.log"

    def start(self) -> None:
        self.starts += 1
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "esflow", "projector", "run", "--host"],
            env=self.harness.env(ESFLOW_PROJECTION_SESSION_TIMEOUT_S="6"),
            stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self) -> None:
        def ready() -> bool:
            assert self.proc is not None and self.proc.poll() is None, self.log.read_text(errors="replace")
            return b"[^Worker]: Ready" in self.log.read_bytes()

        eventually(ready, timeout=180, interval=0.1, what=f"{self.name} ready", details=self.text)

    def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(30)
            return None

    def text(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


def test_a_rolling_restart_of_every_instance_under_load_loses_and_doubles_nothing(
    harness: Harness, admin: AdminClient, tmp_path: Path
) -> None:
    specs = catalogue(harness.topics)
    apply(admin, specs)  # the processor's topics beside the projections' (the same prefix)
    env = Env(harness.kafka, harness.topics, f"{harness.group_prefix}-processor")
    base = harness.env()
    processors = [
        ProcessorProcess(env, base, tmp_path, str(i), ESFLOW_PROCESSOR_SESSION_TIMEOUT_MS="6000")
        for i in range(3)
    ]
    hosts = [Host(harness, f"host{i}") for i in range(2)]
    watcher: EventWatcher | None = None
    try:
        for p in processors:
            p.start()
        for h in hosts:
            h.start()
        for p in processors:
            p.wait_processing()
        for h in hosts:
            h.wait_ready()
        watcher = EventWatcher(env)
        stream = Stream(env, total=10**9, rate=RATE)
        feeder = threading.Thread(target=stream.run, daemon=True)
        feeder.start()

        def progressed(by: int) -> None:
            # The next restart only once the load has moved on: every member works between restarts.
            mark = len(stream.sent) + by
            eventually(
                lambda: len(stream.sent) >= mark, timeout=120, interval=0.05, what="the load to move on"
            )

        restarts: list[str] = []
        for p in processors:
            progressed(int(RATE))
            assert p.terminate() == 0, p.log_text()
            p.start()
            p.wait_processing()
            restarts.append(f"processor {p.instance_id}")
        for h in hosts:
            progressed(int(RATE))
            assert h.stop() == 0, h.text()
            h.start()
            h.wait_ready()
            restarts.append(h.name)
        progressed(int(RATE))
        stream.stop.set()
        feeder.join(60)
        watcher.stop()
        report = check_exactly_once(env, stream.sent, watcher.seen)
        watcher = None

        log = committed_log(env.kafka, env.topics)
        assert len(log) == report.events
        harness.wait_applied({n: _count(log, harness, TOPICS_OF[n]) for n in PROJECTIONS}, timeout=180)
        for h in hosts:
            assert h.stop() == 0, h.text()
        expected = fold(log)
        actual, expected = comparable(read_tables(harness.engine, harness.bi), expected)
        for name in expected:
            assert actual[name].keys() == expected[name].keys(), f"{name}: rows missing or extra"
            wrong = [k for k in expected[name] if actual[name][k] != expected[name][k]]
            assert not wrong, f"{name}: {len(wrong)} rows differ, e.g. {actual[name][wrong[0]]}"
        assert harness.dead_letters() == 0
        print(
            f"\nrolling restart ({', '.join(restarts)}) under {RATE:.0f} commands/s: {report.commands} sent, "
            f"{report.distinct} distinct, {report.accepted} accepted, {report.rejected} rejected, "
            f"{report.events} events; 0 lost, 0 answered twice, read models equal the fold of the log"
        )
    finally:
        if watcher is not None:
            watcher.stop()
        for p in processors:
            p.ensure_stopped()
        for h in hosts:
            h.stop()
        names = [s.name for s in specs if s.name not in harness.source_topics]
        for fut in admin.delete_topics(names, operation_timeout=30).values():
            with contextlib.suppress(Exception):  # best-effort cleanup of this test's topics
                fut.result(timeout=30)
