"""A small process supervisor: one child process per name, restarted alone when it exits, stopped together.

For running several workers on one host without a process manager (a laptop, a demo, one container).
In production the platform's restart policies do this job (docker compose ``restart:``, systemd
``Restart=``, Kubernetes), one worker per service; see docs/operations.md.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import FrameType

log = logging.getLogger("esflow.supervisor")


@dataclass
class Supervisor:
    """Runs ``commands`` (name -> argv) as children until SIGTERM/SIGINT, which it forwards to them.

    A child that exits while the supervisor is not stopping is restarted after a pause that doubles
    with each exit of that child (``min_delay_s`` up to ``max_delay_s``), so a persistent failure does
    not spin. ``env`` gives each child its environment.
    """

    commands: Mapping[str, Sequence[str]]
    env: Callable[[str], dict[str, str]]
    min_delay_s: float = 1.0
    max_delay_s: float = 30.0
    poll_s: float = 0.5
    announce: Callable[[str], None] = log.warning
    """Where the supervisor reports starts and restarts (the CLI prints them on stderr)."""
    children: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict, init=False)
    _delays: dict[str, float] = field(default_factory=dict, init=False)
    _stopping: bool = field(default=False, init=False)

    def spawn(self, name: str) -> None:
        """Start (or restart) the child ``name``."""
        child = subprocess.Popen(list(self.commands[name]), env=self.env(name))
        self.children[name] = child
        self.announce(f"{name}: pid {child.pid}")

    def stop(self, signum: int = signal.SIGTERM, frame: FrameType | None = None) -> None:
        """Forward ``signum`` to the running children and stop restarting them (a signal handler)."""
        self._stopping = True
        for child in self.children.values():
            if child.poll() is None:
                child.send_signal(signum)

    def run(self) -> int:
        """Start every child, supervise them until stopped and all have exited; the exit code (0)."""
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        for name in self.commands:
            self.spawn(name)
        while True:
            alive = 0
            for name, child in list(self.children.items()):
                code = child.poll()
                if code is None:
                    alive += 1
                    continue
                if self._stopping:
                    continue
                delay = min(self.max_delay_s, 2 * self._delays.get(name, self.min_delay_s / 2))
                self.announce(f"{name} exited with {code}; restarting in {delay:.0f}s")
                self._delays[name] = delay
                time.sleep(delay)  # a crash loop backs off instead of spinning
                if not self._stopping:
                    self.spawn(name)
                    alive += 1
            if self._stopping and alive == 0:
                return 0
            time.sleep(self.poll_s)
