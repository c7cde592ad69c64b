"""The topic catalogue: every topic esflow uses, declared once, applied idempotently.

`esflow topics apply` creates missing topics and brings the managed configs (retention, cleanup
policy) of existing ones in line. It refuses to change a partition count: Kafka can only add
partitions, and adding them moves keys to other partitions, which breaks per-aggregate ordering and
the co-partitioning of command and event topics. That needs a migration, not a flag.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from confluent_kafka import KafkaException
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewTopic,
    ResourceType,
)

from esflow.domain.messages import AGGREGATE_TYPES
from esflow.domain.process.registry import PROCESS_NAMES
from esflow.errors import PartitionChangeRefused, TopicError, translate
from esflow.settings import TopicSettings

AGGREGATES: tuple[str, ...] = AGGREGATE_TYPES
PROCESSES: tuple[str, ...] = PROCESS_NAMES

DAY_MS = 24 * 60 * 60 * 1000
INFINITE = -1


def command_topic(aggregate: str, settings: TopicSettings | None = None) -> str:
    """Name of the command topic of one aggregate type (``commands.order``)."""
    return f"{(settings or TopicSettings()).prefix}commands.{aggregate}"


def event_topic(aggregate: str, settings: TopicSettings | None = None) -> str:
    """Name of the event topic of one aggregate type (``events.order``), the log of record."""
    return f"{(settings or TopicSettings()).prefix}events.{aggregate}"


def snapshot_topic(aggregate: str, settings: TopicSettings | None = None) -> str:
    """Name of the compacted snapshot topic of one aggregate type (``snapshots.order``)."""
    return f"{(settings or TopicSettings()).prefix}snapshots.{aggregate}"


def results_topic(settings: TopicSettings | None = None) -> str:
    """Name of the compacted topic of answers and dead-letter reports (keys: esflow.messaging.results)."""
    return f"{(settings or TopicSettings()).prefix}command-results"


def dead_letter_topic(settings: TopicSettings | None = None) -> str:
    """Name of the topic receiving undecodable or unknown commands."""
    return f"{(settings or TopicSettings()).prefix}commands.dead-letter"


def process_inbox_topic(process: str, settings: TopicSettings | None = None) -> str:
    """Name of a process manager's inbox (``process.<name>.inbox``): its inputs, keyed by instance id."""
    return f"{(settings or TopicSettings()).prefix}process.{process}.inbox"


def process_state_topic(process: str, settings: TopicSettings | None = None) -> str:
    """Name of a process manager's compacted instance state (``process.<name>.state``), by instance id."""
    return f"{(settings or TopicSettings()).prefix}process.{process}.state"


PROCESS_SOURCE = "process:"
"""Prefix of a projection source that is a process's instance states rather than an aggregate's events."""


def process_source(process: str) -> str:
    """The projection source naming the instance states of one process (``process:order_fulfilment``)."""
    return f"{PROCESS_SOURCE}{process}"


def source_topic(source: str, settings: TopicSettings | None = None) -> str:
    """The topic a projection source reads.

    A projection's sources (``Projection.aggregates``) are aggregate types, read from their event topics
    (``order`` -> ``events.order``), or ``process:<name>``, the compacted instance states of a process
    (``process.<name>.state``): the ``process_instances`` read model's input.
    """
    if source.startswith(PROCESS_SOURCE):
        return process_state_topic(source.removeprefix(PROCESS_SOURCE), settings)
    return event_topic(source, settings)


def process_topics(process: str, settings: TopicSettings | None = None) -> list[TopicSpec]:
    """The inbox and state topics of one process, co-partitioned (same count, same key)."""
    s = settings or TopicSettings()
    return [
        TopicSpec(
            process_inbox_topic(process, s),
            s.partitions,
            7 * DAY_MS,
            purpose=f"{process} process inputs (events and answers), keyed by instance id",
        ),
        TopicSpec(
            process_state_topic(process, s),
            s.partitions,
            INFINITE,
            compacted=True,
            purpose=f"{process} process instances: state, timers, pending commands (restore)",
            extra_config={"min.cleanable.dirty.ratio": "0.1", "segment.ms": str(DAY_MS)},
            durable=True,
        ),
    ]


def scheduled_topic(settings: TopicSettings | None = None) -> str:
    """Name of the topic of commands to deliver later (``esflow send --at``), keyed by aggregate id."""
    return f"{(settings or TopicSettings()).prefix}scheduled-commands"


def scheduled_pending_topic(settings: TopicSettings | None = None) -> str:
    """Name of the scheduler's compacted state: the scheduled commands not yet delivered."""
    return f"{(settings or TopicSettings()).prefix}scheduled-commands.pending"


@dataclass(frozen=True)
class TopicSpec:
    """One topic as the catalogue wants it."""

    name: str
    partitions: int
    retention_ms: int = INFINITE
    compacted: bool = False
    purpose: str = ""
    extra_config: Mapping[str, str] = field(default_factory=dict)
    # Holds accepted facts (events, results, snapshots): `apply` sets its min.insync.replicas.
    durable: bool = False

    def config(self) -> dict[str, str]:
        """The topic-level configs esflow manages for this topic."""
        cfg = {
            "cleanup.policy": "compact" if self.compacted else "delete",
            "retention.ms": str(self.retention_ms),
        }
        cfg.update(self.extra_config)
        return cfg


