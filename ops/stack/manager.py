"""The local stack as a whole: `up`, `down`, `status`, `logs`, `reset` over Kafka and PostgreSQL."""

from __future__ import annotations

import contextlib
import fcntl
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from esflow.errors import CorruptStackDir, StackError
from esflow.settings import KafkaSettings, PostgresSettings, Settings, StackSettings
from ops.stack import proc
from ops.stack.kafka import KafkaServer, random_cluster_id
from ops.stack.postgres import PostgresServer


@dataclass
class ServerStatus:
    """One server of the stack as `stack status` reports it."""

    pid: int | None
    answers: bool
    rss_kib: int | None = None


@dataclass
class NodeStatus(ServerStatus):
    """One Kafka node of the stack: its id and ports besides its process state."""

    node_id: int = 1
    port: int = 0
    controller_port: int = 0


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
    # Every Kafka node; ``kafka`` above sums them up (node 1's pid, answers only when all nodes do).
    kafka_nodes: list[NodeStatus] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        """A plain dict for json.dumps."""
        return asdict(self)


CLUSTER_FILE = "kafka-cluster"


class Stack:
    """Kafka + PostgreSQL started from the stack directory named by the settings.

    ``brokers`` asks for a cluster of that many Kafka nodes; left unset, a formatted stack keeps the
    size it was created with (so `down` and `status` need no flag) and a new one takes the settings'.
    """

    def __init__(
        self,
        stack: StackSettings | None = None,
        kafka: KafkaSettings | None = None,
        postgres: PostgresSettings | None = None,
        *,
        brokers: int | None = None,
    ) -> None:
        defaults = Settings() if stack is None or kafka is None or postgres is None else None
        self.settings = stack or defaults.stack  # type: ignore[union-attr]
        kafka_settings = kafka or defaults.kafka  # type: ignore[union-attr]
        self.pg_settings = postgres or defaults.postgres  # type: ignore[union-attr]
        self.recorded_brokers = self._recorded_brokers()
        size = brokers or self.recorded_brokers or kafka_settings.brokers
        self.kafka_settings = kafka_settings.model_copy(update={"brokers": size})
        self.kafka_nodes = [KafkaServer(self.kafka_settings, self.settings, n) for n in range(1, size + 1)]
        self.kafka = self.kafka_nodes[0]
        self.postgres = PostgresServer(self.pg_settings, self.settings)

    def _recorded_brokers(self) -> int | None:
        try:
            return int((self.settings.stack_dir / CLUSTER_FILE).read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    @property
    def kafka_bootstrap(self) -> str:
        """Bootstrap list of every local Kafka node."""
        return ",".join(node.bootstrap for node in self.kafka_nodes)

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
            size = self.kafka_settings.brokers
            if self.recorded_brokers is not None and self.recorded_brokers != size:
                raise CorruptStackDir(
                    f"the stack directory holds a {self.recorded_brokers}-node Kafka cluster, not {size}",
                    hint="run `esflow stack reset` first to change the cluster size",
                )
            pids = {node.node_id: node.pid() for node in self.kafka_nodes}
            stopped = [node for node in self.kafka_nodes if pids[node.node_id] is None]
            pg_running = self.postgres.pid() is not None
            # Every check runs before anything starts, so an expected failure leaves nothing half-up.
            for node in stopped:
                node.preflight()
                proc.ensure_ports_free(
                    self.kafka_settings.host,
                    {
                        "ESFLOW_KAFKA_PORT": node.port,
                        "ESFLOW_KAFKA_CONTROLLER_PORT": node.controller_port,
                    },
                )
            if not pg_running:
                self.postgres.preflight()
                proc.ensure_ports_free(self.pg_settings.host, {"ESFLOW_PG_PORT": self.pg_settings.port})
            started: list[str] = []
            try:
                if stopped:
                    t = time.monotonic()
                    self.kafka.jars.ensure()
                    timings["kafka_jars"] = time.monotonic() - t
                    t = time.monotonic()
                    # All nodes of a cluster share one id; a restarted node keeps its formatted storage.
                    cluster_id = self._cluster_id() or random_cluster_id()
                    for node in stopped:
                        node.write_config()
                        node.format(cluster_id)
                    (self.settings.stack_dir / CLUSTER_FILE).write_text(f"{size}\n")
                    self.recorded_brokers = size
                    timings["kafka_format"] = time.monotonic() - t
                    for node in stopped:
                        pids[node.node_id] = node.start()
                        started.append(f"kafka-{node.node_id}")
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
                for node in self.kafka_nodes:
                    node.wait_ready(pids[node.node_id] or 0, self.settings.start_timeout_s)
                self._wait_for_all_brokers()
                timings["kafka_ready"] = time.monotonic() - t
            except BaseException:
                # Leave the machine as we found it: stop what this call started.
                for node in self.kafka_nodes:
                    if f"kafka-{node.node_id}" in started:
                        node.stop()
                if "postgres" in started:
                    self.postgres.stop()
                raise
        timings["total"] = time.monotonic() - t0
        status = self.status()
        status.timings_s = {k: round(v, 2) for k, v in timings.items()}
        return status

    def _cluster_id(self) -> str | None:
        # The id a formatted node was given (its marker holds it): new nodes must join that cluster.
        for node in self.kafka_nodes:
            if node.is_formatted():
                return node.paths.formatted_marker.read_text().strip() or None
        return None

    def _wait_for_all_brokers(self) -> None:
        size = len(self.kafka_nodes)
        if size == 1:
            return
        if not proc.wait_until(
            lambda: self.kafka.brokers_seen() >= size, timeout_s=self.settings.start_timeout_s
        ):
            raise StackError(
                f"the Kafka cluster did not register all {size} brokers",
                hint=f"see the server.log of each node under {self.settings.stack_dir}",
            )

    def down(self) -> dict[str, bool]:
        """Stop the servers this stack started (by pid file); returns which ones were running."""
        with self._lock():
            # Signal every node at once: stopped one by one, the last nodes would lose the controller
            # quorum and wait out their controlled shutdown; each node stops its broker side first.
            for node in self.kafka_nodes[1:]:
                node.signal_stop()
            was = {f"kafka-{n.node_id}": n.stop() for n in self.kafka_nodes}
            result = {"kafka": any(was.values())} if len(was) == 1 else dict(sorted(was.items()))
            result["postgres"] = self.postgres.stop()
            return result

    def node_status(self, node: KafkaServer) -> NodeStatus:
        """Process state of one Kafka node."""
        pid = node.pid()
        return NodeStatus(
            pid,
            pid is not None and node.answers(),
            proc.rss_kib(pid) if pid else None,
            node_id=node.node_id,
            port=node.port,
            controller_port=node.controller_port,
        )

    def status(self) -> StackStatus:
        """Probe every server without changing anything."""
        nodes = [self.node_status(node) for node in self.kafka_nodes]
        ppid = self.postgres.pid()
        kafka = ServerStatus(
            nodes[0].pid, all(n.answers for n in nodes), sum(n.rss_kib or 0 for n in nodes) or None
        )
        pg = ServerStatus(
            ppid, ppid is not None and self.postgres.answers(), proc.rss_kib(ppid) if ppid else None
        )
        return StackStatus(
            running=kafka.answers and pg.answers,
            kafka_bootstrap=self.kafka_bootstrap,
            database_url=self.database_url,
            stack_dir=str(self.settings.stack_dir),
            kafka=kafka,
            postgres=pg,
            kafka_nodes=nodes,
        )

    def log_files(self) -> dict[str, Path]:
        """The log file of each server (``kafka`` is node 1, ``kafka-<n>`` node n)."""
        files = {
            "kafka": self.kafka.paths.logs / "server.log",
            "kafka-stdout": self.kafka.paths.stdout,
            "postgres": self.postgres.paths.log,
        }
        for node in self.kafka_nodes[1:]:
            files[f"kafka-{node.node_id}"] = node.paths.logs / "server.log"
        return files

    def reset(self) -> None:
        """Stop everything and delete all data (topics, offsets, databases); jars stay cached."""
        self.down()
        with self._lock():
            self.postgres.remove()
            for node in self.kafka_nodes:
                shutil.rmtree(node.paths.root, ignore_errors=True)
            (self.settings.stack_dir / CLUSTER_FILE).unlink(missing_ok=True)
            self.recorded_brokers = None
