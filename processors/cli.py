"""`esflow processor …`: run a command-processor instance."""

from __future__ import annotations

import logging
import signal
import sys
from types import FrameType

import click

from esflow import gctune
from esflow.messaging.codec import Codec
from esflow.settings import load_settings
from processors.metrics import Metrics
from processors.processor import Processor
from processors.scheduler import Scheduler


@click.group()
def processor() -> None:
    """The command processor: validate commands against aggregates, append events exactly once."""


@processor.command("run")
@click.option("--instance-id", help="Overrides ESFLOW_PROCESSOR_INSTANCE_ID (stable per instance).")
@click.option("--group-id", help="Overrides ESFLOW_PROCESSOR_GROUP_ID.")
@click.option("--metrics-port", type=int, help="Overrides ESFLOW_PROCESSOR_METRICS_PORT (0 = off).")
@click.option("--log-level", default="INFO", show_default=True, help="Python logging level.")
def run_cmd(instance_id: str | None, group_id: str | None, metrics_port: int | None, log_level: str) -> None:
    """Consume commands until SIGTERM/SIGINT, then finish the open batch and leave the group."""
    logging.basicConfig(
        level=log_level.upper(), stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    settings = load_settings()
    overrides = {
        k: v
        for k, v in (("instance_id", instance_id), ("group_id", group_id), ("metrics_port", metrics_port))
        if v is not None
    }
    psettings = settings.processor.model_copy(update=overrides)
    metrics = Metrics()
    proc = Processor(
        settings.kafka, settings.topics, psettings, Codec.from_settings(settings.schemas), metrics=metrics
    )

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        logging.getLogger("esflow.processor").info(
            "%s: stopping after the current batch", signal.Signals(signum).name
        )
        proc.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if psettings.metrics_port:
        port = metrics.serve(psettings.metrics_host, psettings.metrics_port)
        logging.getLogger("esflow.processor").info(
            "metrics on http://%s:%d/metrics", psettings.metrics_host, port
        )
    # The aggregate cache grows with the data: collecting it automatically paused the processor for
    # hundreds of milliseconds (gctune.SurvivorFreezer); an idle turn (nothing polled) takes the rare
    # full collection.
    collector = gctune.SurvivorFreezer()
    collector.start()
    try:
        proc.run(between_turns=lambda handled: collector.turn(idle=handled == 0))
    finally:
        metrics.close()
    click.echo(
        f"processor {psettings.transactional_id} stopped: {proc.committed_batches} batches committed, "
        f"{proc.aborted_batches} aborted"
    )


@click.group()
def scheduler() -> None:
    """The scheduler: deliver scheduled commands (`esflow send --at`) to their command topics when due."""


@scheduler.command("run")
@click.option("--instance-id", help="Overrides ESFLOW_SCHEDULER_INSTANCE_ID (stable per instance).")
@click.option("--metrics-port", type=int, help="Overrides ESFLOW_SCHEDULER_METRICS_PORT (0 = off).")
@click.option("--log-level", default="INFO", show_default=True, help="Python logging level.")
def scheduler_run_cmd(instance_id: str | None, metrics_port: int | None, log_level: str) -> None:
    """Deliver due commands until SIGTERM/SIGINT, then finish the open transaction and leave the group."""
    logging.basicConfig(
        level=log_level.upper(), stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    settings = load_settings()
    overrides = {
        k: v for k, v in (("instance_id", instance_id), ("metrics_port", metrics_port)) if v is not None
    }
    ssettings = settings.scheduler.model_copy(update=overrides)
    settings = settings.model_copy(update={"scheduler": ssettings})
    metrics = Metrics()
    loop = Scheduler(settings, metrics=metrics)

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        logging.getLogger("esflow.scheduler").info("%s: stopping", signal.Signals(signum).name)
        loop.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if ssettings.metrics_port:
        port = metrics.serve(ssettings.metrics_host, ssettings.metrics_port)
        logging.getLogger("esflow.scheduler").info(
            "metrics on http://%s:%d/metrics", ssettings.metrics_host, port
        )
    try:
        loop.run()
    finally:
        metrics.close()
    click.echo(
        f"scheduler {ssettings.transactional_id} stopped: {loop.committed_batches} transactions committed, "
        f"{loop.aborted_batches} aborted, {len(loop.step)} commands pending"
    )