def catalogue(settings: TopicSettings | None = None) -> list[TopicSpec]:
    """The topics of the reference domain, named with the configured prefix."""
    s = settings or TopicSettings()
    n = s.partitions
    specs: list[TopicSpec] = []
    for agg in AGGREGATES:
        # Command and event topics of one aggregate are co-partitioned: same count, same key.
        specs.append(TopicSpec(command_topic(agg, s), n, 7 * DAY_MS, purpose=f"{agg} commands"))
        specs.append(
            TopicSpec(
                event_topic(agg, s), n, INFINITE, purpose=f"{agg} events, the log of record", durable=True
            )
        )
        specs.append(
            TopicSpec(
                snapshot_topic(agg, s),
                n,
                INFINITE,
                compacted=True,
                purpose=f"latest {agg} state per aggregate (processor restore)",
                extra_config={"min.cleanable.dirty.ratio": "0.1", "segment.ms": str(DAY_MS)},
                durable=True,
            )
        )
    specs.append(
        TopicSpec(
            results_topic(s),
            n,
            INFINITE,
            compacted=True,
            purpose="answers (key aggregate type/id/command id) and dead-letter reports (key: position)",
            extra_config={"segment.ms": str(DAY_MS)},
            durable=True,
        )
    )
    specs.append(TopicSpec(dead_letter_topic(s), 1, 30 * DAY_MS, purpose="undecodable or unknown commands"))
    for process in PROCESSES:
        specs += process_topics(process, s)
    # The scheduler drains the first into the second (co-partitioned), which holds a command until it is
    # due: the first only has to outlive the scheduler's lag, the second keeps what is pending for good.
    specs.append(TopicSpec(scheduled_topic(s), n, 7 * DAY_MS, purpose="commands to deliver later (--at)"))
    specs.append(
        TopicSpec(
            scheduled_pending_topic(s),
            n,
            INFINITE,
            compacted=True,
            purpose="scheduled commands not yet due (scheduler state; key: source position)",
            extra_config={"min.cleanable.dirty.ratio": "0.1", "segment.ms": str(DAY_MS)},
            durable=True,
        )
    )
    return specs


def replication_for(cluster_size: int, settings: TopicSettings | None = None) -> tuple[int, int]:
    """(replication factor, min.insync.replicas of durable topics) for a cluster of that many brokers.

    Unset settings follow the cluster: three copies where three brokers exist, two of which must
    acknowledge a write, so any one broker may fail without losing an acknowledged event or stopping
    writes. Smaller clusters get one copy per broker and min.insync.replicas=1.
    """
    s = settings or TopicSettings()
    factor = s.replication_factor or max(1, min(3, cluster_size))
    min_isr = s.min_insync_replicas or (2 if factor >= 3 else 1)
    if min_isr > factor:
        raise TopicError(f"min.insync.replicas={min_isr} exceeds the replication factor {factor}")
    return factor, min_isr


def cluster_size(admin: AdminClient, timeout_s: float = 15) -> int:
    """How many brokers the cluster's metadata lists."""
    try:
        return len(admin.list_topics(timeout=timeout_s).brokers)
    except KafkaException as exc:
        raise translate(exc, context="reading cluster metadata") from exc


def with_min_insync(specs: Sequence[TopicSpec], min_isr: int) -> list[TopicSpec]:
    """The specs with ``min.insync.replicas`` set on the durable ones."""
    return [
        replace(s, extra_config={**s.extra_config, "min.insync.replicas": str(min_isr)}) if s.durable else s
        for s in specs
    ]


@dataclass
class TopicPlan:
    """What `apply` does (or, with dry_run, would do)."""

    create: list[TopicSpec] = field(default_factory=list)
    alter: dict[str, dict[str, tuple[str | None, str]]] = field(default_factory=dict)
    unchanged: list[str] = field(default_factory=list)
    partition_conflicts: dict[str, tuple[int, int]] = field(default_factory=dict)

    def lines(self) -> list[str]:
        """Human-readable summary, one line per topic touched."""
        out = [f"create {t.name} ({t.partitions} partitions, {t.config()})" for t in self.create]
        for name, changes in self.alter.items():
            diff = ", ".join(f"{k}: {old} -> {new}" for k, (old, new) in changes.items())
            out.append(f"alter  {name} ({diff})")
        out.extend(f"ok     {name}" for name in self.unchanged)
        return out


def _existing_partitions(admin: AdminClient, names: Iterable[str], timeout_s: float) -> dict[str, int]:
    md = admin.list_topics(timeout=timeout_s)
    wanted = set(names)
    return {name: len(t.partitions) for name, t in md.topics.items() if name in wanted}


def _current_configs(
    admin: AdminClient, names: Sequence[str], timeout_s: float
) -> dict[str, dict[str, str | None]]:
    if not names:
        return {}
    futures = admin.describe_configs(
        [ConfigResource(ResourceType.TOPIC, n) for n in names], request_timeout=timeout_s
    )
    out: dict[str, dict[str, str | None]] = {}
    for resource, fut in futures.items():
        entries: dict[str, ConfigEntry] = fut.result()
        out[resource.name] = {k: e.value for k, e in entries.items()}
    return out


