"""The local Apache Kafka cluster: KRaft combined-mode nodes on loopback ports, jars from Maven Central.

One node by default; ``brokers`` > 1 runs that many nodes, each broker and controller, with a static
voter set and the replication of the internal topics chosen from the cluster size (see ``replication``).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka.admin import AdminClient

from esflow.errors import CorruptStackDir, DownloadFailed, StackError
from esflow.settings import KafkaSettings, StackSettings
from ops.stack import proc

POM = Path(__file__).resolve().parent.parent / "kafka" / "pom.xml"
_MAIN_CLASS = "kafka.Kafka"


def random_cluster_id() -> str:
    """A KRaft cluster id: a random UUID as 22 characters of URL-safe base64, like `random-uuid`.

    Never one starting with ``-``: the storage tool would read it as an option (``-t -x...`` fails with
    "expected one argument", one start in 64). Kafka's own ``Uuid.randomUuid`` draws again for the same
    reason.
    """
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def replication(brokers: int) -> tuple[int, int]:
    """(replication factor, min.insync.replicas) for a cluster of ``brokers`` nodes.

    Three copies where there are three nodes; with three, two must acknowledge, so one node may die
    without stopping writes and an acknowledged write survives the loss of any one node.
    """
    factor = min(3, brokers)
    return factor, 2 if factor >= 3 else 1


def node_dir_name(node_id: int) -> str:
    """Directory of a node inside the stack directory (node 1 keeps the single-node layout)."""
    return "kafka" if node_id == 1 else f"kafka-{node_id}"


@dataclass(frozen=True)
class KafkaPaths:
    """Where the broker's files live inside the stack directory."""

    root: Path

    @property
    def data(self) -> Path:
        """Log directory (and KRaft metadata log)."""
        return self.root / "data"

    @property
    def properties(self) -> Path:
        """The broker's server.properties."""
        return self.root / "server.properties"

    @property
    def log4j(self) -> Path:
        """log4j2 configuration of the broker."""
        return self.root / "log4j2.properties"

    @property
    def logs(self) -> Path:
        """Directory of server.log."""
        return self.root / "logs"

    @property
    def stdout(self) -> Path:
        """The JVM's own stdout/stderr (crashes before log4j starts land here)."""
        return self.logs / "stdout.log"

    @property
    def pid_file(self) -> Path:
        """Pid of the broker this stack started."""
        return self.root / "kafka.pid"

    @property
    def formatted_marker(self) -> Path:
        """Written only after `StorageTool format` succeeded."""
        return self.root / "formatted.ok"


def container_env(properties: dict[str, str]) -> dict[str, str]:
    """Broker properties as the KAFKA_* variables of the apache/kafka image (and esflow-local/kafka).

    The image maps a variable back by dropping KAFKA_, lower-casing, and reading ``___`` as ``-``,
    ``__`` as ``_`` and ``_`` as ``.``; this is the inverse.
    """
    return {
        "KAFKA_" + key.replace("_", "__").replace("-", "___").replace(".", "_").upper(): value
        for key, value in properties.items()
    }


class KafkaJars:
    """The broker classpath in the cache, resolved once per version by Maven."""

    def __init__(self, kafka: KafkaSettings, stack: StackSettings) -> None:
        self._kafka = kafka
        self._stack = stack
        self.dir = stack.cache_dir / f"kafka-{kafka.version}"
        self.libs = self.dir / "libs"
        self._marker = self.dir / "complete"

    def _fingerprint(self) -> str:
        # The pom and the versions decide the classpath: a change to either re-resolves it.
        digest = hashlib.sha256(POM.read_bytes())
        digest.update(f"{self._kafka.version}/{self._kafka.log4j_version}".encode())
        return digest.hexdigest()

    def present(self) -> bool:
        """True when the cache holds a complete classpath for this pom and version."""
        try:
            return self._marker.read_text().strip() == self._fingerprint() and any(self.libs.glob("*.jar"))
        except OSError:
            return False

    def ensure(self) -> bool:
        """Resolve the jars into the cache unless already there; returns True when it downloaded."""
        if self.present():
            return False
        mvn = proc.require_program(
            self._stack.mvn, what="Maven", install_hint="install it with `apt-get install maven`"
        )
        self.dir.mkdir(parents=True, exist_ok=True)
        # Resolve into a scratch directory and rename it into place, so an interrupted or failed
        # download never leaves a half classpath that looks complete.
        scratch = Path(tempfile.mkdtemp(prefix="libs.", dir=self.dir))
        argv = [
            mvn, "-q", "-B", "-f", str(POM),
            f"-Dkafka.version={self._kafka.version}",
            f"-Dlog4j.version={self._kafka.log4j_version}",
            "dependency:copy-dependencies", "-DincludeScope=runtime", f"-DoutputDirectory={scratch}",
        ]  # fmt: skip
        try:
            result = subprocess.run(
                argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=1200, check=False
            )
        except subprocess.TimeoutExpired as exc:
            shutil.rmtree(scratch, ignore_errors=True)
            raise DownloadFailed("resolving the Kafka jars with Maven timed out after 20 min") from exc
        if result.returncode != 0 or not any(scratch.glob("kafka_2.13-*.jar")):
            shutil.rmtree(scratch, ignore_errors=True)
            errors = [ln for ln in result.stdout.splitlines() + result.stderr.splitlines() if "ERROR" in ln]
            detail = errors[0].strip() if errors else f"mvn exit {result.returncode}"
            raise DownloadFailed(
                f"could not resolve Kafka {self._kafka.version} from Maven Central: {detail[:300]}",
                hint="check network access to Maven Central and retry `esflow stack up`",
            )
        shutil.rmtree(self.libs, ignore_errors=True)
        scratch.rename(self.libs)
        self._marker.write_text(self._fingerprint() + "\n")
        return True

    @property
    def classpath(self) -> str:
        """The JVM classpath (a wildcard over the cached jars)."""
        return f"{self.libs}/*"


