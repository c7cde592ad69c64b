"""`esflow process …`: run process managers, and show one instance's timeline."""

from __future__ import annotations

import logging
import signal
import sys
from types import FrameType
from uuid import UUID

import click

from esflow.domain.process.registry import PROCESS_NAMES
from esflow.settings import load_settings
from processors.process.metrics import ProcessMetrics
from processors.process.runtime import ProcessWorker, available, pick
from processors.process.timeline import find_instance, render

log = logging.getLogger("esflow.process")


@click.group()
def process() -> None:
    """Process managers: long-running processes across aggregates (sagas, deadlines, retries)."""


@process.command("run")
@click.argument("names", nargs=-1, required=True)
@click.option("--instance-id", help="Overrides ESFLOW_PROCESS_INSTANCE_ID (stable per worker).")
@click.option("--metrics-port", type=int, help="Overrides ESFLOW_PROCESS_METRICS_PORT (0 = off).")
@click.option("--log-level", default="INFO", show_default=True, help="Python logging level.")
def run_cmd(
    names: tuple[str, ...], instance_id: str | None, metrics_port: int | None, log_level: str
) -> None:
    """Run the process managers NAMES (or `all`) until SIGTERM/SIGINT."""
    logging.basicConfig(
        level=log_level.upper(), stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    settings = load_settings()
    overrides = {
        k: v for k, v in (("instance_id", instance_id), ("metrics_port", metrics_port)) if v is not None
    }
    settings = settings.model_copy(update={"process": settings.process.model_copy(update=overrides)})
    metrics = ProcessMetrics()
    worker = ProcessWorker(settings, pick(names, available(settings)), metrics=metrics)

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("%s: stopping after the current transactions", signal.Signals(signum).name)
        worker.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if settings.process.metrics_port:
        port = metrics.serve(settings.process.metrics_host, settings.process.metrics_port)
        log.info("metrics on http://%s:%d/metrics", settings.process.metrics_host, port)
    worker.start()
    try:
        while worker.alive:
            worker.join(0.5)
        worker.join()
    finally:
        metrics.close()
    click.echo(f"process worker stopped ({', '.join(worker.loops)})")


@process.command("show")
@click.argument("instance_id", type=click.UUID)
@click.option("--process", "name", help="The process it belongs to (default: look in every one).")
def show_cmd(instance_id: UUID, name: str | None) -> None:
    """Print one instance: status, step, timers, pending commands, and its timeline as a causation tree."""
    settings = load_settings()
    names = [name] if name else list(PROCESS_NAMES)
    record = find_instance(settings, names, instance_id)
    if record is None:
        raise click.ClickException(f"no instance {instance_id} in {', '.join(names)}")
    click.echo(render(record))
