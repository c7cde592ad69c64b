"""Start-up cost of the local stack: cold (nothing cached), warm (jars cached, new data) and no-op.

Run: ``.venv/bin/python ops/bench/stack.py``. Each phase runs the real ``esflow stack up`` in a fresh
stack directory on free ports. "Cold" also empties Maven's local repository (via MAVEN_OPTS), so it
measures the download from Maven Central. `up` reports its phases (jar resolution, format, Postgres
initdb+start, broker until metadata answers), printed beside each total. The baseline, measured in the
same run, is the bare start of the CLI (`esflow --version`): the part of every `up` that is Python's
start-up, not the servers.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ops.stack.proc import free_port


def _up(env: dict[str, str]) -> tuple[float, dict[str, object]]:
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "esflow", "stack", "up", "--json"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    elapsed = time.monotonic() - t0
    if proc.returncode != 0:
        raise SystemExit(f"stack up failed: {proc.stderr.strip()}")
    return elapsed, json.loads(proc.stdout)


def _env(base: Path, cache: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ESFLOW_")}
    env.update(
        ESFLOW_STACK_DIR=str(base),
        ESFLOW_CACHE_DIR=str(cache),
        ESFLOW_KAFKA_PORT=str(free_port()),
        ESFLOW_KAFKA_CONTROLLER_PORT=str(free_port()),
        ESFLOW_PG_PORT=str(free_port()),
    )
    env.update(extra)
    return env


def _reset(env: dict[str, str]) -> None:
    subprocess.run(
        [sys.executable, "-m", "esflow", "stack", "reset", "--yes"], env=env, capture_output=True, check=False
    )


def main() -> None:
    """Measure and print."""
    work = Path(tempfile.mkdtemp(prefix="esflow-bench-stack-"))
    rows: list[tuple[str, float, dict[str, object]]] = []
    try:
        cold_cache = work / "cache-cold"
        m2 = work / "m2"
        env = _env(work / "cold", cold_cache, MAVEN_OPTS=f"-Dmaven.repo.local={m2}")
        elapsed, status = _up(env)
        rows.append(("cold (empty jar cache + empty Maven repo)", elapsed, status))
        _reset(env)

        warm_cache = Path(os.environ.get("ESFLOW_CACHE_DIR", Path.home() / ".cache" / "esflow"))
        env = _env(work / "warm", warm_cache)
        elapsed, status = _up(env)
        rows.append(("warm (jars cached, new stack dir)", elapsed, status))
        elapsed, status = _up(env)
        rows.append(("no-op (already up)", elapsed, status))
        subprocess.run(
            [sys.executable, "-m", "esflow", "stack", "down"], env=env, capture_output=True, check=False
        )
        elapsed, status = _up(env)
        rows.append(("restart (stack dir exists, servers down)", elapsed, status))
        _reset(env)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    t0 = time.monotonic()
    subprocess.run([sys.executable, "-m", "esflow", "--version"], capture_output=True, check=True)
    cli = time.monotonic() - t0
    print(f"{'stack up':<44} {'wall s':>7}  phases (s)")
    for name, elapsed, status in rows:
        phases = status.get("timings_s") or {}
        print(f"{name:<44} {elapsed:7.2f}  {phases}")
    print(f"{'baseline: esflow --version (CLI start)':<44} {cli:7.2f}")
    final = rows[1][2]
    kafka = final["kafka"]
    pg = final["postgres"]
    assert isinstance(kafka, dict) and isinstance(pg, dict)
    print(
        f"broker RSS after start: {kafka['rss_kib'] / 1024:.0f} MiB (heap flags from ESFLOW_KAFKA_HEAP_OPTS)"
    )
    print(f"postmaster RSS after start: {pg['rss_kib'] / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