class KafkaServer:
    """Format, start, probe and stop one node of the local KRaft cluster (node 1 of 1 by default)."""

    def __init__(self, kafka: KafkaSettings, stack: StackSettings, node_id: int = 1) -> None:
        self.settings = kafka
        self.stack = stack
        self.node_id = node_id
        self.paths = KafkaPaths(stack.stack_dir / node_dir_name(node_id))
        self.jars = KafkaJars(kafka, stack)

    @property
    def port(self) -> int:
        """Client port of this node."""
        return self.settings.node_port(self.node_id)

    @property
    def controller_port(self) -> int:
        """KRaft controller port of this node."""
        return self.settings.node_controller_port(self.node_id)

    @property
    def bootstrap(self) -> str:
        """host:port of this node."""
        return f"{self.settings.host}:{self.port}"

    def pid(self) -> int | None:
        """Pid of the broker this stack started, if it is still alive."""
        return proc.pid_alive_and_ours(self.paths.pid_file, str(self.paths.properties))

    def _java(self) -> str:
        return proc.require_program(
            self.stack.java,
            what="Java",
            install_hint="install a JDK 17+, e.g. `apt-get install openjdk-17-jdk`",
        )

    def properties(self) -> dict[str, str]:
        """The node's server.properties, from the settings (also the containers' KAFKA_* variables)."""
        s = self.settings
        factor, min_isr = replication(s.brokers)
        host, port, cport = s.host, self.port, self.controller_port
        if s.brokers == 1:
            # One node: a dynamic quorum bootstrapped from this standalone controller.
            quorum = {"controller.quorum.bootstrap.servers": f"{host}:{cport}"}
        else:
            # A static voter set: every node knows all controllers from the first start.
            voters = ",".join(f"{n}@{host}:{s.node_controller_port(n)}" for n in range(1, s.brokers + 1))
            quorum = {"controller.quorum.voters": voters}
        return {
            "process.roles": "broker,controller",
            "node.id": str(self.node_id),
            **quorum,
            "listeners": f"PLAINTEXT://{host}:{port},CONTROLLER://{host}:{cport}",
            "advertised.listeners": f"PLAINTEXT://{host}:{port},CONTROLLER://{host}:{cport}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(self.paths.data),
            "num.partitions": "1",
            "default.replication.factor": str(factor),
            "min.insync.replicas": str(min_isr),
            "offsets.topic.replication.factor": str(factor),
            # Fewer internal partitions: a small dev/test cluster starts and elects faster.
            "offsets.topic.num.partitions": "10",
            "transaction.state.log.replication.factor": str(factor),
            "transaction.state.log.min.isr": str(min_isr),
            "transaction.state.log.num.partitions": "10",
            "share.coordinator.state.topic.replication.factor": str(factor),
            "share.coordinator.state.topic.min.isr": str(min_isr),
            # A single consumer joining should not wait 3 s for company.
            "group.initial.rebalance.delay.ms": "0",
            # Topics come from the catalogue (`esflow topics apply`), never from a typo in a client.
            "auto.create.topics.enable": "false",
            "log.retention.hours": "-1",
            "log.segment.bytes": str(256 * 1024 * 1024),
            # Single node: flush at the OS's pace, as production brokers do.
            "num.network.threads": "3",
            "num.io.threads": "4",
        }

    def write_config(self) -> None:
        """Write server.properties and the log4j2 configuration from the settings."""
        self.paths.logs.mkdir(parents=True, exist_ok=True)
        props = self.properties()
        self.paths.properties.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        self.paths.log4j.write_text(
            "\n".join(
                [
                    "status = warn",
                    "appender.file.type = RollingFile",
                    "appender.file.name = FILE",
                    f"appender.file.fileName = {self.paths.logs / 'server.log'}",
                    f"appender.file.filePattern = {self.paths.logs / 'server.log.%i'}",
                    "appender.file.layout.type = PatternLayout",
                    "appender.file.layout.pattern = [%d] %p %m (%c)%n",
                    "appender.file.policies.type = Policies",
                    "appender.file.policies.size.type = SizeBasedTriggeringPolicy",
                    "appender.file.policies.size.size = 50MB",
                    "appender.file.strategy.type = DefaultRolloverStrategy",
                    "appender.file.strategy.max = 3",
                    "rootLogger.level = INFO",
                    "rootLogger.appenderRef.file.ref = FILE",
                    "logger.kafka.name = kafka",
                    "logger.kafka.level = INFO",
                    "logger.state.name = state.change.logger",
                    "logger.state.level = WARN",
                    "",
                ]
            )
        )

    def is_formatted(self) -> bool:
        """True when `StorageTool format` has completed on the data directory."""
        return self.paths.formatted_marker.exists()

    def preflight(self) -> None:
        """Fail before anything starts: no java, or a data directory left half-formatted."""
        self._java()
        if not self.is_formatted() and self.paths.data.exists() and any(self.paths.data.iterdir()):
            raise CorruptStackDir(
                f"Kafka data directory {self.paths.data} exists but was never completely formatted",
                hint="run `esflow stack reset` to start from an empty stack",
            )

    def format(self, cluster_id: str | None = None) -> None:
        """Format the KRaft storage once; refuse a data directory left half-formatted.

        Every node of a cluster must be formatted with the same ``cluster_id``.
        """
        if self.is_formatted():
            return
        self.preflight()
        cluster_id = cluster_id or random_cluster_id()
        standalone = ["--standalone"] if self.settings.brokers == 1 else []
        proc.run(
            [
                self._java(), "-cp", self.jars.classpath,
                f"-Dlog4j2.configurationFile={self.paths.log4j}", f"-Dkafka.logs.dir={self.paths.logs}",
                "kafka.tools.StorageTool", "format", *standalone,
                "-t", cluster_id, "-c", str(self.paths.properties),
            ],
            what="formatting the Kafka storage (StorageTool format)",
            timeout_s=180,
        )  # fmt: skip
        self.paths.formatted_marker.write_text(cluster_id + "\n")

    def start(self) -> int:
        """Start the broker detached from this process; returns its pid (does not wait for readiness)."""
        java = self._java()
        log = self.paths.stdout.open("ab")
        argv = [
            java, *self.settings.heap_opts.split(),
            "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20", "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.paths.log4j}", f"-Dkafka.logs.dir={self.paths.logs}",
            "-cp", self.jars.classpath, _MAIN_CLASS, str(self.paths.properties),
        ]  # fmt: skip
        # A new session: the broker outlives the CLI and is not hit by the terminal's Ctrl-C.
        child = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
        log.close()
        self.paths.pid_file.write_text(f"{child.pid}\n")
        return child.pid

    def brokers_seen(self, timeout_s: float = 2.0) -> int:
        """How many brokers this node's cluster metadata lists (0 when it does not answer)."""
        # log_level 0: "connection refused" while the JVM boots is expected, not worth a log line.
        admin = AdminClient(
            {"bootstrap.servers": self.bootstrap, "socket.connection.setup.timeout.ms": 1000, "log_level": 0}
        )
        try:
            md = admin.list_topics(timeout=timeout_s)
        except Exception:
            return 0
        return len(md.brokers)

    def answers(self, timeout_s: float = 2.0) -> bool:
        """True when the broker serves cluster metadata to an AdminClient."""
        return self.brokers_seen(timeout_s) > 0

    def wait_ready(self, pid: int, timeout_s: float) -> None:
        """Block until the broker answers; fail fast with the log's last line when the JVM dies."""

        def ready() -> bool:
            if proc.process_cmdline(pid) is None:
                raise StackError(
                    f"Kafka node {self.node_id} exited during start-up: {self.last_error()}",
                    hint=f"see {self.paths.logs}/server.log and {self.paths.stdout}",
                )
            return self.answers()

        if not proc.wait_until(ready, timeout_s=timeout_s, interval_s=0.5):
            raise StackError(
                f"Kafka node {self.node_id} did not answer on {self.bootstrap} within {timeout_s:.0f}s",
                hint=f"see {self.paths.logs}/server.log",
            )

    def last_error(self) -> str:
        """The most telling line of the broker's logs, for one-line failure messages."""
        for path in (self.paths.stdout, self.paths.logs / "server.log"):
            text = proc.tail(path, 200)
            for line in reversed(text.splitlines()):
                if "ERROR" in line or "Exception" in line or "Error:" in line:
                    return line.strip()[:300]
        return "no error in the logs"

    def signal_stop(self) -> None:
        """Send SIGTERM (controlled shutdown) without waiting; `stop` waits."""
        pid = self.pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    def stop(self, timeout_s: float = 60) -> bool:
        """SIGTERM the broker this stack started (controlled shutdown); True when one was running."""
        pid = self.pid()
        if pid is None:
            self.paths.pid_file.unlink(missing_ok=True)
            return False
        proc.terminate(pid, timeout_s=timeout_s, name=f"Kafka node {self.node_id}")
        self.paths.pid_file.unlink(missing_ok=True)
        return True

    def environment(self) -> dict[str, str]:
        """Environment for the Kafka CLI tools run against this broker's classpath."""
        env = dict(os.environ)
        env["CLASSPATH"] = self.jars.classpath
        return env
