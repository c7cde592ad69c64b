"""`esflow db …`, `esflow projector …` (run the projections) and `esflow projection …` (versions).

`esflow db` manages the read-model database; `esflow projection` rebuilds, rolls back, drops and lists
projection versions.

``esflow projector run NAME`` runs one projection's worker in this process (:mod:`projections.worker`:
the live version, re-executed on a switch), scaled by starting more of them. With several names (or
none: all of them) it supervises (:mod:`esflow.supervisor`) one child process, a projector host serving
them all: each event topic fetched and each event decoded once for all of them; a crash restarts it,
and SIGTERM/SIGINT stop it gracefully. ``--processes`` supervises one child per projection instead
(isolation: each crashes and restarts alone); ``--host`` runs the host in this process, unsupervised
(for a platform's restart policy). Scaled by starting more hosts of the same projections.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from types import FrameType
from typing import TYPE_CHECKING, Any

import click
import sqlalchemy as sa

from esflow.readmodel import versions
from esflow.readmodel.migrations import MIGRATIONS, applied_versions
from esflow.readmodel.status import version_report
from esflow.settings import Settings, load_settings
from esflow.supervisor import Supervisor
from projections import worker
from projections.installation import base_engine as _engine
from projections.installation import layout as _layout
from projections.installation import read as _read
from projections.registry import PROJECTIONS

if TYPE_CHECKING:
    from projections.replay import ReplayProgress


def _projections() -> list[Any]:
    return [factory() for factory in PROJECTIONS.values()]


def _migrate(settings: Settings) -> list[str]:
    engine = _engine(settings)
    try:
        return versions.install(engine, _layout(settings), _projections())
    finally:
        engine.dispose()


@click.group()
def db() -> None:
    """The read-model database: migrations, projection versions and BI access."""


@db.command("migrate")
def db_migrate() -> None:
    """Apply missing migrations and give every projection a first version (idempotent).

    Also creates the bi schema with its views and the read-only role that may query them.
    """
    settings = load_settings()
    applied = _migrate(settings)
    layout = _layout(settings)
    for line in applied:
        click.echo(f"applied {line}")
    click.echo(
        f"schema {layout.base} is at version {MIGRATIONS[-1].version}; BI views in {layout.bi}, "
        f"readable by role {layout.reader_role}"
    )


@db.command("grant-bi")
@click.argument("role")
@click.option(
    "--password",
    help="ROLE's login password: creates ROLE as a login role if missing, else sets its password.",
)
def db_grant_bi(role: str, password: str | None) -> None:
    """Let ROLE (a BI tool's login) read the bi views, and nothing else."""
    settings = load_settings()
    engine = _engine(settings)
    try:
        for line in versions.grant_bi(engine, _layout(settings), role, password=password):
            click.echo(line)
    finally:
        engine.dispose()


@db.command("version")
def db_version() -> None:
    """Print the schema's applied migrations and the newest one this esflow knows."""
    done = _read(load_settings(), "reading the migration ledger", applied_versions)
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
    """Print projection_status of the live versions: per projection and partition, how fresh it is."""
    settings = load_settings()
    query = sa.text(
        "SELECT projection, topic, partition, last_offset, last_event_at, updated_at, lag, events_applied, "
        f'halted, error FROM "{_layout(settings).bi}".projection_status ORDER BY projection, topic, partition'
    )
    rows = _read(
        settings, "reading projection_status", lambda c: [dict(r) for r in c.execute(query).mappings()]
    )
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
@click.option(
    "--version",
    "pinned",
    type=int,
    help="Serve this version of the (single) projection instead of following the live one.",
)
@click.option(
    "--host",
    "as_host",
    is_flag=True,
    help="Serve the projections in this one process (a projector host), unsupervised.",
)
@click.option(
    "--processes",
    is_flag=True,
    help="One supervised child process per projection (isolation) instead of one supervised host.",
)
def projector_run(
    names: tuple[str, ...], run_migrations: bool, pinned: int | None, as_host: bool, processes: bool
) -> None:
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
    if pinned is not None and len(chosen) != 1:
        raise click.BadParameter("--version needs exactly one projection name")
    if as_host and processes:
        raise click.BadParameter("--host and --processes exclude each other")
    if len(chosen) == 1 or as_host:
        worker.run(chosen, settings, pinned)
    elif processes:
        sys.exit(_supervise({name: worker.command(name) for name in chosen}, settings))
    else:
        # One host (each event fetched and decoded once for all of them: on two cores it keeps the
        # read models fresh where one process per projection falls seconds behind, ops/bench/pipeline.py),
        # as a supervised child so that a crash restarts it as it would restart a projection's worker.
        sys.exit(_supervise({"host": worker.host_command(chosen)}, settings))


def _supervise(commands: dict[str, list[str]], settings: Settings) -> int:
    """One supervised child per command, each with its own metrics port when metrics are served."""
    base_port = settings.projections.metrics_port
    order = list(commands)

    def env(name: str) -> dict[str, str]:
        variables = dict(os.environ)
        if base_port:
            # The configured port for the first child, then the next ones.
            variables["ESFLOW_PROJECTION_METRICS_PORT"] = str(base_port + order.index(name))
        return variables

    return Supervisor(
        commands,
        env,
        announce=lambda text: click.echo(f"projector {text}", err=True),
    ).run()


@click.group()
def projection() -> None:
    """Projection versions: blue-green rebuilds, rollback, drop, status."""


def _check_name(name: str) -> None:
    if name not in PROJECTIONS:
        raise click.BadParameter(f"unknown projection {name}; known: {', '.join(PROJECTIONS)}")


@projection.command("rebuild")
@click.argument("name")
@click.option("--lag-threshold", type=int, help="Switch once every partition is this close to its end.")
@click.option("--no-switch", is_flag=True, help="Build and catch up, but leave the live version live.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def projection_rebuild(name: str, lag_threshold: int | None, no_switch: bool, quiet: bool) -> None:
    """Build the next version of NAME from offset 0 while the live one serves, then switch to it."""
    from projections.rebuild import Rebuilder

    _check_name(name)
    settings = load_settings()
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        # The batch in flight commits; the next `rebuild` resumes from its checkpoints.
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    bar = _ProgressBar(enabled=not quiet)
    with Rebuilder(name, settings) as rebuilder:
        version = rebuilder.rebuild(
            lag_threshold=lag_threshold, switch=not no_switch, progress=bar.update, stop=stop
        )
    bar.close()
    if stop.is_set():
        click.echo(f"{name} v{version.version}: stopped; `esflow projection rebuild {name}` resumes it")
        sys.exit(130)
    click.echo(f"{name} v{version.version} ({version.schema}) is {version.state}")


@projection.command("rollback")
@click.argument("name")
@click.option("--to", "to_version", type=int, help="The standby version to return to (default: newest).")
def projection_rollback(name: str, to_version: int | None) -> None:
    """Make the standby version of NAME live again (caught up first, switched atomically)."""
    from projections.rebuild import Rebuilder

    _check_name(name)
    with Rebuilder(name, load_settings()) as rebuilder:
        version = rebuilder.rollback(to_version)
    click.echo(f"{name} v{version.version} ({version.schema}) is live again")


@projection.command("drop-version")
@click.argument("name")
@click.argument("version", type=int)
def projection_drop_version(name: str, version: int) -> None:
    """Drop VERSION of NAME (its schema and consumer group); the live version is refused."""
    from esflow.messaging.kafka import admin_client
    from projections.rebuild import Rebuilder
    from projections.runtime import version_group

    _check_name(name)
    settings = load_settings()
    with Rebuilder(name, settings) as rebuilder:
        dropped = rebuilder.drop(version)
    group = version_group(settings.projections, name, version)
    try:
        for future in admin_client(settings.kafka).delete_consumer_groups([group]).values():
            future.result(timeout=10)
        click.echo(f"deleted consumer group {group}")
    except Exception as exc:  # the group may never have existed, or still has a member leaving
        click.echo(f"consumer group {group} not deleted: {exc}", err=True)
    click.echo(f"{name} v{dropped.version}: schema {dropped.schema} dropped")


@projection.command("status")
@click.argument("names", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per version.")
def projection_status(names: tuple[str, ...], as_json: bool) -> None:
    """Projections, their versions, which is live, lag per partition, rebuild progress and ETA."""
    for name in names:
        _check_name(name)
    settings = load_settings()
    layout = _layout(settings)
    chosen = list(names) or list(PROJECTIONS)
    report = _read(settings, "reading the projection versions", lambda c: version_report(c, layout, chosen))
    for entry in report:
        if as_json:
            click.echo(json.dumps(entry, default=str))
            continue
        click.echo(_describe(entry))


def _describe(entry: dict[str, object]) -> str:
    if entry.get("version") is None:
        return f"{entry['projection']:<22} not installed (run `esflow db migrate`)"
    head = (
        f"{entry['projection']:<22} v{entry['version']:<3} {entry['state']:<9} {entry['schema']} "
        f"(code v{entry['code_version']})"
    )
    if "partitions" not in entry:
        return head
    lines = [f"{head}  applied {entry['events_applied']:,}  lag {entry['lag']:,}"]
    if entry["state"] == "building":
        progress = float(entry["progress"])  # type: ignore[arg-type]
        filled = int(progress * 30)
        eta = entry.get("eta_s")
        eta_text = f"{int(eta) // 60}:{int(eta) % 60:02d}" if isinstance(eta, int | float) else "?"
        lines.append(
            f"    [{'#' * filled}{'.' * (30 - filled)}] {progress:6.1%}  "
            f"{entry['events_per_s']:,.0f} events/s  ETA {eta_text}"
        )
    if entry.get("error"):
        lines.append(f"    error: {entry['error']}")
    for p in entry["partitions"]:  # type: ignore[attr-defined]
        state = f"HALTED: {p['error']}" if p["halted"] else ""
        lag = "?" if p["lag"] is None else p["lag"]
        lines.append(
            f"    {p['topic']}[{p['partition']}] offset {p['last_offset']} lag {lag} {state}".rstrip()
        )
    return "\n".join(lines)


class _ProgressBar:
    """A one-line progress bar with rate and ETA on stderr, fed by the replayer after each batch."""

    def __init__(self, *, enabled: bool) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self.last = 0.0
        self.logged = 0.0

    def update(self, progress: ReplayProgress) -> None:
        done = progress.applied + progress.skipped + progress.dead_lettered
        total = done + progress.total_lag
        rate = progress.events_per_s
        eta = progress.total_lag / rate if rate > 0 else 0.0
        fraction = done / total if total else 1.0
        text = (
            f"[{'#' * int(fraction * 30):<30}] {fraction:6.1%} {done:,}/{total:,} events "
            f"{rate:,.0f}/s ETA {int(eta) // 60}:{int(eta) % 60:02d}"
        )
        now = time.monotonic()
        if self.enabled:
            click.echo("\r" + text, nl=False, err=True)
        elif now - self.logged >= 5.0:
            # Not a terminal (CI, logs): a plain line every few seconds instead of a redrawn bar.
            click.echo(text, err=True)
            self.logged = now

    def close(self) -> None:
        if self.enabled:
            click.echo("", err=True)
