from __future__ import annotations

import pytest

from esflow.errors import TopicError
from esflow.messaging.topics import (
    AGGREGATES,
    INFINITE,
    PROCESSES,
    TopicPlan,
    TopicSpec,
    catalogue,
    replication_for,
    with_min_insync,
)
from esflow.settings import TopicSettings


def test_commands_and_events_are_co_partitioned() -> None:
    specs = {s.name: s for s in catalogue(TopicSettings(partitions=12))}
    for agg in AGGREGATES:
        assert specs[f"commands.{agg}"].partitions == specs[f"events.{agg}"].partitions == 12
        assert specs[f"snapshots.{agg}"].partitions == 12


def test_event_topics_keep_everything_and_snapshots_compact() -> None:
    specs = {s.name: s for s in catalogue()}
    for agg in AGGREGATES:
        assert specs[f"events.{agg}"].config() == {"cleanup.policy": "delete", "retention.ms": str(INFINITE)}
        assert specs[f"snapshots.{agg}"].config()["cleanup.policy"] == "compact"
    assert specs["command-results"].compacted
    assert "commands.dead-letter" in specs


def test_prefix_applies_to_every_topic() -> None:
    names = [s.name for s in catalogue(TopicSettings(prefix="tenant1."))]
    assert names and all(n.startswith("tenant1.") for n in names)
    assert len(set(names)) == len(names)


def test_plan_lines_describe_changes() -> None:
    plan = TopicPlan(
        create=[TopicSpec("a", 3)],
        alter={"b": {"retention.ms": ("1", "2")}},
        unchanged=["c"],
    )
    assert plan.lines() == [
        "create a (3 partitions, {'cleanup.policy': 'delete', 'retention.ms': '-1'})",
        "alter  b (retention.ms: 1 -> 2)",
        "ok     c",
    ]


def test_durable_topics_get_min_insync_replicas_from_the_cluster_size() -> None:
    assert replication_for(1) == (1, 1)
    assert replication_for(3) == (3, 2)
    assert replication_for(6) == (3, 2)
    assert replication_for(3, TopicSettings(replication_factor=2)) == (2, 1)
    with pytest.raises(TopicError):
        replication_for(3, TopicSettings(replication_factor=2, min_insync_replicas=3))
    specs = {s.name: s for s in with_min_insync(catalogue(), 2)}
    durable = {n for n, s in specs.items() if s.config().get("min.insync.replicas") == "2"}
    assert durable == {
        *(f"events.{a}" for a in AGGREGATES),
        *(f"snapshots.{a}" for a in AGGREGATES),
        "command-results",
        *(f"process.{p}.state" for p in PROCESSES),
        "scheduled-commands.pending",  # the only copy of a scheduled command once its source expired
    }
