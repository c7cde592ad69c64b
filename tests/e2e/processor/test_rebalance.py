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


def _assignments(proc: ProcessorProcess) -> int:
    return proc.log_text().count("INFO esflow.processor: assigned")


def _wait(predicate: object, timeout: float, what: str) -> float:
    started = time.monotonic()
    while not predicate():  # type: ignore[operator]
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
    return time.monotonic() - started


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
        time.sleep(1.5)
        b.start()  # joins: the group rebalances while commands flow
        _wait(lambda: _assignments(b) >= 1 and _assignments(a) >= 2, 60, "the join rebalance")
        time.sleep(1.5)
        assert a.terminate() == 0, a.log_text()
        assert "stopped:" in a.log_text()
        # A clean stop leaves the group: b takes over long before the 30 s session timeout would expire.
        took_over = _wait(lambda: _assignments(b) >= 2, 25, "b to take over")
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
