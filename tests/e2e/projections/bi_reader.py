"""A BI-style reader: a separate process querying the `bi` views in a loop through a read-only login.

Run as ``python -m tests.e2e.projections.bi_reader CONNINFO BI_SCHEMA OUT`` until SIGTERM. Each sample
(one JSON line in OUT) holds row counts and monotone totals of the views, or the error a query raised.
It keeps one connection (psycopg prepares repeated statements server-side, like BI drivers do) and opens
a fresh one every 20 samples, so both long-lived and new sessions are exercised.
"""

from __future__ import annotations

import itertools
import json
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

import psycopg

# Only totals that can never go down as more of the log is applied: counts of rows that are never
# deleted, and sums of amounts that only accumulate.
QUERIES = {
    "orders": "SELECT count(*) FROM orders",
    "daily_revenue": "SELECT count(*), coalesce(sum(gross), 0), coalesce(sum(refunds), 0), "
    "coalesce(sum(orders), 0) FROM daily_revenue",
    "status": "SELECT coalesce(sum(events_applied), 0) FROM projection_status WHERE projection = 'orders'",
}


def read_samples(path: Path) -> list[dict[str, Any]]:
    """The samples a reader wrote."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def problems(samples: list[dict[str, Any]]) -> list[str]:
    """What a BI user would have noticed: query errors, and any figure that went backwards."""
    found = [f"error: {s['error']}" for s in samples if "error" in s]
    for key in QUERIES:
        series = [s[key] for s in samples if key in s]
        for before, after in itertools.pairwise(series):
            if any(b < a for a, b in zip(before, after, strict=True)):
                found.append(f"{key} went backwards: {before} -> {after}")
    return found


def main(conninfo: str, schema: str, out_path: str) -> None:
    """Sample until SIGTERM."""
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    samples = 0
    conn: psycopg.Connection | None = None
    with Path(out_path).open("w") as out:
        while not stopping:
            sample: dict[str, object] = {"t": time.time()}
            try:
                if conn is None or samples % 20 == 0:
                    if conn is not None:
                        conn.close()
                    conn = psycopg.connect(conninfo, autocommit=True, options=f"-c search_path={schema}")
                for name, sql in QUERIES.items():
                    row = conn.execute(sql).fetchone()
                    assert row is not None
                    sample[name] = [float(v) for v in row]
            except Exception as exc:  # what the test wants to know about: any error a BI tool would see
                sample["error"] = f"{type(exc).__name__}: {exc}"
                if conn is not None:
                    conn.close()
                conn = None
            out.write(json.dumps(sample) + "\n")
            out.flush()
            samples += 1
            time.sleep(0.02)  # pacing the samples
    if conn is not None:
        conn.close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3])
