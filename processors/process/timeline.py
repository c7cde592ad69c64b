"""`esflow process show`: find one instance's record on its state topic and print it as a causation tree."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from uuid import UUID

from confluent_kafka import KafkaException

from esflow.errors import TopicError
from esflow.messaging.kafka import admin_client, partition_for
from esflow.messaging.process_records import HistoryEntry, InstanceRecord
from esflow.messaging.topics import process_state_topic
from esflow.settings import Settings
from processors.process.store import StateTopicLoader


def find_instance(settings: Settings, processes: Sequence[str], instance_id: UUID) -> InstanceRecord | None:
    """The committed record of ``instance_id`` in the first of ``processes`` that has one."""
    key = str(instance_id).encode()
    admin = admin_client(settings.kafka)
    for name in processes:
        topic = process_state_topic(name, settings.topics)
        try:
            meta = admin.list_topics(topic, timeout=15).topics.get(topic)
        except KafkaException as exc:
            raise TopicError(f"cannot read the metadata of {topic}: {exc.args[0].str()}") from exc
        if meta is None or meta.error is not None or not meta.partitions:
            continue
        loader = StateTopicLoader(settings.kafka, topic, timeout_s=60)
        for value in loader.load(partition_for(key, len(meta.partitions))):
            record = InstanceRecord.from_bytes(value)
            if record.instance_id == instance_id:
                return record
    return None


def all_instances(settings: Settings, process: str) -> list[InstanceRecord]:
    """Every committed instance record of ``process`` (reads its whole state topic)."""
    topic = process_state_topic(process, settings.topics)
    try:
        meta = admin_client(settings.kafka).list_topics(topic, timeout=15).topics.get(topic)
    except KafkaException as exc:
        raise TopicError(f"cannot read the metadata of {topic}: {exc.args[0].str()}") from exc
    if meta is None or meta.error is not None:
        raise TopicError(f"no topic {topic}", hint="run `esflow topics apply`")
    loader = StateTopicLoader(settings.kafka, topic, timeout_s=120)
    return [InstanceRecord.from_bytes(v) for p in sorted(meta.partitions) for v in loader.load(p)]


@dataclass
class _Node:
    entry: HistoryEntry
    children: list[_Node] = field(default_factory=list)


def _label(entry: HistoryEntry) -> str:
    step = f" [{entry.step}]" if entry.step else ""
    return f"{entry.direction:<3} {entry.kind} {entry.what}{step}  {entry.id}  {entry.at:%H:%M:%S.%f}"[:-3]


def tree(history: Sequence[HistoryEntry]) -> list[_Node]:
    """Each entry under the one that caused it: a command under its input, an answer under its command."""
    roots: list[_Node] = []
    latest: dict[UUID, _Node] = {}
    for entry in history:
        node = _Node(entry)
        parent = latest.get(entry.causation_id) if entry.causation_id is not None else None
        (parent.children if parent is not None else roots).append(node)
        # An answer shares its command's id: later commands it caused then hang under the answer.
        latest[entry.id] = node
    return roots


def render(record: InstanceRecord) -> str:
    """A readable report of one instance."""
    lines = [
        f"{record.process} {record.instance_id}: {record.status} (step {record.step})"
        + (f" - {record.reason}" if record.reason else ""),
        f"  started {record.started_at:%Y-%m-%d %H:%M:%S}"
        + (f", ended {record.ended_at:%Y-%m-%d %H:%M:%S}" if record.ended_at else "")
        + f"; {record.inputs} inputs, {record.attempts} re-sends",
    ]
    lines += [f"  timer {name} at {at:%Y-%m-%d %H:%M:%S}" for name, at in sorted(record.timers.items())]
    for s in record.sends.values():
        until = f"{s.waiting} until {s.retry_at:%H:%M:%S}"
        lines.append(f"  waiting for {s.command_type} [{s.step}] attempt {s.attempt} ({until})")
    lines.append("  timeline:")

    def walk(nodes: list[_Node], prefix: str) -> None:
        for i, node in enumerate(nodes):
            last = i == len(nodes) - 1
            lines.append(f"{prefix}{'`-- ' if last else '|-- '}{_label(node.entry)}")
            walk(node.children, prefix + ("    " if last else "|   "))

    walk(tree(record.history), "    ")
    return "\n".join(lines)
