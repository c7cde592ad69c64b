"""Prometheus metrics of a process-manager worker, beside the shell's own (transactions, health, lag).

They extend :class:`processors.metrics.Metrics`, so the shell's counters, ``/healthz`` and ``/readyz``
are served from the same registry and port. Every count is taken once the transaction that did it
committed (an aborted batch is re-read and must not count twice).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from processors.metrics import Metrics


class ProcessMetrics(Metrics):
    """Instances started, status transitions, timers fired, re-sends and step latency, per process."""

    def __init__(self, stale_after_s: float = 30.0) -> None:
        super().__init__(stale_after_s)
        r = self.registry
        self.started = Counter("esflow_process_started", "Instances started.", ["process"], registry=r)
        self.transitions = Counter(
            "esflow_process_transitions",
            "Instances entering a status (completed, compensating, compensated, failed).",
            ["process", "status"],
            registry=r,
        )
        self.timers = Counter(
            "esflow_process_timers_fired",
            "Durable timers (deadlines) that came due.",
            ["process"],
            registry=r,
        )
        self.retries = Counter(
            "esflow_process_resends",
            "Commands written again: retry (after a retryable rejection) or resend (no answer in time).",
            ["process", "kind"],
            registry=r,
        )
        self.step_seconds = Histogram(
            "esflow_process_step_seconds", "From a step's first command to its final answer.", ["process"],
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60), registry=r,
        )  # fmt: skip
        self.running = Gauge(
            "esflow_process_running",
            "Instances held by this worker that have not ended.",
            ["process"],
            registry=r,
        )
