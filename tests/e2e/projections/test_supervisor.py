"""`esflow projector run --processes A B`: one child per projection, all stopped on SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from ops.bench.projection_workload import Workload
from tests.e2e.projections.harness import Harness


def _children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_supervisor_runs_a_child_per_projection_and_stops_them_gracefully(harness: Harness) -> None:
    log = harness.produce(Workload(seed=61).events(500))
    out = (harness.logs / "supervisor.log").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "esflow",
            "projector",
            "run",
            "--migrate",
            "--processes",
            "event_log",
            "account_balances",
        ],
        env=harness.env(),
        stdout=out,
        stderr=subprocess.STDOUT,
    )
    try:
        accounts = sum(1 for t, *_ in log if t == harness.topic("account"))
        harness.workers["supervisor"] = [proc]
        harness.wait_applied({"event_log": len(log), "account_balances": accounts}, timeout=120)
        children = _children(proc.pid)
        assert len(children) == 2
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, harness.log_text()
        assert not any(_alive(c) for c in children)
    finally:
        if proc.poll() is None:
            proc.kill()
