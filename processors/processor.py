"""The command processor: the command step (:mod:`processors.step`) on the shell (:mod:`processors.loop`).

One instance = one consumer subscribed to ``commands.<aggregate>`` and one transactional producer whose
``transactional.id`` is stable per instance (``<group>-<instance>``); each batch of commands is decided by
the step and written by the shell in one Kafka transaction (events, then results and snapshots that name
the events' offsets, dead letters, the consumed offsets). :meth:`Processor.build_step` is the one place
that builds the step from settings: override it to wire a different one.
"""

from __future__ import annotations

import logging

from confluent_kafka import KafkaException

from esflow.errors import ConfigError, ProcessorError
from esflow.messaging.codec import Codec
from esflow.settings import KafkaSettings, ProcessorSettings, Settings, TopicSettings
from processors.kafka_errors import offset_fetch_retriable, producer_fenced
from processors.loop import RENEWALS_MAX, LoopOptions, TransactionalLoop
from processors.metrics import Metrics
from processors.restore import restore_partition
from processors.state import PartitionCache
from processors.step import CommandStep, Topics

__all__ = [
    "RENEWALS_MAX",
    "Processor",
    "Topics",
    "offset_fetch_retriable",
    "producer_fenced",
]

log = logging.getLogger("esflow.processor")


class Processor(TransactionalLoop):
    """One command-processor instance: a :class:`CommandStep` on a :class:`TransactionalLoop`."""

    step: CommandStep

    def __init__(
        self,
        kafka: KafkaSettings,
        topics: TopicSettings,
        settings: ProcessorSettings,
        codec: Codec,
        *,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.codec = codec
        self.topics = Topics.from_settings(topics, settings)
        metrics = metrics or Metrics()
        # Only the named parts are read; the rest of Settings is never built from the environment here.
        whole = Settings.model_construct(kafka=kafka, topics=topics, processor=settings)
        super().__init__(
            whole,
            self.build_step(kafka, codec, metrics),
            topics=self.topics.command_topics,
            group_id=settings.group_id,
            transactional_id=settings.transactional_id,
            options=LoopOptions.from_processor(settings),
            metrics=metrics,
            logger=log,
            client_id=f"esflow-processor-{settings.instance_id}",
        )

    def build_step(self, kafka: KafkaSettings, codec: Codec, metrics: Metrics) -> CommandStep:
        """The command step, its state restored from the snapshot and event topics."""

        def restore(cache: PartitionCache, snapshots_topic: str, events_topic: str) -> None:
            restore_partition(
                kafka,
                codec,
                cache,
                snapshots_topic=snapshots_topic,
                events_topic=events_topic,
                window=self.settings.idempotency_window,
                timeout_s=self.settings.restore_timeout_s,
                progress=metrics.restore_records.inc,
            )

        return CommandStep(self.topics, self.settings, codec, restore, metrics=metrics)

    def start(self) -> None:
        """Check the topics, then fence predecessors and join the group."""
        self.step.partition_counts = self._check_topics()
        super().start()

    def cache(self, topic: str, partition: int) -> PartitionCache | None:
        """The cache of one assigned partition (tests and tools)."""
        return self.step.cache(topic, partition)

    def _check_topics(self) -> dict[str, int]:
        from confluent_kafka.admin import AdminClient

        from esflow.messaging.kafka import common_config

        admin = AdminClient(common_config(self.kafka))
        try:
            md = admin.list_topics(timeout=30)
        except KafkaException as exc:
            raise ProcessorError(f"cannot read topic metadata: {exc.args[0].str()}") from exc
        counts = {name: len(t.partitions) for name, t in md.topics.items() if t.error is None}
        needed = [self.topics.results, self.topics.dead_letter]
        for a in self.topics.aggregate_types:
            needed += [self.topics.commands(a), self.topics.events(a), self.topics.snapshots(a)]
        missing = [t for t in needed if t not in counts]
        if missing:
            raise ConfigError(f"missing topics: {', '.join(missing)}", hint="run `esflow topics apply`")
        for a in self.topics.aggregate_types:
            n = {
                counts[self.topics.commands(a)],
                counts[self.topics.events(a)],
                counts[self.topics.snapshots(a)],
            }
            if len(n) != 1:
                raise ConfigError(
                    f"{a}: commands, events and snapshots topics must be co-partitioned, have {sorted(n)}",
                    hint="the catalogue declares equal partition counts; migrate the odd topic",
                )
        return {self.topics.commands(a): counts[self.topics.commands(a)] for a in self.topics.aggregate_types}
