"""`esflow db …`, `esflow projector …` (run the projections) and `esflow projection …` (versions).

`esflow db` manages the read-model database; `esflow projection` rebuilds, rolls back, drops and lists
projection versions.

``esflow projector run NAME`` runs one projection's Faust worker in this process, serving the live
version of the projection (its own app and consumer group per version), scaled by starting more of
them. The worker polls the version registry and, when another version of its code goes live, finishes
its batch and re-executes itself on the new version. ``esflow projector run`` with several names (or
none: all of them) supervises one child process per projection, so each can crash and restart alone,
and forwards SIGTERM/SIGINT to them for a graceful stop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING, Any, TypeVar

import click
import sqlalchemy as sa

from esflow import gctune
from esflow.errors import EsflowError, translated
from esflow.readmodel import versions
from esflow.readmodel.applier import is_transient
from esflow.readmodel.migrations import MIGRATIONS, applied_versions
from esflow.readmodel.store import create_engine
from esflow.readmodel.versions import Layout, Version, VersionError
from esflow.settings import Settings, load_settings
from projections.registry import PROJECTIONS

if TYPE_CHECKING:
    from projections.replay import ReplayProgress

T = TypeVar("T")

log = logging.getLogger("esflow.projections")


def _engine(settings: Settings) -> sa.Engine:
    return create_engine(settings.postgres, settings.projections.db_schema)


def _read(settings: Settings, context: str, read: Callable[[sa.Connection], T]) -> T:
    """Run ``read`` on a connection to the base schema; driver errors become one-line esflow errors."""
    engine = _engine(settings)
    try:
        with translated(context), engine.connect() as conn:
            return read(conn)
    finally:
        engine.dispose()


def _layout(settings: Settings) -> Layout:
    return Layout(settings.projections.db_schema)


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
def projector_run(names: tuple[str, ...], run_migrations: bool, pinned: int | None) -> None:
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
    if len(chosen) == 1:
        _run_worker(chosen[0], settings, pinned)
    else:
        sys.exit(_supervise(chosen))


def _serving(name: str, settings: Settings, pinned: int | None) -> Version:
    """The version this worker serves: the pinned one, or the live one (rebuilt first if configured)."""
    code = PROJECTIONS[name]().version
    layout = _layout(settings)

    def choose(conn: sa.Connection) -> Version:
        if pinned is not None:
            chosen = versions.get_version(conn, layout, name, pinned)
            if chosen.state not in ("live", "standby"):
                raise VersionError(f"{name} v{pinned} is {chosen.state}; only live or standby can be served")
            return chosen
        live = versions.live_version(conn, layout, name)
        if live is None:
            raise VersionError(f"projection {name} has no live version", hint="run `esflow db migrate`")
        return live

    # A worker (re)started while Postgres is down waits for it, as a running one does.
    deadline = time.monotonic() + settings.projections.checkpoint_timeout_s
    delay = settings.projections.retry_initial_s
    while True:
        try:
            chosen = _read(settings, "reading the projection versions", choose)
            break
        except EsflowError as exc:
            cause = exc.__cause__
            if not isinstance(cause, Exception) or not is_transient(cause) or time.monotonic() > deadline:
                raise
            log.warning("%s: Postgres not reachable, retrying in %.1fs: %s", name, delay, exc.message)
            time.sleep(delay)
            delay = min(delay * 2, settings.projections.retry_max_s)
    if chosen.code_version == code:
        return chosen
    if pinned is None and settings.projections.auto_rebuild:
        log.warning(
            "%s: live v%d is code version %d, this worker is code version %d: rebuilding",
            name, chosen.version, chosen.code_version, code,
        )  # fmt: skip
        from projections.rebuild import Rebuilder

        with Rebuilder(name, settings) as rebuilder:
            return rebuilder.rebuild()
    raise VersionError(
        f"{name} v{chosen.version} was built by code version {chosen.code_version}; this worker runs "
        f"code version {code}",
        hint=f"run `esflow projection rebuild {name}` (or set ESFLOW_PROJECTION_AUTO_REBUILD=true)",
    )


def _run_worker(name: str, settings: Settings, pinned: int | None = None) -> None:
    import faust

    from esflow.messaging.codec import Codec
    from esflow.readmodel.store import ProjectionStore
    from projections import metrics, registry, runtime

    ps = settings.projections
    serving = _serving(name, settings, pinned)
    layout = _layout(settings)
    engine = create_engine(settings.postgres, serving.schema)
    base = _engine(settings)
    store = ProjectionStore(engine)
    built = runtime.build(
        registry.get(name),
        registry.EnvelopeDecoder(Codec.from_settings(settings.schemas)),
        store,
        kafka=settings.kafka,
        topics=settings.topics,
        settings=ps,
        group_id=runtime.version_group(ps, name, serving.version),
    )
    moved: list[int] = []

    if pinned is None:

        @built.app.timer(interval=ps.version_poll_s)  # type: ignore[untyped-decorator]
        async def follow_live() -> None:
            # Another version went live (a rebuild's or a rollback's switch): finish the batch in flight
            # through the normal graceful stop, then re-execute on the new version.
            def read() -> Version | None:
                with base.connect() as conn:
                    return versions.live_version(conn, layout, name)

            try:
                live = await asyncio.to_thread(read)
            except Exception as exc:  # Postgres down: the applier retries; keep serving meanwhile
                log.warning("%s: cannot read the live version: %s", name, exc)
                return
            if live is not None and live.version != serving.version and not moved:
                log.warning(
                    "%s: v%d is live now (this worker served v%d); switching",
                    name,
                    live.version,
                    serving.version,
                )
                moved.append(live.version)
                os.kill(os.getpid(), signal.SIGTERM)

    log.info("%s: serving v%d (%s)", name, serving.version, serving.schema)
    if ps.metrics_port:
        metrics.serve(ps.metrics_port)
    gctune.tune_for_throughput()
    worker = faust.Worker(built.app, loglevel=os.environ.get("ESFLOW_LOG_LEVEL", "info"), quiet=True)
    try:
        worker.execute_from_commandline()
    finally:
        built.applier.stop()
        engine.dispose()
        base.dispose()
        if moved:
            # Same pid, fresh process image: a new Faust app and consumer group for the new version.
            os.execv(sys.executable, [sys.executable, "-m", "esflow", "projector", "run", name])


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
    report = _read(settings, "reading the projection versions", lambda c: _status_report(c, layout, chosen))
    for entry in report:
        if as_json:
            click.echo(json.dumps(entry, default=str))
            continue
        click.echo(_describe(entry))


def _status_report(conn: sa.Connection, layout: Layout, names: list[str]) -> list[dict[str, object]]:
    """One dict per version: registry fields, partitions (offset, lag, applied), totals, progress."""
    now = time.time()
    out: list[dict[str, object]] = []
    for name in names:
        for v in versions.list_versions(conn, layout, name):
            entry: dict[str, object] = {
                "projection": name,
                "version": v.version,
                "state": v.state,
                "schema": v.schema,
                "code_version": v.code_version,
                "created_at": v.created_at,
                "live_since": v.live_since,
                "error": v.error,
            }
            if v.state in ("live", "standby", "building", "failed"):
                rows = conn.execute(
                    sa.text(
                        "SELECT topic, partition, last_offset, lag, events_applied, halted, error FROM "
                        f'"{v.schema}".projection_status WHERE projection = :p ORDER BY topic, partition'
                    ),
                    {"p": name},
                ).mappings()
                partitions = [dict(r) for r in rows]
                applied = sum(int(p["events_applied"]) for p in partitions)
                lag = sum(int(p["lag"] or 0) for p in partitions)
                entry.update(partitions=partitions, events_applied=applied, lag=lag)
                if v.state == "building":
                    elapsed = max(1e-3, now - v.created_at.timestamp())
                    rate = applied / elapsed
                    entry["progress"] = applied / (applied + lag) if applied + lag else 0.0
                    entry["events_per_s"] = round(rate, 1)
                    entry["eta_s"] = round(lag / rate, 1) if rate > 0 else None
            out.append(entry)
        if not any(e["projection"] == name for e in out):
            out.append({"projection": name, "version": None, "state": "not installed"})
    return out


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
