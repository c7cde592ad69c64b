"""`esflow projector run` with several projections: a supervised host (or workers), stopped tidily."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ops.bench.projection_workload import Workload
from tests.e2e.projections.harness import Harness
from tests.support.wait import eventually


@pytest.mark.parametrize("mode", ["default", "--processes"])
def test_supervised_workers_apply_stop_on_sigterm_and_remove_their_faust_data(
    harness: Harness, tmp_path: Path, mode: str
) -> None:
    temp = tmp_path / "tmp"
    temp.mkdir()
    datadirs = temp / "esflow-faust"
    log = harness.produce(Workload(seed=61).events(400))
    out = (tmp_path / "projector.log").open("wb")
    projector = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "esflow",
            "projector",
            "run",
            *([mode] if mode != "default" else []),
            "event_log",
            "orders",
        ],
        env=harness.env(TMPDIR=str(temp)),
        stdout=out,
        stderr=subprocess.STDOUT,
    )
    try:
        orders = sum(1 for topic, *_ in log if topic == harness.topic("order"))
        harness.wait_applied({"event_log": len(log), "orders": orders}, timeout=120)
        # One data directory per worker process, named after its consumer group.
        names = sorted(p.name for p in datadirs.iterdir())
        if mode == "default":  # one host serving both
            assert len(names) == 1, names
            assert names[0].startswith(f"{harness.group_prefix}-host-"), names
        else:
            assert len(names) == 2, names
            assert names[0].startswith(f"{harness.group_prefix}-event_log-v1-"), names
            assert names[1].startswith(f"{harness.group_prefix}-orders-v1-"), names
        projector.send_signal(signal.SIGTERM)
        assert projector.wait(60) == 0
    finally:
        if projector.poll() is None:
            projector.kill()
            projector.wait(10)
        out.close()
    text = (tmp_path / "projector.log").read_text(errors="replace")
    if mode == "default":
        assert "projector host: pid" in text, text[-3000:]
    else:
        assert "projector event_log: pid" in text and "projector orders: pid" in text, text[-3000:]
    assert "restarting" not in text, text[-3000:]
    assert list(datadirs.iterdir()) == [], "a worker left its Faust data directory behind"


def test_a_stop_during_a_version_switch_stops_the_worker_instead_of_restarting_it(harness: Harness) -> None:
    log = harness.produce(Workload(seed=62).events(200))
    worker = harness.start("event_log")
    harness.wait_applied({"event_log": len(log)}, timeout=120)
    rebuilt = subprocess.run(
        [sys.executable, "-m", "esflow", "projection", "rebuild", "event_log", "--quiet"],
        env=harness.env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert rebuilt.returncode == 0, rebuilt.stderr
    # The worker stops itself to re-execute on v2 (about a second of Faust shutting down); an operator's
    # SIGTERM meanwhile must still stop it. Watch its log closely to send it inside that window.
    (log_file,) = harness.logs.glob("event_log-*.log")
    eventually(
        lambda: b"; switching" in log_file.read_bytes(),
        timeout=60,
        interval=0.005,
        what="the worker to notice v2",
        details=harness.log_text,
    )
    worker.send_signal(signal.SIGTERM)
    try:
        code = worker.wait(60)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the worker went on after a SIGTERM\n{harness.log_text()}") from None
    # 0 when the signal came while Faust was stopping; killed when it came between Faust and the exec.
    assert code in (0, -signal.SIGTERM), harness.log_text()
