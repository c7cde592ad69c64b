"""The life cycle of a projection worker (``esflow projector run NAME``, ``esflow projector run --host``).

A worker serves one version of one projection (the live one, or a pinned one), or, as a projector
host, the live versions of several projections in one Faust app (:func:`projections.runtime.build_host`).
A worker that starts more than ``catchup_threshold`` events behind first applies the backlog in bulk
(:mod:`projections.catchup`); one that finds itself that far behind while running re-executes itself
into that path, as it does on a version switch. When the live version
was built by older code it refuses to start, or rebuilds first when auto-rebuild is configured. While
it runs it polls the version registry; when another version goes live (a rebuild's or a rollback's
switch) it finishes its batch through the normal graceful stop and re-executes itself on the new
version: same pid, a fresh process image with a new Faust app and consumer group (a host does this
when any of its projections switches). Its Faust data
directory (under the temporary directory) is removed whenever it stops normally.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType
from typing import Any

import sqlalchemy as sa
import tenacity

from esflow import gctune
from esflow.errors import EsflowError
from esflow.readmodel import versions
from esflow.readmodel.applier import is_transient
from esflow.readmodel.store import create_engine
from esflow.readmodel.versions import Version, VersionError
from esflow.settings import Settings
from projections.installation import base_engine, layout, read
from projections.registry import PROJECTIONS

log = logging.getLogger("esflow.projections")


def command(name: str) -> list[str]:
    """The command line that runs the worker of projection ``name`` (following its live version)."""
    return [sys.executable, "-m", "esflow", "projector", "run", name]


def host_command(names: Sequence[str]) -> list[str]:
    """The command line of a host serving ``names`` in one process (the isolated worker for one name)."""
    if len(names) == 1:
        return command(names[0])
    return [sys.executable, "-m", "esflow", "projector", "run", "--host", *names]


def serving(name: str, settings: Settings, pinned: int | None) -> Version:
    """The version this worker serves: the pinned one, or the live one (rebuilt first if configured)."""
    code = PROJECTIONS[name]().version
    where = layout(settings)

    def choose(conn: sa.Connection) -> Version:
        if pinned is not None:
            chosen = versions.get_version(conn, where, name, pinned)
            if chosen.state not in ("live", "standby"):
                raise VersionError(f"{name} v{pinned} is {chosen.state}; only live or standby can be served")
            return chosen
        live = versions.live_version(conn, where, name)
        if live is None:
            raise VersionError(f"projection {name} has no live version", hint="run `esflow db migrate`")
        return live

    def outage(exc: BaseException) -> bool:
        cause = exc.__cause__
        return isinstance(exc, EsflowError) and isinstance(cause, Exception) and is_transient(cause)

    def waiting(state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        log.warning("%s: Postgres not reachable, retrying in %.1fs: %s", name, state.upcoming_sleep, exc)

    # A worker (re)started while Postgres is down waits for it, as a running one does.
    chosen: Version = tenacity.Retrying(
        retry=tenacity.retry_if_exception(outage),
        wait=tenacity.wait_exponential(
            multiplier=settings.projections.retry_initial_s, max=settings.projections.retry_max_s
        ),
        stop=tenacity.stop_after_delay(settings.projections.checkpoint_timeout_s),
        before_sleep=waiting,
        reraise=True,
    )(read, settings, "reading the projection versions", choose)
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


def _counting_worker(app: Any, loglevel: str) -> Any:
    """A Faust worker that counts the stop signals it gets (a version switch sends itself one)."""
    import faust

    class Worker(faust.Worker):
        stop_signals = 0

        def _on_sigterm(self) -> None:
            self.stop_signals += 1
            super()._on_sigterm()

        def _on_sigint(self) -> None:
            self.stop_signals += 1
            super()._on_sigint()

    worker = Worker(app, loglevel=loglevel, quiet=True)
    # No terminal spinner: at WARN and above Faust hooks it in as a DEBUG handler and sets the root
    # logger to DEBUG (faust/worker.py _setup_spinner_handler), so every debug call of aiokafka and
    # mode on the fetch path built a LogRecord nobody printed: 6 % of a projector host's CPU at
    # ESFLOW_LOG_LEVEL=warning.
    worker.spinner = None
    return worker


def run(names: str | Sequence[str], settings: Settings, pinned: int | None = None) -> None:
    """Serve projection ``names`` (one: the isolated worker; several: a host) until stopped or switched."""
    from esflow.messaging.codec import Codec
    from esflow.readmodel.store import ProjectionStore
    from projections import catchup, fanout, metrics, registry, runtime

    chosen = [names] if isinstance(names, str) else list(dict.fromkeys(names))
    if pinned is not None and len(chosen) != 1:
        raise VersionError("a pinned version needs exactly one projection")
    level = os.environ.get("ESFLOW_LOG_LEVEL", "info")
    # Until Faust sets up logging, the worker's own start-up lines (which version it serves) would be lost.
    logging.basicConfig(level=level.upper(), format="[%(asctime)s] %(levelname)s %(name)s: %(message)s")
    ps = settings.projections
    served = {name: serving(name, settings, pinned) for name in chosen}
    stop = threading.Event()
    _stop_on_signals(stop)
    catchup.catch_up(list(served.items()), settings, stop)
    # Back to the defaults until Faust installs its handlers: a signal kills a worker still starting.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if stop.is_set():
        log.warning("stopped during the bulk catch-up; the next start resumes from the checkpoints")
        return
    where = layout(settings)
    engines = {
        # Every batch is retried on a dropped connection (BatchApplier): no ping per checkout.
        name: create_engine(settings.postgres, v.schema, pre_ping=False)
        for name, v in served.items()
    }
    base = base_engine(settings)
    members = [fanout.Member(registry.get(name), ProjectionStore(engines[name])) for name in chosen]
    restart: list[str] = []

    def behind(events: int) -> None:
        # Far behind while running (a burst, a stall): the bulk path works the backlog off faster than
        # the live tail; re-executing goes through it, and hands over at the checkpoints it reaches.
        if not restart:
            log.warning(
                "%d events behind (more than %d): restarting into the bulk catch-up",
                events,
                ps.catchup_threshold,
            )
            restart.append("behind")
            os.kill(os.getpid(), signal.SIGTERM)

    built = runtime.build_host(
        members,
        registry.SourceDecoder(Codec.from_settings(settings.schemas)),
        kafka=settings.kafka,
        topics=settings.topics,
        settings=ps,
        group_id=runtime.host_group(ps, {name: v.version for name, v in served.items()}),
        on_behind=behind if ps.catchup_threshold > 0 else None,
    )

    if pinned is None:

        @built.app.timer(interval=ps.version_poll_s)  # type: ignore[untyped-decorator]
        async def follow_live() -> None:
            # Another version went live (a rebuild's or a rollback's switch): finish the batch in flight
            # through the normal graceful stop, then re-execute on the new version.
            def current() -> dict[str, Version | None]:
                with base.connect() as conn:
                    return {name: versions.live_version(conn, where, name) for name in chosen}

            try:
                live = await asyncio.to_thread(current)
            except Exception as exc:  # Postgres down: the applier retries; keep serving meanwhile
                log.warning("%s: cannot read the live version: %s", ", ".join(chosen), exc)
                return
            for name, now in live.items():
                if now is not None and now.version != served[name].version and not restart:
                    log.warning(
                        "%s: v%d is live now (this worker served v%d); switching",
                        name,
                        now.version,
                        served[name].version,
                    )
                    restart.append(f"{name} v{now.version}")
                    os.kill(os.getpid(), signal.SIGTERM)

    for name, version in served.items():
        log.info("%s: serving v%d (%s)", name, version.version, version.schema)
    if ps.metrics_port:
        metrics.serve(ps.metrics_port)
    gctune.tune_for_throughput()
    worker = _counting_worker(built.app, level)
    try:
        worker.execute_from_commandline()
    finally:
        built.stop()
        for engine in engines.values():
            engine.dispose()
        base.dispose()
        built.remove_datadir()
        if restart and worker.stop_signals > 1:
            # Someone else asked it to stop while it was stopping for the restart: stop, do not re-execute.
            log.warning("stop requested while restarting (%s); not restarting", restart[0])
        elif restart:
            # Same pid, fresh process image: a new Faust app and consumer group for the new version, or
            # the bulk catch-up first.
            argv = host_command(chosen)
            os.execv(argv[0], argv)


def _stop_on_signals(stop: threading.Event) -> None:
    """Until Faust installs its own handlers, SIGTERM/SIGINT end the bulk catch-up after its batch."""

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
