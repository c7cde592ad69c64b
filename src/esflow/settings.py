"""Settings, one object per concern, read from ``ESFLOW_*`` environment variables.

Nothing else in esflow reads ``os.environ``: components receive the settings object they need, which
keeps tests free to run several stacks side by side with different ports and directories.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from esflow.domain.messages import AGGREGATE_TYPES


def _default_stack_dir() -> Path:
    return Path.home() / ".local" / "share" / "esflow" / "stack"


def _default_cache_dir() -> Path:
    return Path.home() / ".cache" / "esflow"


class StackSettings(BaseSettings):
    """Where the local stack keeps its data and which programs it runs."""

    model_config = SettingsConfigDict(env_prefix="ESFLOW_", extra="ignore")

    stack_dir: Path = Field(default_factory=_default_stack_dir, description="Data, logs and pid files.")
    cache_dir: Path = Field(
        default_factory=_default_cache_dir, description="Downloads kept between runs (Kafka jars)."
    )
    java: str = Field("java", description="The java executable that runs the broker.")
    mvn: str = Field("mvn", description="The Maven executable that resolves the broker jars.")
    pg_bin_dir: Path = Field(
        Path("/usr/lib/postgresql/15/bin"), description="Directory holding initdb, pg_ctl and postgres."
    )
    start_timeout_s: float = Field(120.0, gt=0, description="How long `stack up` waits for each server.")


SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]


class KafkaSettings(BaseSettings):
    """The Kafka broker: where clients find it and how the local one is run."""

    model_config = SettingsConfigDict(env_prefix="ESFLOW_KAFKA_", extra="ignore")

    version: str = Field("4.3.1", description="Apache Kafka version resolved from Maven Central.")
    host: str = Field("127.0.0.1", description="Interface the local broker listens on.")
    port: int = Field(
        9092, ge=1, le=65535, description="Client (PLAINTEXT) port of the local broker (node n: port+n-1)."
    )
    controller_port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="KRaft controller port of node 1 (node n: +n-1); unset, the ports after the brokers' "
        "(port + brokers), so a second stack on other ports never collides with the default one.",
    )
    brokers: int = Field(1, ge=1, le=9, description="Nodes of the local KRaft cluster (combined mode).")
    bootstrap: str | None = Field(
        None, description="Bootstrap servers of an existing cluster; defaults to the local broker(s)."
    )
    heap_opts: str = Field("-Xms256m -Xmx1g", description="JVM heap flags for the local broker.")
    log4j_version: str = Field("2.25.4", description="log4j-slf4j-impl version (broker logging).")
    # A real cluster's security, passed to both client libraries (librdkafka and aiokafka/Faust).
    security_protocol: SecurityProtocol = Field(
        "PLAINTEXT", description="PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL."
    )
    sasl_mechanism: SaslMechanism = Field("PLAIN", description="SASL mechanism when the protocol uses SASL.")
    sasl_username: str | None = Field(None, description="SASL user name.")
    sasl_password: SecretStr | None = Field(None, description="SASL password.")
    ssl_ca_location: Path | None = Field(
        None, description="CA bundle (PEM) that signed the brokers' certificates."
    )
    ssl_certificate_location: Path | None = Field(
        None, description="Client certificate (PEM) for mutual TLS."
    )
    ssl_key_location: Path | None = Field(None, description="Client private key (PEM) for mutual TLS.")
    ssl_key_password: SecretStr | None = Field(None, description="Password of the client private key.")

    @property
    def uses_sasl(self) -> bool:
        """True when the protocol authenticates with SASL."""
        return self.security_protocol.startswith("SASL")

    @property
    def uses_tls(self) -> bool:
        """True when connections are encrypted with TLS."""
        return self.security_protocol.endswith("SSL")

    def librdkafka_security(self) -> dict[str, str]:
        """The security settings as librdkafka (confluent-kafka) configuration keys."""
        conf: dict[str, str] = {"security.protocol": self.security_protocol.lower()}
        if self.uses_sasl:
            conf["sasl.mechanism"] = self.sasl_mechanism
            if self.sasl_username is not None:
                conf["sasl.username"] = self.sasl_username
            if self.sasl_password is not None:
                conf["sasl.password"] = self.sasl_password.get_secret_value()
        if self.uses_tls:
            for key, path in (
                ("ssl.ca.location", self.ssl_ca_location),
                ("ssl.certificate.location", self.ssl_certificate_location),
                ("ssl.key.location", self.ssl_key_location),
            ):
                if path is not None:
                    conf[key] = str(path)
            if self.ssl_key_password is not None:
                conf["ssl.key.password"] = self.ssl_key_password.get_secret_value()
        return conf

    def node_port(self, node_id: int) -> int:
        """Client port of local node ``node_id`` (1-based)."""
        return self.port + node_id - 1

    def node_controller_port(self, node_id: int) -> int:
        """KRaft controller port of local node ``node_id`` (1-based)."""
        first = self.controller_port if self.controller_port is not None else self.port + self.brokers
        return first + node_id - 1

    @property
    def bootstrap_servers(self) -> str:
        """The bootstrap list clients use: the configured one, else every local broker."""
        if self.bootstrap:
            return self.bootstrap
        return ",".join(f"{self.host}:{self.node_port(n)}" for n in range(1, self.brokers + 1))


class PostgresSettings(BaseSettings):
    """PostgreSQL: where clients find it and how the local one is run."""

    model_config = SettingsConfigDict(env_prefix="ESFLOW_PG_", extra="ignore", populate_by_name=True)

    host: str = Field("127.0.0.1", description="Interface the local server listens on.")
    port: int = Field(5432, ge=1, le=65535, description="Port of the local server.")
    database: str = Field("esflow", description="The application database.")
    user: str = Field("esflow", description="The application role (owns the database).")
    password: str = Field("esflow", description="The application role's password.")
    admin_user: str = Field("postgres", description="The cluster's bootstrap superuser.")
    admin_password: str = Field("postgres", description="The superuser's password (local stack only).")
    database_url_override: str | None = Field(
        None,
        validation_alias=AliasChoices("ESFLOW_DATABASE_URL", "database_url_override"),
        description="SQLAlchemy URL of an existing database; defaults to the local one.",
    )

    @property
    def database_url(self) -> str:
        """SQLAlchemy + psycopg 3 URL of the application database."""
        if self.database_url_override:
            return self.database_url_override
        return f"postgresql+psycopg://{self.user}:{self.password}@{self.host}:{self.port}/{self.database}"

    @property
    def admin_dsn(self) -> str:
        """libpq connection string of the superuser on the local server (stack set-up only)."""
        return (
            f"host={self.host} port={self.port} dbname=postgres user={self.admin_user} "
            f"password={self.admin_password} connect_timeout=3"
        )


class TopicSettings(BaseSettings):
    """How the topic catalogue is laid out on the cluster."""

    model_config = SettingsConfigDict(env_prefix="ESFLOW_TOPIC_", extra="ignore")

    prefix: str = Field("", description="Prepended to every topic name (isolates tests and tenants).")
    partitions: int = Field(6, ge=1, description="Partitions of the co-partitioned command/event topics.")
    replication_factor: int | None = Field(
        None, ge=1, description="Replication factor of new topics; unset, min(3, brokers in the cluster)."
    )
    min_insync_replicas: int | None = Field(
        None,
        ge=1,
        description="min.insync.replicas of the event, result and snapshot topics; unset, 2 when "
        "replicated 3 or more times, else 1.",
    )


class ProcessorSettings(BaseSettings):
    """The command processor: group, identity, batching, idempotency window, timeouts, ports."""

    model_config = SettingsConfigDict(env_prefix="ESFLOW_PROCESSOR_", extra="ignore")

    group_id: str = Field("esflow-processor", description="Consumer group of all processor instances.")
    instance_id: str = Field(
        "0",
        pattern=r"^[A-Za-z0-9._-]+$",
        description="Stable per instance: names its transactional.id (and group.instance.id when static).",
    )
    aggregates: str = Field(
        ",".join(AGGREGATE_TYPES),
        description="Comma-separated aggregate types whose commands this group runs (default: all of them).",
    )
    batch_max_commands: int = Field(1000, ge=1, description="Most commands in one Kafka transaction.")
    batch_max_ms: int = Field(100, ge=1, description="Longest wait for the first command of a batch.")
    batch_linger_ms: int = Field(
        5, ge=0, description="After a batch's first command, how long to wait for more before committing."
    )
    batch_interval_ms: int = Field(
        50,
        ge=0,
        description="Under load, transactions begin at most this often: a batch whose previous transaction "
        "began less than this ago lingers until then (an idle processor still answers a lone command after "
        "batch_linger_ms); 0: only batch_linger_ms.",
    )
    idempotency_window: int = Field(
        32, ge=1, description="Most recent command ids (with results) kept per aggregate in its snapshot."
    )
    transaction_timeout_ms: int = Field(
        10000, ge=1000, description="Broker aborts a transaction left open this long (a dead instance's)."
    )
    session_timeout_ms: int = Field(10000, ge=1000, description="Consumer group session timeout.")
    max_poll_interval_ms: int = Field(
        300000, ge=1000, description="A loop stalled this long leaves the group (raised to cover restores)."
    )
    static_membership: bool = Field(
        False,
        description="Use group.instance.id: a restart within the session timeout keeps its partitions "
        "without a rebalance, but a clean stop no longer leaves the group at once.",
    )
    verify_partitioning: bool = Field(
        True, description="Dead-letter commands whose key does not murmur2-hash to their partition."
    )
    restore_timeout_s: float = Field(300.0, gt=0, description="Longest restore of one assignment.")
    metrics_port: int = Field(0, ge=0, le=65535, description="HTTP /metrics, /healthz, /readyz; 0 disables.")
    metrics_host: str = Field("127.0.0.1", description="Interface of the metrics server.")

    @property
    def aggregate_types(self) -> tuple[str, ...]:
        """The aggregate types, parsed from ``aggregates``."""
        return tuple(a.strip() for a in self.aggregates.split(",") if a.strip())

    @property
    def transactional_id(self) -> str:
        """Stable per instance, so a restarted instance fences its predecessor and aborts its open txn."""
        return f"{self.group_id}-{self.instance_id}"


def _default_schema_dir() -> Path:
    # The .avsc files live at the repository root, beside src/; editable installs keep that layout.
    return Path(__file__).resolve().parents[2] / "schemas"


CompatibilityMode = Literal[
    "NONE", "BACKWARD", "BACKWARD_TRANSITIVE", "FORWARD", "FORWARD_TRANSITIVE", "FULL", "FULL_TRANSITIVE"
]


class SchemaSettings(BaseSettings):
    """The Avro contract: where the .avsc files are, how evolution is checked, the optional registry."""

    model_config = SettingsConfigDict(env_prefix="ESFLOW_SCHEMA_", extra="ignore")

    dir: Path = Field(default_factory=_default_schema_dir, description="Root of the .avsc files.")
    event_compatibility: CompatibilityMode = Field(
        "BACKWARD_TRANSITIVE", description="Evolution rule for events: readers must read every old event."
    )
    command_compatibility: CompatibilityMode = Field(
        "BACKWARD", description="Evolution rule for commands: short-lived, so only the previous version."
    )
    registry_url: str | None = Field(
        None,
        description="Confluent Schema Registry URL (`mock://name` in tests); unset = single-object encoding.",
    )
    auto_register: bool = Field(
        False, description="Register unknown schemas on first encode (dev only; production uses `register`)."
    )


BadInputPolicy = Literal["dead_letter", "halt"]


class ProjectionSettings(BaseSettings):
    """The projections: batching, retries, bad input, ports and the read-model schema."""

    model_config = SettingsConfigDict(env_prefix="ESFLOW_PROJECTION_", extra="ignore")

    db_schema: str = Field(
        "public", pattern=r"^[a-z_][a-z0-9_]*$", description="PostgreSQL schema holding the read models."
    )
    group_prefix: str = Field(
        "esflow-projection", description="Consumer group (and Faust app id) prefix; the name is appended."
    )
    batch_size: int = Field(2000, ge=1, description="Most events applied in one Postgres transaction.")
    batch_linger_s: float = Field(
        0.005,
        ge=0,
        description="How long a batch waits for more events after its first one before it may be applied; "
        "past that it is applied as soon as the previous batch is, so batches grow with the load "
        "(projections/batching.py). Replaces the fixed BATCH_WINDOW_S tick.",
    )
    on_bad_input: BadInputPolicy = Field(
        "dead_letter",
        description="Undecodable or unknown events: dead-letter them (projection_dead_letters) or halt.",
    )
    retry_initial_s: float = Field(0.2, gt=0, description="First back-off after a failed database batch.")
    retry_max_s: float = Field(10.0, gt=0, description="Longest back-off between database retries.")
    checkpoint_timeout_s: float = Field(
        120.0, gt=0, description="How long a worker waits for Postgres to read checkpoints on assignment."
    )
    metrics_port: int = Field(0, ge=0, le=65535, description="Prometheus /metrics port; 0 disables it.")
    web_port: int = Field(0, ge=0, le=65535, description="Faust web server port; 0 disables it.")
    session_timeout_s: float = Field(
        10.0, gt=0, le=90, description="Consumer group session: how soon the others take over a dead worker."
    )
    auto_rebuild: bool = Field(
        False,
        description="A worker whose projection code version has no version yet rebuilds it (blue-green) "
        "and switches to it, instead of refusing to start.",
    )
    rebuild_lag_threshold: int = Field(
        100, ge=0, description="A rebuild switches once every partition is at most this many events behind."
    )
    rebuild_batch_size: int = Field(
        50_000,
        ge=1,
        description="Events per transaction while replaying (larger is faster, see ops.bench.rebuild).",
    )
    version_poll_s: float = Field(
        2.0, gt=0, description="How often a worker checks whether another version went live."
    )
    catchup_threshold: int = Field(
        50_000,
        ge=0,
        description="A worker that starts (or falls) more than this many events behind applies the backlog "
        "with the bulk replayer, then hands over to its live tail at the checkpoints it reached; 0: never.",
    )

    @model_validator(mode="before")
    @classmethod
    def _no_batch_window(cls, data: object) -> object:
        # A renamed setting silently ignored would leave a user tuning nothing: say what replaced it.
        given = isinstance(data, dict) and "batch_window_s" in data
        if given or "ESFLOW_PROJECTION_BATCH_WINDOW_S" in os.environ:
            raise ValueError(
                "ESFLOW_PROJECTION_BATCH_WINDOW_S (batch_window_s) is gone: batches now grow with the load; "
                "ESFLOW_PROJECTION_BATCH_LINGER_S (default 0.005) is the wait after a batch's first event"
            )
        return data


class ImageSettings(BaseSettings):
    """Container images of the servers and of esflow (docker-compose.yml and the testcontainers fixtures).

    The defaults are the official images; ``ops/images/build.sh`` builds offline equivalents tagged
    ``esflow-local/...`` that take the same environment variables.
    """

    model_config = SettingsConfigDict(env_prefix="ESFLOW_IMAGE_", extra="ignore")

    kafka: str = Field("apache/kafka:4.3.1", description="Kafka image configured by KAFKA_* variables.")
    postgres: str = Field("postgres:15", description="PostgreSQL image configured by POSTGRES_* variables.")
    esflow: str = Field("esflow:dev", description="The esflow image (built from the Dockerfile).")


class ProcessSettings(BaseSettings):
    """The process-manager workers (`esflow process run`): group, identity, restore, ports."""

    model_config = SettingsConfigDict(env_prefix="ESFLOW_PROCESS_", extra="ignore")

    group_prefix: str = Field(
        "esflow-process", description="Consumer group prefix; the process name is appended."
    )
    instance_id: str = Field(
        "0",
        pattern=r"^[A-Za-z0-9._-]+$",
        description="Stable per worker: names its transactional ids (one per process it runs).",
    )
    restore_timeout_s: float = Field(300.0, gt=0, description="Longest restore of one state partition.")
    payment_window_s: float = Field(
        30.0, gt=0, description="Order fulfilment: how long after OrderPlaced the payment may take."
    )
    metrics_port: int = Field(0, ge=0, le=65535, description="HTTP /metrics, /healthz, /readyz; 0 disables.")
    metrics_host: str = Field("127.0.0.1", description="Interface of the metrics server.")

    def group_id(self, process: str) -> str:
        """The consumer group of one process's workers."""
        return f"{self.group_prefix}-{process}"

    def transactional_id(self, process: str) -> str:
        """Stable per worker and process, so a restarted worker fences its predecessor."""
        return f"{self.group_id(process)}-{self.instance_id}"