def wait_until_visible(admin: AdminClient, names: Sequence[str], timeout_s: float) -> None:
    """Block until metadata lists every new topic with a leader for each partition.

    CreateTopics returns before the metadata has propagated; a producer or a second `apply` right
    after would otherwise see the topic missing.
    """
    deadline = time.monotonic() + timeout_s
    pending = set(names)
    while pending:
        md = admin.list_topics(timeout=timeout_s)
        for name in list(pending):
            t = md.topics.get(name)
            if (
                t is not None
                and t.error is None
                and t.partitions
                and all(p.leader >= 0 for p in t.partitions.values())
            ):
                pending.discard(name)
        if pending and time.monotonic() > deadline:
            raise TopicError(f"topics created but not visible after {timeout_s:.0f}s: {sorted(pending)}")
        if pending:
            time.sleep(0.1)


def plan(admin: AdminClient, specs: Sequence[TopicSpec], *, timeout_s: float = 15) -> TopicPlan:
    """Compare the catalogue with the cluster."""
    try:
        existing = _existing_partitions(admin, (s.name for s in specs), timeout_s)
        current = _current_configs(admin, [s.name for s in specs if s.name in existing], timeout_s)
    except KafkaException as exc:
        raise translate(exc, context="reading topic metadata") from exc
    result = TopicPlan()
    for spec in specs:
        if spec.name not in existing:
            result.create.append(spec)
            continue
        if existing[spec.name] != spec.partitions:
            result.partition_conflicts[spec.name] = (existing[spec.name], spec.partitions)
            continue
        have = current.get(spec.name, {})
        changes = {k: (have.get(k), v) for k, v in spec.config().items() if have.get(k) != v}
        if changes:
            result.alter[spec.name] = changes
        else:
            result.unchanged.append(spec.name)
    return result


def apply(
    admin: AdminClient,
    specs: Sequence[TopicSpec],
    *,
    replication_factor: int | None = None,
    min_insync_replicas: int | None = None,
    dry_run: bool = False,
    timeout_s: float = 30,
) -> TopicPlan:
    """Create missing topics and align managed configs; refuse partition-count changes.

    Replication left unset follows the cluster size (`replication_for`). Nothing is changed when any
    topic's partition count differs: the whole apply is refused, so the cluster is never left
    half-migrated.
    """
    replication_factor, min_isr = replication_for(
        cluster_size(admin, timeout_s),
        TopicSettings(replication_factor=replication_factor, min_insync_replicas=min_insync_replicas),
    )
    specs = with_min_insync(specs, min_isr)
    result = plan(admin, specs, timeout_s=timeout_s)
    if result.partition_conflicts:
        detail = "; ".join(
            f"{name} has {have} partitions, the catalogue says {want}"
            for name, (have, want) in sorted(result.partition_conflicts.items())
        )
        raise PartitionChangeRefused(
            f"refusing to change partition counts ({detail})",
            hint="changing partitions re-keys aggregates; migrate to a new topic instead",
        )
    if dry_run:
        return result
    try:
        if result.create:
            futures = admin.create_topics(
                [
                    NewTopic(t.name, num_partitions=t.partitions, replication_factor=replication_factor,
                             config=t.config())
                    for t in result.create
                ],
                request_timeout=timeout_s,
            )  # fmt: skip
            for name, fut in futures.items():
                try:
                    fut.result()
                except KafkaException as exc:
                    # Another `apply` won the race: the topic exists, which is what we wanted.
                    if exc.args[0].name() != "TOPIC_ALREADY_EXISTS":
                        raise TopicError(f"could not create topic {name}: {exc.args[0].str()}") from exc
            wait_until_visible(admin, [t.name for t in result.create], timeout_s)
        if result.alter:
            resources = [
                ConfigResource(
                    ResourceType.TOPIC,
                    name,
                    incremental_configs=[
                        ConfigEntry(k, new, incremental_operation=AlterConfigOpType.SET)
                        for k, (_old, new) in changes.items()
                    ],
                )
                for name, changes in result.alter.items()
            ]
            for resource, fut in admin.incremental_alter_configs(resources).items():
                try:
                    fut.result()
                except KafkaException as exc:
                    raise TopicError(f"could not alter topic {resource.name}: {exc.args[0].str()}") from exc
            # The broker applies config changes from the metadata log asynchronously: wait until a
            # describe shows them, so the caller (and the next apply) sees the catalogue in force.
            altered = [s for s in specs if s.name in result.alter]
            deadline = time.monotonic() + timeout_s
            while plan(admin, altered, timeout_s=timeout_s).alter:
                if time.monotonic() > deadline:
                    pending = sorted(result.alter)
                    raise TopicError(f"config changes not visible after {timeout_s:.0f}s: {pending}")
                time.sleep(0.1)
    except KafkaException as exc:
        raise translate(exc, context="applying the topic catalogue") from exc
    return result
