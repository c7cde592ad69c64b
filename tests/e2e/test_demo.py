"""The README's main job (`esflow demo`) end to end, on a stack of its own, twice."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from projections.registry import PROJECTIONS
from tests.support.stack_env import own_stack_env


def test_demo_runs_twice_and_leaves_nothing_running(tmp_path: Path) -> None:
    env = own_stack_env(tmp_path)
    argv = [sys.executable, "-m", "esflow", "demo", "--commands", "600", "--rate", "300"]
    products_so_far = 0
    try:
        # The first run warms up for a second (300 commands, reported apart), the second not at all.
        for run, warmup in ((1, "1"), (2, "0")):
            proc = subprocess.run(
                [*argv, "--warmup", warmup], env=env, capture_output=True, text=True, timeout=600, check=False
            )
            assert proc.returncode == 0, f"run {run}:\n{proc.stdout}\n{proc.stderr}"
            out = proc.stdout
            assert "unexpected outcomes: 0" in out
            assert f"all {len(PROJECTIONS)} projections caught up" in out
            assert "orders by status:" in out and "revenue by day:" in out and "balances:" in out
            assert "this run created 30 products, 30 accounts" in out
            assert "5/5 read models, the whole database (this run and every earlier one):" in out
            found = re.search(r"catalogue: (\d+) products, (\d+) distinct SKUs", out)
            assert found, out
            products, skus = int(found[1]), int(found[2])
            warmed = re.search(r"warm-up created (\d+) products", out)
            if warmup == "0":
                assert warmed is None and "warm-up" not in out, out
            else:
                assert warmed, out
                assert re.search(r"warm-up command->result latency ms: p50 [\d.]+", out), out
            products_so_far += 30 + (int(warmed[1]) if warmed else 0)
            # Each run (and its warm-up) registers its own products; none shares a SKU with an earlier one.
            assert products == skus == products_so_far
            assert "stack stopped (it was started by this demo)" in out
            events = int(out.split("event_log: ")[1].split()[0])
            # Run 2 adds to run 1's data: the read models keep every event of both runs.
            assert events >= 500 * run
        status = subprocess.run(
            [sys.executable, "-m", "esflow", "stack", "status", "--json"],
            env=env,
            capture_output=True,
            text=True,
        )
        assert status.returncode == 1, "the demo must leave nothing running"
    finally:
        subprocess.run(
            [sys.executable, "-m", "esflow", "stack", "reset", "--yes"], env=env, capture_output=True
        )
