"""The operator's console: one page with the pipeline at a glance, refreshed live.

:func:`console_routes` gives the routes the API app mounts: ``/console/`` (the page, static HTML, CSS and
JS in ``api/static``, no CDN) and ``/console/state`` (the JSON the page polls). The state has four parts:

- **projections**: per projection and version, the records left to apply now (each partition's last
  stable offset, asked of the broker, less the worker's last written offset:
  :func:`esflow.readmodel.status.live_records_left`, so a stalled worker shows a growing figure), how old
  the newest applied event is, when the worker last wrote, halted partitions and dead letters. The same
  report as `esflow projection status` (:func:`esflow.readmodel.status.version_report`).
- **processor**: accepted, rejected, dead-lettered and replayed commands per second, counted from the
  ``command-results`` topic's status headers (:class:`esflow.messaging.watch.PipelineWatch`): the
  committed record of every processor instance's decisions, so no list of metric endpoints is needed and
  a command answered twice after a rebalance is counted once as accepted and once as replayed.
- **dead letters**: how many the dead-letter topic holds, and the latest few with their reason.
- **process instances** by process and status, from the ``process_instances`` bi view (``null`` where
  that read model is not installed, a database not migrated since it came: the page says so).

A source that fails (Postgres or Kafka down) leaves its part ``null`` and adds a line to ``problems``;
the rest still answers. The Kafka tail starts with the first request and stops after
``idle_stop_s`` without one, so an API nobody watches does not read the results topic.

The routes check no credentials: the app that mounts them decides who may see them (operators).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa
from confluent_kafka.admin import AdminClient
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from esflow.messaging.kafka import admin_client
from esflow.messaging.topics import source_topic
from esflow.messaging.watch import PipelineWatch, committed_ends
from esflow.readmodel.status import live_records_left, process_instances_by_status, version_report
from esflow.readmodel.store import create_engine
from esflow.readmodel.versions import Layout
from esflow.settings import Settings

log = logging.getLogger("esflow.console")

STATIC = Path(__file__).resolve().parent / "static"

STALLED_AFTER_S = 30.0
"""A projection with records left whose worker has not written for this long is shown as stalled."""


def _age(now: datetime, moment: datetime | None) -> float | None:
    return None if moment is None else round(max(0.0, (now - moment).total_seconds()), 1)


class Console:
    """Collects the console's state from Postgres and Kafka, at most once per ``min_interval_s``."""

    def __init__(
        self,
        settings: Settings,
        *,
        min_interval_s: float = 1.0,
        idle_stop_s: float = 300.0,
        history_s: int = 120,
    ) -> None:
        self.settings = settings
        self.layout = Layout(settings.projections.db_schema)
        self.min_interval_s = min_interval_s
        self.idle_stop_s = idle_stop_s
        self.history_s = history_s
        self._lock = threading.Lock()
        self._engine: sa.Engine | None = None
        self._admin: AdminClient | None = None
        self._watch: PipelineWatch | None = None
        self._last: tuple[float, bytes] | None = None
        self._janitor: threading.Timer | None = None
        self._asked = time.monotonic()

    # ------------------------------------------------------------------------------------ lifecycle

    def _ensure_watch(self) -> PipelineWatch:
        if self._watch is None or not self._watch.running:
            self._watch = PipelineWatch(self.settings.kafka, self.settings.topics, history_s=self.history_s)
            self._watch.start()
        self._arm_idle_stop()
        return self._watch

    def _arm_idle_stop(self) -> None:
        self._asked = time.monotonic()
        if self._janitor is None or not self._janitor.is_alive():
            self._janitor = threading.Timer(self.idle_stop_s, self._close_if_idle)
            self._janitor.daemon = True
            self._janitor.start()

    def _close_if_idle(self) -> None:
        idle = time.monotonic() - self._asked
        if idle >= self.idle_stop_s:
            self.close()
            return
        # Asked since the timer was set: look again when the newest request turns idle_stop_s old.
        self._janitor = threading.Timer(self.idle_stop_s - idle, self._close_if_idle)
        self._janitor.daemon = True
        self._janitor.start()

    @property
    def tailing(self) -> bool:
        """True while the Kafka tail runs (from the first request until ``idle_stop_s`` without one)."""
        watch = self._watch
        return watch is not None and watch.running

    def close(self) -> None:
        """Stop the Kafka tail and release the connections (the next request starts them again)."""
        with self._lock:
            if self._watch is not None:
                self._watch.stop()
                self._watch = None
            if self._engine is not None:
                self._engine.dispose()
                self._engine = None
            self._admin = None
            self._last = None

    # ---------------------------------------------------------------------------------------- state

    def state_json(self) -> bytes:
        """The state as JSON bytes, collected anew unless the last collection is fresh enough."""
        with self._lock:
            now = time.monotonic()
            if self._last is not None and now - self._last[0] < self.min_interval_s:
                return self._last[1]
            body = orjson.dumps(self.collect(), option=orjson.OPT_NON_STR_KEYS)
            self._last = (now, body)
            return body

    def collect(self) -> dict[str, Any]:
        """One snapshot of the pipeline (see the module docstring for its parts)."""
        now = datetime.now(UTC)
        problems: list[str] = []
        watch = self._ensure_watch()
        report: list[dict[str, Any]] | None = None
        processes: list[dict[str, Any]] | None = None
        try:
            if self._engine is None:
                self._engine = create_engine(self.settings.postgres, self.settings.projections.db_schema)
            with self._engine.connect() as conn:
                report = version_report(conn, self.layout)
                processes = process_instances_by_status(conn, self.layout)
        except Exception as exc:  # shown on the page; the Kafka parts still answer
            problems.append(f"PostgreSQL: {_one_line(exc)}")
            log.warning("console: reading the read models failed: %s", exc)
        ends: dict[tuple[str, int], int] = {}
        reads: dict[tuple[str, int], list[tuple[str, int]]] = {}
        if report:
            try:
                ends, reads = self._ends(report)
            except Exception as exc:
                problems.append(f"Kafka (topic ends): {_one_line(exc)}")
            if not ends:
                problems.append("Kafka: no partition end answered: records left are the workers' own figures")
        outcomes = watch.outcomes()
        if outcomes.error:
            problems.append(f"Kafka (results tail): {outcomes.error}")
        return {
            "generated_at": now,
            "projections": None
            if report is None
            else [
                self._projection(e, ends, reads.get((e["projection"], e["version"]), []), now) for e in report
            ],
            "processor": {
                "window_s": outcomes.window_s,
                "per_second": outcomes.per_second,
                "series": outcomes.series,
                "totals": outcomes.totals,
                "since": datetime.fromtimestamp(outcomes.since, UTC),
                "caught_up": outcomes.caught_up,
            },
            "dead_letters": {
                "total": outcomes.dead_letters_total,
                "counted": outcomes.caught_up,
                "latest": outcomes.latest_dead_letters,
            },
            "process_instances": processes,
            "problems": problems,
        }

    def _ends(
        self, report: list[dict[str, Any]]
    ) -> tuple[dict[tuple[str, int], int], dict[tuple[str, int], list[tuple[str, int]]]]:
        """Each read partition's end now, and per (projection, version) the partitions it reads."""
        if self._admin is None:
            self._admin = admin_client(self.settings.kafka)
        metadata = self._admin.list_topics(timeout=5)
        reads: dict[tuple[str, int], list[tuple[str, int]]] = {}
        wanted: set[tuple[str, int]] = set()
        for entry in report:
            if "partitions" not in entry:
                continue
            read = [(p["topic"], p["partition"]) for p in entry["partitions"]]
            for aggregate in entry["aggregates"]:
                topic = source_topic(aggregate, self.settings.topics)
                if topic in metadata.topics:
                    read += [(topic, p) for p in metadata.topics[topic].partitions]
            reads[(entry["projection"], entry["version"])] = read
            wanted.update(read)
        return committed_ends(self._admin, wanted), reads

    def _projection(
        self,
        entry: dict[str, Any],
        ends: dict[tuple[str, int], int],
        reads: list[tuple[str, int]],
        now: datetime,
    ) -> dict[str, Any]:
        partitions = entry.get("partitions")
        if partitions is None:
            return {k: entry.get(k) for k in ("projection", "version", "state", "live_since")}
        left = live_records_left(partitions, ends, reads)
        newest = max((p["last_event_at"] for p in partitions if p["last_event_at"]), default=None)
        written = max((p["updated_at"] for p in partitions), default=None)
        halted = [f"{p['topic']}[{p['partition']}]: {p['error']}" for p in partitions if p["halted"]]
        written_age = _age(now, written)
        if halted:
            health = "halted"
        elif left is None:
            health = "unknown"
        elif left == 0:
            health = "caught up"
        elif written_age is None:
            health = "not started"
        elif written_age >= STALLED_AFTER_S:
            health = "stalled"
        else:
            health = "catching up"
        return {
            "projection": entry["projection"],
            "version": entry["version"],
            "state": entry["state"],
            "live_since": entry["live_since"],
            "health": health,
            "records_left": left,
            "reported_lag": entry["lag"],
            "events_applied": entry["events_applied"],
            "partitions": len(partitions),
            "newest_event_at": newest,
            "newest_event_age_s": _age(now, newest),
            "last_write_age_s": written_age,
            "halted": halted,
            "dead_letters": entry["dead_letters"],
            "error": entry["error"],
            "progress": entry.get("progress"),
            "eta_s": entry.get("eta_s"),
        }

    # --------------------------------------------------------------------------------------- routes

    def routes(self, gate: Gate | None = None) -> list[BaseRoute]:
        """``/console/`` (the page), ``/console/state`` (JSON) and ``/console/static/...``.

        ``gate`` guards the state, the only route with data (the page and its files hold none): it returns
        the refusal to send, or None to let the caller through.
        """

        async def page(request: Request) -> Response:
            return FileResponse(STATIC / "console.html", headers={"Cache-Control": "no-cache"})

        async def state(request: Request) -> Response:
            refusal = gate(request) if gate is not None else None
            if refusal is not None:
                return refusal
            body = await run_in_threadpool(self.state_json)
            return Response(body, media_type="application/json", headers={"Cache-Control": "no-store"})

        return [
            Mount(
                "/console",
                routes=[
                    Route("/", page, methods=["GET"], name="console"),
                    Route("/state", state, methods=["GET"], name="console_state"),
                    Mount("/static", StaticFiles(directory=STATIC), name="console_static"),
                ],
            )
        ]


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else repr(exc)}"


Gate = Callable[[Request], Response | None]
"""Who may read the console's state: the refusal to send, or None to let the request through."""


def console_routes(settings: Settings, *, gate: Gate | None = None, **options: Any) -> list[BaseRoute]:
    """The console's routes for the API app to mount (``options``: :class:`Console`'s keywords)."""
    return Console(settings, **options).routes(gate)