class SchedulerSettings(BaseSettings):
    """The scheduler (``esflow scheduler run``): delivers scheduled commands when they are due."""

    model_config = SettingsConfigDict(env_prefix="ESFLOW_SCHEDULER_", extra="ignore")

    group_id: str = Field("esflow-scheduler", description="Consumer group of all scheduler instances.")
    instance_id: str = Field(
        "0", pattern=r"^[A-Za-z0-9._-]+$", description="Stable per instance: names its transactional.id."
    )
    batch_max_commands: int = Field(1000, ge=1, description="Most commands read or sent per transaction.")
    tick_ms: int = Field(200, ge=1, description="Longest wait for input before due commands are looked at.")
    transaction_timeout_ms: int = Field(
        10000, ge=1000, description="Broker aborts a transaction left open this long (a dead instance's)."
    )
    session_timeout_ms: int = Field(10000, ge=1000, description="Consumer group session timeout.")
    load_timeout_s: float = Field(
        300.0, gt=0, description="Longest load of an assignment's pending commands."
    )
    metrics_port: int = Field(0, ge=0, le=65535, description="HTTP /metrics, /healthz, /readyz; 0 disables.")
    metrics_host: str = Field("127.0.0.1", description="Interface of the metrics server.")

    @property
    def transactional_id(self) -> str:
        """Stable per instance, so a restarted instance fences its predecessor and aborts its open txn."""
        return f"{self.group_id}-{self.instance_id}"


