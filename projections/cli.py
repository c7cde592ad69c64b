"""`esflow db …` (the read-model schema) and `esflow projector …` (run the projections).

``esflow projector run NAME`` runs one projection's Faust worker in this process: its own app, its
own consumer group, scaled by starting more of them. ``esflow projector run`` with several names (or
none: all of them) supervises one child process per projection, so each can crash and restart alone,
and forwards SIGTERM/SIGINT to them for a graceful stop.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from types import FrameType

import click
import sqlalchemy as sa

from esflow.errors import translate
from esflow.readmodel.migrations import MIGRATIONS, applied_versions, migrate
from esflow.readmodel.store import create_engine
from esflow.settings import Settings, load_settings
from projections.registry import PROJECTIONS

log = logging.getLogger("esflow.projections")


def _engine(settings: Settings) -> sa.Engine:
    return create_engine(settings.postgres, settings.projections.db_schema)


def _migrate(settings: Settings) -> list[str]:
    engine = _engine(settings)
    try:
        return [f"{m.version:04d} {m.name}" for m in migrate(engine, settings.projections.db_schema)]
    finally:
        engine.dispose()


@click.group()
def db() -> None:
    """The read-model database: versioned migrations of its tables."""


@db.command("migrate")
def db_migrate() -> None:
    """Apply the migrations the read-model schema is missing (idempotent)."""
    settings = load_settings()
    applied = _migrate(settings)
    schema = settings.projections.db_schema
    for line in applied:
        click.echo(f"applied {line}")
    click.echo(f"schema {schema} is at version {MIGRATIONS[-1].version}")


@db.command("version")
def db_version() -> None:
    """Print the schema's applied migrations and the newest one this esflow knows."""
    settings = load_settings()
    engine = _engine(settings)
    try:
        with engine.connect() as conn:
            done = applied_versions(conn)
    except Exception as exc:
        raise translate(exc, context="reading the migration ledger") from exc
    finally:
        engine.dispose()
    click.echo(f"applied: {max(done) if done else 0}, newest: {MIGRATIONS[-1].version}")


@click.group()
def projector() -> None:
    """Run the Faust projections that build the read models."""


@projector.command("list")
def projector_list() -> None:
    """Print the projections, one per line."""
    for name in PROJECTIONS:
        click.echo(name)


@projector.command("status")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def projector_status(as_json: bool) -> None:
    """Print projection_status: per projection and partition, how fresh the read model is."""
    settings = load_settings()
    engine = _engine(settings)
    query = sa.text(
        "SELECT projection, topic, partition, last_offset, last_event_at, updated_at, lag, events_applied, "
        "halted, error FROM projection_status ORDER BY projection, topic, partition"
    )
    try:
        with engine.connect() as conn:
            rows = [dict(r) for r in conn.execute(query).mappings()]
    except Exception as exc:
        raise translate(exc, context="reading projection_status") from exc
    finally:
        engine.dispose()
    for row in rows:
        if as_json:
            click.echo(json.dumps(row, default=str))
            continue
        state = f"HALTED: {row['error']}" if row["halted"] else "ok"
        lag = "?" if row["lag"] is None else row["lag"]
        click.echo(
            f"{row['projection']:<22} {row['topic']}[{row['partition']}] offset {row['last_offset']} "
            f"as of {row['last_event_at']} lag {lag} {state}"
        )


@projector.command("run")
@click.argument("names", nargs=-1)
@click.option("--migrate/--no-migrate", "run_migrations", default=False, help="Apply migrations first.")
def projector_run(names: tuple[str, ...], run_migrations: bool) -> None:
    """Run the named projections (all when none is named) until SIGTERM or SIGINT."""
    unknown = [n for n in names if n not in PROJECTIONS]
    if unknown:
        raise click.BadParameter(
            f"unknown projection(s) {', '.join(unknown)}; known: {', '.join(PROJECTIONS)}"
        )
    settings = load_settings()
    if run_migrations:
        for line in _migrate(settings):
            click.echo(f"applied {line}")
    chosen = list(dict.fromkeys(names)) or list(PROJECTIONS)
    if len(chosen) == 1:
        _run_worker(chosen[0], settings)
    else:
        sys.exit(_supervise(chosen))


def _run_worker(name: str, settings: Settings) -> None:
    import faust

    from esflow.messaging.codec import Codec
    from esflow.readmodel.store import ProjectionStore
    from projections import metrics, registry, runtime

    ps = settings.projections
    engine = _engine(settings)
    store = ProjectionStore(engine)
    built = runtime.build(
        registry.get(name),
        registry.EnvelopeDecoder(Codec.from_settings(settings.schemas)),
        store,
        kafka=settings.kafka,
        topics=settings.topics,
        settings=ps,
    )
    if ps.metrics_port:
        metrics.serve(ps.metrics_port)
    worker = faust.Worker(built.app, loglevel=os.environ.get("ESFLOW_LOG_LEVEL", "info"), quiet=True)
    try:
        worker.execute_from_commandline()
    finally:
        built.applier.stop()
        engine.dispose()


def _supervise(names: list[str]) -> int:
    """Run one child per projection; restart crashed ones; forward stop signals; return the exit code."""
    stopping = False
    children: dict[str, subprocess.Popen[bytes]] = {}
    restarts: dict[str, float] = {}

    base_port = load_settings().projections.metrics_port

    def spawn(name: str) -> None:
        env = dict(os.environ)
        if base_port:
            # One metrics port per child: the configured one for the first projection, then the next ones.
            env["ESFLOW_PROJECTION_METRICS_PORT"] = str(base_port + names.index(name))
        children[name] = subprocess.Popen([sys.executable, "-m", "esflow", "projector", "run", name], env=env)
        click.echo(f"projector {name}: pid {children[name].pid}", err=True)

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for child in children.values():
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for name in names:
        spawn(name)
    while True:
        alive = 0
        for name, child in list(children.items()):
            code = child.poll()
            if code is None:
                alive += 1
                continue
            if stopping:
                continue
            # A crashed projection restarts alone, with a pause so a persistent failure does not spin.
            delay = min(30.0, 2 * restarts.get(name, 0.5))
            click.echo(f"projector {name} exited with {code}; restarting in {delay:.0f}s", err=True)
            restarts[name] = delay
            time.sleep(delay)
            if not stopping:
                spawn(name)
                alive += 1
        if stopping and alive == 0:
            return 0
        time.sleep(0.5)
