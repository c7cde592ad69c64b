"""`esflow topics apply` against the real broker: idempotent, config-aligning, partition-safe."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType

from esflow.errors import PartitionChangeRefused
from esflow.messaging import topics
from esflow.settings import TopicSettings


@pytest.fixture
def prefix(admin: AdminClient, unique: Callable[[str], str]) -> Iterator[str]:
    p = unique("cat") + "."
    yield p
    names = [n for n in admin.list_topics(timeout=10).topics if n.startswith(p)]
    if names:
        for fut in admin.delete_topics(names).values():
            fut.result(timeout=30)


def _config(admin: AdminClient, name: str) -> dict[str, str]:
    futures = admin.describe_configs([ConfigResource(ResourceType.TOPIC, name)])
    return {k: e.value for k, e in next(iter(futures.values())).result().items()}


def test_apply_creates_then_is_a_no_op(admin: AdminClient, prefix: str) -> None:
    specs = topics.catalogue(TopicSettings(prefix=prefix, partitions=3))
    first = topics.apply(admin, specs)
    assert sorted(t.name for t in first.create) == sorted(s.name for s in specs)

    md = admin.list_topics(timeout=10)
    for spec in specs:
        assert len(md.topics[spec.name].partitions) == spec.partitions
    assert _config(admin, f"{prefix}events.order")["retention.ms"] == "-1"
    assert _config(admin, f"{prefix}snapshots.order")["cleanup.policy"] == "compact"

    second = topics.apply(admin, specs)
    assert not second.create and not second.alter
    assert sorted(second.unchanged) == sorted(s.name for s in specs)


def test_apply_aligns_changed_configs(admin: AdminClient, prefix: str) -> None:
    specs = topics.catalogue(TopicSettings(prefix=prefix, partitions=2))
    topics.apply(admin, specs)
    changed = [
        topics.TopicSpec(s.name, s.partitions, 3 * topics.DAY_MS, s.compacted, s.purpose, s.extra_config)
        if s.name == f"{prefix}commands.order"
        else s
        for s in specs
    ]
    result = topics.apply(admin, changed)
    assert list(result.alter) == [f"{prefix}commands.order"]
    assert _config(admin, f"{prefix}commands.order")["retention.ms"] == str(3 * topics.DAY_MS)


def test_partition_change_is_refused_and_nothing_changes(admin: AdminClient, prefix: str) -> None:
    topics.apply(admin, topics.catalogue(TopicSettings(prefix=prefix, partitions=2)))
    wider = topics.catalogue(TopicSettings(prefix=prefix, partitions=4))

    with pytest.raises(PartitionChangeRefused) as info:
        topics.apply(admin, wider)

    assert f"{prefix}events.order has 2 partitions, the catalogue says 4" in info.value.message
    md = admin.list_topics(timeout=10)
    assert len(md.topics[f"{prefix}events.order"].partitions) == 2
