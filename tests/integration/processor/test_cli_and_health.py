from __future__ import annotations

import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from pathlib import Path

from processors.metrics import Metrics
from processors.processor import Processor
from tests.integration.processor.kit import CODEC, Env, Results, Sender, envelope, open_account
from tests.support.services import Services
from tests.support.wait import eventually

ESFLOW = str(Path(sys.executable).parent / "esflow")


def test_run_without_topics_fails_in_one_line(services: Services) -> None:
    env = services.subprocess_env()
    env["ESFLOW_TOPIC_PREFIX"] = f"absent-{uuid.uuid4().hex[:6]}."
    proc = subprocess.run([ESFLOW, "processor", "run"], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("esflow: error: missing topics:"), proc.stderr
    assert "esflow topics apply" in lines[-1]


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_metrics_health_and_readiness(penv: Env, sender: Sender, results: Results) -> None:
    metrics = Metrics()
    port = metrics.serve("127.0.0.1", 0)
    base = f"http://127.0.0.1:{port}"
    proc = Processor(penv.kafka, penv.topics, penv.processor_settings(), CODEC, metrics=metrics)
    try:
        assert _get(f"{base}/readyz")[0] == 503  # not started: no partitions, nothing restored
        proc.start()
        eventually(lambda: metrics.ready, timeout=60, step=proc.run_once, what="the processor to be ready")
        assert _get(f"{base}/readyz") == (200, "ready\n")
        assert _get(f"{base}/healthz") == (200, "ok\n")
        sent = sender.send([envelope(uuid.uuid4(), open_account()) for _ in range(5)])

        def step() -> None:
            proc.run_once()
            results.poll(0)

        eventually(
            lambda: {e.metadata.command_id for e in sent} <= results.by_id.keys(),
            timeout=60,
            step=step,
            what="the results of five commands",
        )
        status, body = _get(f"{base}/metrics")
        assert status == 200
        assert 'esflow_processor_commands_total{aggregate="account",outcome="accepted",reason=""} 5.0' in body
        assert "esflow_processor_transaction_seconds_bucket" in body
        assert "esflow_processor_batch_size_count" in body
        # One partition set per aggregate type the processor serves (all of them by default).
        assigned = len(penv.processor_settings().aggregate_types) * penv.topics.partitions
        assert f"esflow_processor_assigned_partitions {assigned:.1f}" in body
        metrics.stale_after_s = 0.0  # a loop that stops turning is reported unhealthy
        assert _get(f"{base}/healthz")[0] == 503
    finally:
        proc.close()
        metrics.close()
