"""Process, port and pid-file helpers shared by the Kafka and Postgres servers of the local stack."""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from esflow.errors import PortInUse, PrerequisiteMissing, StackError


def require_program(program: str, *, what: str, install_hint: str) -> str:
    """Return the absolute path of ``program`` or raise a one-line :class:`PrerequisiteMissing`."""
    found = shutil.which(program)
    if found is None:
        raise PrerequisiteMissing(f"{what} `{program}` was not found", hint=install_hint)
    return found


def port_is_free(host: str, port: int) -> bool:
    """True when nothing listens on ``host:port`` and we may bind it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def ensure_ports_free(host: str, ports: dict[str, int]) -> None:
    """Raise :class:`PortInUse` naming the first taken port and the setting that moves it."""
    for setting, port in ports.items():
        if not port_is_free(host, port):
            raise PortInUse(
                f"port {host}:{port} is already in use by a process this stack did not start",
                hint=f"stop that process or choose another port with {setting}",
            )


def free_port(host: str = "127.0.0.1") -> int:
    """A port the kernel considers free right now (for test stacks)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def free_port_range(count: int, host: str = "127.0.0.1") -> int:
    """A base port with ``count`` consecutive free ports from it (a cluster: brokers, then controllers)."""
    for _ in range(50):
        base = free_port(host)
        if base + count < 65535 and all(port_is_free(host, base + i) for i in range(count)):
            return base
    raise RuntimeError(f"no {count} consecutive free ports found")


def read_pid(pid_file: Path) -> int | None:
    """The pid stored in ``pid_file`` (first line), or None when there is no usable file."""
    try:
        first = pid_file.read_text().splitlines()[0].strip()
        return int(first)
    except (OSError, IndexError, ValueError):
        return None


def process_cmdline(pid: int) -> str | None:
    """The command line of a live process, or None when it is gone (or a zombie)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    stat = _stat_fields(pid)
    # Z means it exited and awaits reaping.
    if stat is None or stat[0] == "Z":
        return None
    return raw.replace(b"\0", b" ").decode(errors="replace")


TICK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the parenthesised command name (state first), or None."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process (0 when it is gone)."""
    fields = _stat_fields(pid)
    return 0.0 if fields is None else (int(fields[11]) + int(fields[12])) / TICK


def uptime_seconds(pid: int) -> float | None:
    """Seconds since the process started (None when it is gone)."""
    fields = _stat_fields(pid)
    if fields is None:
        return None
    since_boot = float(Path("/proc/uptime").read_text().split()[0])
    # starttime, field 22 of stat: clock ticks after boot.
    return since_boot - int(fields[19]) / TICK


def own_cpu() -> float:
    """User + system CPU seconds of this process, all its threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of ``pid`` and every descendant, including those that exited and were reaped.

    The kernel adds a reaped child's time to its parent's cutime/cstime, so short-lived children (a
    Postgres backend that disconnected) still count; live descendants are added from their own stat.
    """
    stats = {int(e.name): _stat_fields(int(e.name)) for e in Path("/proc").iterdir() if e.name.isdigit()}
    children: dict[int, list[int]] = {}
    for child, fields in stats.items():
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(child)
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        fields = stats.get(current)
        if fields is not None:
            # utime, stime, cutime, cstime
            total += sum(int(f) for f in fields[11:15]) / TICK
            todo.extend(children.get(current, []))
    return total


def pid_alive_and_ours(pid_file: Path, marker: str) -> int | None:
    """The pid from ``pid_file`` if that process lives and its command line contains ``marker``.

    Checking the marker (our config path) protects against a recycled pid: we never signal a process
    that merely happens to have the number we once wrote down.
    """
    pid = read_pid(pid_file)
    if pid is None:
        return None
    cmdline = process_cmdline(pid)
    if cmdline is None or marker not in cmdline:
        return None
    return pid


def terminate(pid: int, *, timeout_s: float, name: str) -> None:
    """SIGTERM ``pid``, wait for it to exit, SIGKILL after ``timeout_s``."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if wait_until(lambda: process_cmdline(pid) is None, timeout_s=timeout_s, interval_s=0.2):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    if not wait_until(lambda: process_cmdline(pid) is None, timeout_s=10, interval_s=0.2):
        raise StackError(f"{name} (pid {pid}) did not exit after SIGKILL")


def wait_until(check: Callable[[], bool], *, timeout_s: float, interval_s: float = 0.25) -> bool:
    """Poll ``check`` until it returns True or ``timeout_s`` passes; returns the last result."""
    deadline = time.monotonic() + timeout_s
    while True:
        if check():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval_s)


def run(
    argv: Sequence[str],
    *,
    what: str,
    user: str | None = None,
    cwd: Path | None = None,
    timeout_s: float = 600,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a set-up command to completion; on failure raise a StackError with its last output line.

    ``user`` runs the command as that user (via runuser) when we are root, because initdb and pg_ctl
    refuse to run as root.
    """
    cmd = list(argv)
    if user is not None and os.geteuid() == 0:
        cmd = ["runuser", "-u", user, "--", *cmd]
    try:
        proc = subprocess.run(
            cmd,
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise StackError(f"{what} did not finish within {timeout_s:.0f}s") from exc
    except FileNotFoundError as exc:
        raise PrerequisiteMissing(f"{what}: `{cmd[0]}` was not found") from exc
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr + "\n" + proc.stdout).splitlines() if ln.strip()]
        last = lines[-1].strip() if lines else "no output"
        raise StackError(f"{what} failed (exit {proc.returncode}): {last}")
    return proc


def tail(path: Path, lines: int) -> str:
    """The last ``lines`` lines of a text file (empty when the file does not exist)."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            block = min(size, 256 * 1024)
            fh.seek(size - block)
            data = fh.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])


def rss_kib(pid: int) -> int | None:
    """Resident set size of a process in KiB (None when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None
