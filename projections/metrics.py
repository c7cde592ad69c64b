"""Prometheus metrics of the projections (served on ``ESFLOW_PROJECTION_METRICS_PORT`` when set)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from esflow.readmodel.projection import TP
from esflow.readmodel.store import BatchResult

EVENTS = Counter(
    "esflow_projection_events_total",
    "Events handled by a projection, by outcome (applied, skipped as redelivered, dead_lettered).",
    ["projection", "outcome"],
)
BATCH_SECONDS = Histogram(
    "esflow_projection_batch_seconds",
    "Time to decode and apply one batch, retries included.",
    ["projection"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
BATCH_SIZE = Histogram(
    "esflow_projection_batch_events",
    "Events per batch.",
    ["projection"],
    buckets=(1, 10, 100, 500, 1000, 5000),
)
RETRIES = Counter(
    "esflow_projection_retries_total", "Batches retried after a transient failure.", ["projection"]
)
LAG = Gauge(
    "esflow_projection_lag_events",
    "Events in the partition not yet applied (high watermark - checkpoint - 1).",
    ["projection", "topic", "partition"],
)
HALTED = Gauge(
    "esflow_projection_halted",
    "1 while a partition is halted by an error.",
    ["projection", "topic", "partition"],
)


class PrometheusObserver:
    """Reports :class:`~esflow.readmodel.applier.BatchApplier` activity as Prometheus metrics."""

    def batch_applied(self, projection: str, result: BatchResult, seconds: float) -> None:
        """Count events by outcome and time the batch."""
        EVENTS.labels(projection, "applied").inc(result.applied)
        EVENTS.labels(projection, "skipped").inc(result.skipped)
        EVENTS.labels(projection, "dead_lettered").inc(result.dead_lettered)
        BATCH_SECONDS.labels(projection).observe(seconds)
        BATCH_SIZE.labels(projection).observe(result.applied + result.skipped + result.dead_lettered)

    def retried(self, projection: str, error: BaseException) -> None:
        """Count a retry."""
        RETRIES.labels(projection).inc()

    def halted(self, projection: str, tp: TP, reason: str) -> None:
        """Flag the partition as halted."""
        HALTED.labels(projection, tp[0], str(tp[1])).set(1)

    def lag(self, projection: str, tp: TP, lag: int) -> None:
        """Record a partition's lag."""
        LAG.labels(projection, tp[0], str(tp[1])).set(lag)


def serve(port: int, host: str = "0.0.0.0") -> None:
    """Start the /metrics HTTP server in a background thread."""
    start_http_server(port, addr=host)
