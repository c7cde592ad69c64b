"""Prometheus metrics and the health/readiness endpoints of one processor instance.

Each :class:`Metrics` has its own registry, so several processors can live in one test process.
``/healthz`` answers 200 while the loop has turned within ``stale_after_s`` (a wedged loop fails it);
``/readyz`` answers 200 once the instance holds partitions and has restored their state.
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)


class Metrics:
    """The processor's counters, gauges and histograms, and its liveness/readiness flags."""

    def __init__(self, stale_after_s: float = 30.0) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.commands = Counter(
            "esflow_processor_commands", "Commands handled, by aggregate, outcome and reason.",
            ["aggregate", "outcome", "reason"], registry=r,
        )  # fmt: skip
        self.events = Counter("esflow_processor_events", "Events appended.", ["aggregate"], registry=r)
        self.dead_letters = Counter(
            "esflow_processor_dead_letters", "Commands sent to the dead-letter topic.", ["reason"], registry=r
        )
        self.transactions = Counter(
            "esflow_processor_transactions", "Kafka transactions, by outcome.", ["outcome"], registry=r
        )
        self.transaction_seconds = Histogram(
            "esflow_processor_transaction_seconds", "From begin_transaction to commit_transaction returning.",
            buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5), registry=r,
        )  # fmt: skip
        self.batch_size = Histogram(
            "esflow_processor_batch_size", "Commands per transaction.",
            buckets=(1, 5, 10, 50, 100, 250, 500, 1000, 2500, 5000), registry=r,
        )  # fmt: skip
        self.restore_records = Gauge(
            "esflow_processor_restore_records",
            "Snapshots and events read by the current restore.",
            registry=r,
        )
        self.restore_seconds = Gauge(
            "esflow_processor_restore_seconds", "Duration of the last restore.", registry=r
        )
        self.cached_aggregates = Gauge(
            "esflow_processor_cached_aggregates", "Aggregates held for the assigned partitions.", registry=r
        )
        self.lag = Gauge(
            "esflow_processor_lag", "Commands not yet processed, by topic.", ["topic"], registry=r
        )
        self.assigned_partitions = Gauge(
            "esflow_processor_assigned_partitions", "Command partitions this instance owns.", registry=r
        )
        self.stale_after_s = stale_after_s
        self._children: dict[tuple[str, str, str], Any] = {}
        self._event_children: dict[str, Any] = {}
        self.last_turn = time.monotonic()
        self.ready = False
        self._server: ThreadingHTTPServer | None = None

    def count(self, aggregate: str, outcome: str, reason: str, commands: int = 1) -> None:
        """Count committed commands by outcome (dead letters also by reason); label children are cached."""
        key = (aggregate, outcome, reason)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self.commands.labels(aggregate, outcome, reason)
        child.inc(commands)
        if outcome == "dead_letter":
            self.dead_letters.labels(reason).inc(commands)

    def count_events(self, aggregate: str, events: int) -> None:
        """Count committed appended events."""
        ev = self._event_children.get(aggregate)
        if ev is None:
            ev = self._event_children[aggregate] = self.events.labels(aggregate)
        ev.inc(events)

    def turn(self) -> None:
        """Record that the loop is alive."""
        self.last_turn = time.monotonic()

    @property
    def healthy(self) -> bool:
        """True while the loop turns."""
        return time.monotonic() - self.last_turn < self.stale_after_s

    def serve(self, host: str, port: int) -> int:
        """Serve /metrics, /healthz and /readyz on a daemon thread; returns the bound port."""
        metrics = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.startswith("/metrics"):
                    self._send(200, generate_latest(metrics.registry), CONTENT_TYPE_LATEST)
                elif self.path.startswith("/healthz"):
                    ok = metrics.healthy
                    self._send(200 if ok else 503, b"ok\n" if ok else b"stale\n", "text/plain")
                elif self.path.startswith("/readyz"):
                    ok = metrics.ready and metrics.healthy
                    self._send(200 if ok else 503, b"ready\n" if ok else b"not ready\n", "text/plain")
                else:
                    self._send(404, b"not found\n", "text/plain")

            def _send(self, code: int, body: bytes, content_type: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return  # scrapes every few seconds would drown the processor's own log

        self._server = ThreadingHTTPServer((host, port), Handler)
        threading.Thread(target=self._server.serve_forever, name="metrics", daemon=True).start()
        return int(self._server.server_address[1])

    def close(self) -> None:
        """Stop the HTTP server."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
