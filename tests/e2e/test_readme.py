"""A new user's first hour: `esflow demo --keep-running`, then README.md's shell examples pasted as written.

The demo runs on a stack of its own (free ports, a temporary directory), exactly as the README tells a user
to run it; the marked ```sh blocks of the README (tests/readme.py) then run in one bash, in order, in a
directory whose `.venv/bin/esflow` is this interpreter's esflow. Ctrl-C (SIGINT) must then stop everything
the demo started.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.readme import runnable_script, shell_blocks
from tests.support.stack_env import own_stack_env

DEMO_ARGS = ["--commands", "300", "--rate", "150"]


def _play_command() -> list[str]:
    """The README's one command for playing, without its comment."""
    lines = [
        line for _, block in shell_blocks() for line in block.splitlines() if "demo --keep-running" in line
    ]
    assert len(lines) == 1, lines
    return lines[0].split("#")[0].split()


def _wait_for(log: Path, marker: str, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while marker not in log.read_text(errors="replace"):
        assert proc.poll() is None, f"the demo exited ({proc.returncode}):\n{log.read_text()[-4000:]}"
        assert time.monotonic() < deadline, (
            f"no {marker!r} after {timeout_s:.0f}s:\n{log.read_text()[-4000:]}"
        )
        time.sleep(0.5)


def _fake_venv(root: Path) -> None:
    """`.venv/bin/esflow` under ``root``, running this interpreter's esflow (whichever venv it lives in)."""
    bin_dir = root / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    esflow = bin_dir / "esflow"
    esflow.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m esflow "$@"\n')
    esflow.chmod(0o755)


def test_demo_keep_running_then_every_readme_example(tmp_path: Path) -> None:
    env = own_stack_env(tmp_path)
    play = _play_command()
    assert play == [".venv/bin/esflow", "demo", "--keep-running"]
    user = tmp_path / "repo"
    _fake_venv(user)
    log = tmp_path / "demo.log"
    with log.open("wb") as demo_out:
        demo = subprocess.Popen(
            [*play, *DEMO_ARGS],
            cwd=user,
            env=env,
            stdout=demo_out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C of pytest's terminal must not reach it: the test sends its own
        )
    try:
        _wait_for(log, "pipeline running in the foreground", demo, 900)
        examples = subprocess.run(
            ["bash", "-x", "-e", "-u", "-o", "pipefail", "-c", runnable_script()],
            cwd=user,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        shown = f"stdout:\n{examples.stdout[-6000:]}\nstderr:\n{examples.stderr[-6000:]}"
        assert examples.returncode == 0, shown
        out = examples.stdout
        assert out.count('"status":"accepted"') >= 4, shown  # open, deposit, and the file's two commands
        assert '"reason":"insufficient_funds"' in out and "exit 2" in out, shown
        assert "unexpected outcomes: 0" in out, shown
        assert "command->projection latency ms" in out, shown
        assert re.search(r"^ *status +\| count", out, re.MULTILINE), shown  # what psql printed as analyst
        assert re.search(r"^\(\d+ rows?\)$", out, re.MULTILINE), shown

        os.kill(demo.pid, signal.SIGINT)
        assert demo.wait(180) == 0, log.read_text()[-4000:]
        assert "stack stopped (it was started by this demo)" in log.read_text()
        status = subprocess.run(
            [sys.executable, "-m", "esflow", "stack", "status", "--json"], env=env, capture_output=True
        )
        assert status.returncode == 1, "Ctrl-C must stop everything the demo started"
    finally:
        if demo.poll() is None:
            # Its own session: the group holds the demo and the processor/projector it started.
            os.killpg(demo.pid, signal.SIGKILL)
            demo.wait()
        subprocess.run(
            [sys.executable, "-m", "esflow", "stack", "reset", "--yes"], env=env, capture_output=True
        )
