"""The local stack as a whole: `up`, `down`, `status`, `logs`, `reset` over Kafka and PostgreSQL."""

from __future__ import annotations

import contextlib
import fcntl
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from esflow.errors import StackError
from esflow.settings import KafkaSettings, PostgresSettings, Settings, StackSettings
from ops.stack import proc
from ops.stack.kafka import KafkaServer
from ops.stack.postgres import PostgresServer


@dataclass
class ServerStatus:
    """One server of the stack as `stack status` reports it."""

    pid: int | None
    answers: bool
    rss_kib: int | None = None


@dataclass
class StackStatus:
    """The stable shape behind `esflow stack status --json` (documented in README)."""

    running: bool
    kafka_bootstrap: str
    database_url: str
    stack_dir: str
    kafka: ServerStatus
    postgres: ServerStatus
    timings_s: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        """A plain dict for json.dumps."""
        return asdict(self)


class Stack:
    """Kafka + PostgreSQL started from the stack directory named by the settings."""

    def __init__(
        self,
        stack: StackSettings | None = None,
        kafka: KafkaSettings | None = None,
        postgres: PostgresSettings | None = None,
    ) -> None:
        defaults = Settings() if stack is None or kafka is None or postgres is None else None
        self.settings = stack or defaults.stack  # type: ignore[union-attr]
        self.kafka_settings = kafka or defaults.kafka  # type: ignore[union-attr]
        self.pg_settings = postgres or defaults.postgres  # type: ignore[union-attr]
        self.kafka = KafkaServer(self.kafka_settings, self.settings)
        self.postgres = PostgresServer(self.pg_settings, self.settings)

    @property
    def database_url(self) -> str:
        """SQLAlchemy URL of the local application database."""
        return self.pg_settings.database_url

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        # Two `stack up` at once would format or initdb the same directory twice.
        self.settings.stack_dir.mkdir(parents=True, exist_ok=True)
        with (self.settings.stack_dir / ".lock").open("w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def up(self) -> StackStatus:
        """Start whatever is not running and wait until both servers answer; idempotent."""
        timings: dict[str, float] = {}
        t0 = time.monotonic()
        with self._lock():
            kafka_pid = self.kafka.pid()
            pg_running = self.postgres.pid() is not None
            # Every check runs before anything starts, so an expected failure leaves nothing half-up.
            if kafka_pid is None:
                self.kafka.preflight()
                proc.ensure_ports_free(
                    self.kafka_settings.host,
                    {
                        "ESFLOW_KAFKA_PORT": self.kafka_settings.port,
                        "ESFLOW_KAFKA_CONTROLLER_PORT": self.kafka_settings.controller_port,
                    },
                )
            if not pg_running:
                self.postgres.preflight()
                proc.ensure_ports_free(self.pg_settings.host, {"ESFLOW_PG_PORT": self.pg_settings.port})
            started: list[str] = []
            try:
                if kafka_pid is None:
                    t = time.monotonic()
                    self.kafka.jars.ensure()
                    timings["kafka_jars"] = time.monotonic() - t
                    self.kafka.write_config()
                    t = time.monotonic()
                    self.kafka.format()
                    timings["kafka_format"] = time.monotonic() - t
                    kafka_pid = self.kafka.start()
                    started.append("kafka")
                # Postgres initialises while the JVM boots.
                t = time.monotonic()
                if not pg_running:
                    self.postgres.init()
                    self.postgres.start(self.settings.start_timeout_s)
                    started.append("postgres")
                    self.postgres.bootstrap()
                if not proc.wait_until(self.postgres.answers, timeout_s=self.settings.start_timeout_s):
                    where = f"{self.pg_settings.host}:{self.pg_settings.port}"
                    raise StackError(
                        f"PostgreSQL did not answer `SELECT 1` on {where}",
                        hint=f"see {self.postgres.paths.log}",
                    )
                timings["postgres"] = time.monotonic() - t
                t = time.monotonic()
                self.kafka.wait_ready(kafka_pid, self.settings.start_timeout_s)
                timings["kafka_ready"] = time.monotonic() - t
            except BaseException:
                # Leave the machine as we found it: stop what this call started.
                if "kafka" in started:
                    self.kafka.stop()
                if "postgres" in started:
                    self.postgres.stop()
                raise
        timings["total"] = time.monotonic() - t0
        status = self.status()
        status.timings_s = {k: round(v, 2) for k, v in timings.items()}
        return status

    def down(self) -> dict[str, bool]:
        """Stop the servers this stack started (by pid file); returns which ones were running."""
        with self._lock():
            return {"kafka": self.kafka.stop(), "postgres": self.postgres.stop()}

    def status(self) -> StackStatus:
        """Probe both servers without changing anything."""
        kpid = self.kafka.pid()
        ppid = self.postgres.pid()
        kafka = ServerStatus(
            kpid, kpid is not None and self.kafka.answers(), proc.rss_kib(kpid) if kpid else None
        )
        pg = ServerStatus(
            ppid, ppid is not None and self.postgres.answers(), proc.rss_kib(ppid) if ppid else None
        )
        return StackStatus(
            running=kafka.answers and pg.answers,
            kafka_bootstrap=self.kafka.bootstrap,
            database_url=self.database_url,
            stack_dir=str(self.settings.stack_dir),
            kafka=kafka,
            postgres=pg,
        )

    def log_files(self) -> dict[str, Path]:
        """The log file of each server."""
        return {
            "kafka": self.kafka.paths.logs / "server.log",
            "kafka-stdout": self.kafka.paths.stdout,
            "postgres": self.postgres.paths.log,
        }

    def reset(self) -> None:
        """Stop everything and delete all data (topics, offsets, databases); jars stay cached."""
        self.down()
        with self._lock():
            self.postgres.remove()
            shutil.rmtree(self.kafka.paths.root, ignore_errors=True)
