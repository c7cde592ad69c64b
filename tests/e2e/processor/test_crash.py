"""SIGKILL the processor at random moments while commands stream in; nothing may be lost or doubled.

Default: 5,000 commands and 5 kills (CI). ``ESFLOW_FULL_CRASH=1``: the issue's 50,000 commands, 8 kills.
"""

from __future__ import annotations

import os
import random
import threading
import time
from pathlib import Path

from tests.e2e.processor.harness import (
    EventWatcher,
    ProcessorProcess,
    Stream,
    check_exactly_once,
    env_flag,
    wait_for_results,
)
from tests.integration.processor.kit import Env
from tests.support.services import Services


def test_sigkill_at_random_moments_loses_and_doubles_nothing(
    penv: Env, services: Services, tmp_path: Path
) -> None:
    full = env_flag("ESFLOW_FULL_CRASH")
    total = 50_000 if full else int(os.environ.get("ESFLOW_CRASH_COMMANDS", "5000"))
    rate = 2500.0 if full else 800.0
    kills_wanted = 8 if full else 5
    rnd = random.Random(7)
    proc = ProcessorProcess(
        penv, services.subprocess_env(), tmp_path, "crashy",
        ESFLOW_PROCESSOR_AGGREGATES="account", ESFLOW_PROCESSOR_STATIC_MEMBERSHIP="true",
        ESFLOW_PROCESSOR_SESSION_TIMEOUT_MS="6000",
    )  # fmt: skip
    watcher = EventWatcher(penv)
    stream = Stream(penv, total, rate)
    feeder = threading.Thread(target=stream.run, daemon=True)
    proc.start()
    feeder.start()
    kills = 0
    try:
        while kills < kills_wanted or not stream.done.is_set():
            proc.wait_processing()
            time.sleep(rnd.uniform(0.3, 2.0))  # a random moment: almost always inside a transaction
            assert proc.proc is not None and proc.proc.poll() is None, proc.log_text()
            proc.kill()
            kills += 1
            proc.start()
        feeder.join(120)
        wait_for_results(penv, stream.sent, timeout=120)
        watcher.stop()
        report = check_exactly_once(penv, stream.sent, watcher.seen)
    finally:
        proc.ensure_stopped()
    print(f"\ncrash test: {kills} SIGKILLs, {report}")
    assert kills >= kills_wanted
    assert report.accepted > 0 and report.rejected > 0