class ApiSettings(BaseSettings):
    """The GraphQL/HTTP API: where it listens, how it checks tokens, and its input limits.

    Tokens are RS256 JWTs. The verification keys come from one PEM public key (``jwt_public_key_file``)
    or a JWKS document, as a file (``jwt_jwks_file``) or a URL (``jwt_jwks_url``); exactly one is set.
    """

    model_config = SettingsConfigDict(env_prefix="ESFLOW_API_", extra="ignore")

    host: str = Field("127.0.0.1", description="Interface the API listens on.")
    port: int = Field(8080, ge=1, le=65535, description="Port of the API (GraphQL, health and metrics).")
    jwt_issuer: str = Field("esflow", description="The `iss` every token must carry.")
    jwt_audience: str = Field("esflow-api", description="The `aud` every token must name.")
    jwt_public_key_file: Path | None = Field(None, description="PEM file with the RS256 public key.")
    jwt_jwks_file: Path | None = Field(None, description="JWKS document (JSON file) with the public keys.")
    jwt_jwks_url: str | None = Field(None, description="URL of a JWKS document (fetched and cached).")
    jwt_leeway_s: float = Field(30.0, ge=0, le=300, description="Clock skew allowed on exp, nbf and iat.")
    roles_claim: str = Field("roles", description="Claim holding the caller's roles (a list or a string).")
    customer_claim: str = Field(
        "sub", description="Claim holding a customer's id (a UUID): the customer whose data a token reaches."
    )
    max_depth: int = Field(10, ge=2, description="Deepest selection a query may make.")
    max_complexity: int = Field(
        5000, ge=10, description="Most fields a query may ask for, pages counted `first` times."
    )
    max_body_bytes: int = Field(65536, ge=1024, description="Largest request body accepted.")
    max_page_size: int = Field(100, ge=1, le=500, description="Largest `first` of a paginated field.")
    command_timeout_s: float = Field(10.0, gt=0, description="How long a mutation waits for its result.")
    query_timeout_s: float = Field(
        5.0, gt=0, description="How long a query (and its consistency wait) may take."
    )
    cache_size: int = Field(10_000, ge=0, description="Query cache entries (0 turns the cache off).")
    pool_size: int = Field(10, ge=1, description="Postgres connections of the query bus.")


class Settings(BaseSettings):
    """All settings, grouped by concern."""

    model_config = SettingsConfigDict(extra="ignore")

    stack: StackSettings = Field(default_factory=StackSettings)
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    postgres: PostgresSettings = Field(default_factory=PostgresSettings)
    topics: TopicSettings = Field(default_factory=TopicSettings)
    processor: ProcessorSettings = Field(default_factory=ProcessorSettings)
    process: ProcessSettings = Field(default_factory=ProcessSettings)
    schemas: SchemaSettings = Field(default_factory=SchemaSettings)
    projections: ProjectionSettings = Field(default_factory=ProjectionSettings)
    images: ImageSettings = Field(default_factory=ImageSettings)
    scheduler: SchedulerSettings = Field(default_factory=SchedulerSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)


def load_settings() -> Settings:
    """Read every settings group from the environment."""
    return Settings()
