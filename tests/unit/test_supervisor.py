"""esflow.supervisor: children started, a crashed one restarted alone, SIGTERM forwarded to all."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.support.wait import eventually

# A child: records each start, exits 3 on its first start when told to crash, else waits for SIGTERM
# and records that it got it.
CHILD = textwrap.dedent(
    """
    import os, signal, sys, time
    from pathlib import Path
    name, folder, crash = sys.argv[1], Path(sys.argv[2]), sys.argv[3] == "crash"
    def stop(signum, frame):
        (folder / f"{name}.stopped.{os.getpid()}").touch()
        sys.exit(0)
    signal.signal(signal.SIGTERM, stop)
    starts = len(list(folder.glob(f"{name}.start.*")))
    (folder / f"{name}.start.{os.getpid()}").touch()
    if crash and starts == 0:
        sys.exit(3)
    while True:
        time.sleep(0.05)
    """
)

SUPERVISOR = textwrap.dedent(
    """
    import os, sys
    from esflow.supervisor import Supervisor
    folder, child = sys.argv[1], sys.argv[2]
    modes = {"a": "run", "b": "crash"}
    commands = {n: [sys.executable, "-c", child, n, folder, mode] for n, mode in modes.items()}
    sys.exit(Supervisor(commands, lambda name: dict(os.environ), min_delay_s=0.1, poll_s=0.05).run())
    """
)


def _count(folder: Path, pattern: str) -> int:
    return len(list(folder.glob(pattern)))


def test_a_crashed_child_restarts_alone_and_sigterm_stops_them_all(tmp_path: Path) -> None:
    supervisor = subprocess.Popen(
        [sys.executable, "-c", SUPERVISOR, str(tmp_path), CHILD], stderr=subprocess.PIPE, text=True
    )
    try:
        eventually(
            lambda: _count(tmp_path, "a.start.*") == 1 and _count(tmp_path, "b.start.*") == 2,
            timeout=30,
            what="a started once, b restarted after its crash",
        )
        supervisor.send_signal(signal.SIGTERM)
        _, err = supervisor.communicate(timeout=30)
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
            supervisor.wait(10)
    assert supervisor.returncode == 0, err
    assert "b exited with 3; restarting in 0s" in err, err
    assert _count(tmp_path, "a.start.*") == 1  # the healthy child was left alone
    # The SIGTERM reached the children running at the time, and the supervisor waited for them.
    assert _count(tmp_path, "a.stopped.*") == 1 and _count(tmp_path, "b.stopped.*") == 1
