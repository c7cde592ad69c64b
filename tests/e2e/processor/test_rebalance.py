"""Two processor processes in one group: one joins mid-run, then the other leaves on SIGTERM."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from tests.e2e.processor.harness import (
    EventWatcher,
    ProcessorProcess,
    Stream,
    check_exactly_once,
    wait_for_results,
)
from tests.integration.processor.kit import Env
from tests.support.services import Services
from tests.support.wait import eventually


def _assignments(proc: ProcessorProcess) -> int:
    return proc.log_text().count("INFO esflow.processor: assigned")


def test_rebalance_mid_run_and_graceful_leave(penv: Env, services: Services, tmp_path: Path) -> None:
    settings = {"ESFLOW_PROCESSOR_AGGREGATES": "account", "ESFLOW_PROCESSOR_SESSION_TIMEOUT_MS": "30000"}
    a = ProcessorProcess(penv, services.subprocess_env(), tmp_path, "a", **settings)
    b = ProcessorProcess(penv, services.subprocess_env(), tmp_path, "b", **settings)
    watcher = EventWatcher(penv)
    stream = Stream(penv, total=3000, rate=500.0, accounts=150, seed=11)
    feeder = threading.Thread(target=stream.run, daemon=True)
    try:
        a.start()
        a.wait_processing()
        feeder.start()
        eventually(lambda: len(watcher.seen) >= 300, timeout=60, what="a to append events")
        b.start()  # joins: the group rebalances while commands flow
        eventually(
            lambda: _assignments(b) >= 1 and _assignments(a) >= 2, timeout=60, what="the join rebalance"
        )
        # Both instances process for a while before a leaves.
        shared = len(watcher.seen) + 300
        eventually(lambda: len(watcher.seen) >= shared, timeout=60, what="events after the rebalance")
        assert a.terminate() == 0, a.log_text()
        assert "stopped:" in a.log_text()
        # A clean stop leaves the group: b takes over long before the 30 s session timeout would expire.
        left = time.monotonic()
        eventually(lambda: _assignments(b) >= 2, timeout=25, what="b to take over")
        took_over = time.monotonic() - left
        assert took_over < 10
        assert "revoked" in a.log_text()
        feeder.join(60)
        wait_for_results(penv, stream.sent, timeout=120)
        watcher.stop()
        report = check_exactly_once(penv, stream.sent, watcher.seen)
    finally:
        a.ensure_stopped()
        b.ensure_stopped()
    print(f"\nrebalance test: b took over {took_over:.1f}s after a's SIGTERM; {report}")
    assert report.accepted > 0
