"""Read models filled by the real projection applier, and query buses over them (no Kafka needed).

The events come from the benchmark workload generator (orders, products and accounts with their
whole lives); :class:`ReadModels` frames them as records of the aggregates' event topics, with offsets
counted per partition, and hands them to :class:`BatchApplier` exactly as a projector worker would:
rows and checkpoints move in one transaction, and ``bi.projection_status`` with them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import pytest
import sqlalchemy as sa

from api.queries import HANDLERS
from esflow.domain.messages import EventEnvelope
from esflow.messaging.codec import Codec
from esflow.messaging.process_records import InstanceRecord
from esflow.messaging.topics import event_topic, process_state_topic, source_topic
from esflow.query.bus import QueryBus
from esflow.query.consistency import ConsistencyToken
from esflow.readmodel import versions
from esflow.readmodel.applier import BatchApplier
from esflow.readmodel.projection import RawEvent
from esflow.readmodel.store import ProjectionStore, create_engine
from esflow.settings import PostgresSettings, ProjectionSettings, Settings
from ops.bench.projection_workload import Workload
from projections import registry
from projections.registry import SourceDecoder

CODEC = Codec.from_settings()
PARTITIONS = 3
SERVED = ("orders", "daily_revenue", "product_catalog", "account_balances", "event_log", "process_instances")
"""The projections the queries read."""


class ReadModels:
    """An installation (base schema ``schema``) whose projections are fed by hand, batch by batch."""

    def __init__(self, pg: PostgresSettings, schema: str, projections: Sequence[str] = SERVED) -> None:
        self.settings = Settings(postgres=pg, projections=ProjectionSettings(db_schema=schema))
        self.layout = versions.Layout(schema)
        self.base = create_engine(pg, schema, pool_size=1)
        self.projections = [registry.get(name) for name in projections]
        versions.install(self.base, self.layout, self.projections)
        self.appliers: dict[str, BatchApplier] = {}
        self.engines: list[sa.Engine] = [self.base]
        with self.base.connect() as conn:
            for p in self.projections:
                live = versions.live_version(conn, self.layout, p.name)
                assert live is not None
                engine = create_engine(pg, live.schema, pool_size=1)
                self.engines.append(engine)
                self.appliers[p.name] = BatchApplier(
                    ProjectionStore(engine),
                    p,
                    SourceDecoder(CODEC),
                    ProjectionSettings(retry_initial_s=0.01),
                )
        self.offsets: dict[tuple[str, int], int] = {}
        self.workload = Workload(seed=11, customers=20)
        self.applied: list[EventEnvelope] = []

    def frame(self, envelopes: Sequence[EventEnvelope]) -> list[RawEvent]:
        """Records of the event topics, offsets continuing where the last batch stopped."""
        raws = []
        for env in envelopes:
            topic = event_topic(env.metadata.aggregate_type, self.settings.topics)
            tp = (topic, env.metadata.aggregate_id.int % PARTITIONS)
            offset = self.offsets.get(tp, -1) + 1
            self.offsets[tp] = offset
            raws.append(RawEvent(tp[0], tp[1], offset, CODEC.key(env), CODEC.encode(env)))
        return raws

    def feed_instances(self, records: Sequence[InstanceRecord]) -> None:
        """Apply process instance records as the state topics hold them (keyed by instance id)."""
        raws = []
        for record in records:
            tp = (
                process_state_topic(record.process, self.settings.topics),
                record.instance_id.int % PARTITIONS,
            )
            offset = self.offsets.get(tp, -1) + 1
            self.offsets[tp] = offset
            raws.append(RawEvent(tp[0], tp[1], offset, str(record.instance_id).encode(), record.to_bytes()))
        result = self.appliers["process_instances"].process(raws)
        assert not result.halted and not result.dead_lettered, result

    def feed(self, envelopes: Sequence[EventEnvelope]) -> ConsistencyToken:
        """Apply a batch to every projection (one transaction each); the token of what it wrote."""
        raws = self.frame(envelopes)
        for applier in self.appliers.values():
            # Each projection gets the records of the topics it reads, as its worker's subscription does.
            reads = {source_topic(s, self.settings.topics) for s in applier.projection.aggregates}
            result = applier.process([r for r in raws if r.topic in reads])
            assert not result.halted, result.halted
        self.applied.extend(envelopes)
        best: dict[tuple[str, int], int] = {}
        for r in raws:
            best[(r.topic, r.partition)] = max(best.get((r.topic, r.partition), -1), r.offset)
        return ConsistencyToken(tuple(sorted((t, p, o) for (t, p), o in best.items())))

    def feed_generated(self, count: int) -> ConsistencyToken:
        """Apply ``count`` more events of the generated workload."""
        return self.feed(self.workload.events(count))

    def bus(self, *, cache_size: int = 10_000, **kwargs: Any) -> QueryBus:
        """A bus with every handler over this installation (the caller closes it)."""
        return QueryBus.connect(HANDLERS, self.settings, cache_size=cache_size, pool_size=4, **kwargs)

    def close(self) -> None:
        """Dispose of the engines."""
        for engine in self.engines:
            engine.dispose()


@pytest.fixture
def read_models(pg_settings: PostgresSettings, pg_schema: str) -> Iterator[ReadModels]:
    """Installed, empty read models in a throwaway installation."""
    models = ReadModels(pg_settings, pg_schema)
    yield models
    models.close()
