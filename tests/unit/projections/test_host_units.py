"""Units of the projector host that need no server: decoding once, consumer groups, the shared agent."""

from __future__ import annotations

from typing import Any

from esflow.readmodel.projection import Decoded, RawEvent, Rejected, prepare
from esflow.settings import ProjectionSettings
from projections import catchup, fanout, registry, runtime


class CountingDecoder:
    """Decodes records whose value is a type name; counts the calls; ``bad`` values fail to decode."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, raw: RawEvent) -> Decoded[Any]:
        self.calls += 1
        if raw.value == b"bad":
            raise ValueError(f"cannot decode offset {raw.offset}")
        assert raw.value is not None
        return Decoded(raw, raw.value.decode(), None, raw.offset)  # type: ignore[arg-type]


def test_the_shared_decoder_decodes_each_record_once_for_every_projection() -> None:
    raws = [
        RawEvent("p.events.order", 0, 0, b"k", b"OrderPlaced"),
        RawEvent("p.events.order", 0, 1, b"k", b"bad"),
        RawEvent("p.events.order", 0, 2, b"k", None),
        RawEvent("p.events.order", 1, 0, b"k", b"OrderPaid"),
    ]
    inner = CountingDecoder()
    shared = fanout.SharedDecoder(inner)
    shared.load(raws)
    assert inner.calls == 3  # the tombstone is rejected before decoding
    first = prepare(registry.get("orders"), shared, raws)
    second = prepare(registry.get("event_log"), shared, raws)
    assert inner.calls == 3, "a projection decoded a record again"
    for items in (first, second):
        assert [type(i).__name__ for i in items] == ["Decoded", "Rejected", "Rejected", "Decoded"]
        bad = items[1]
        assert isinstance(bad, Rejected) and bad.error_type == "ValueError" and "offset 1" in bad.reason
    # The same decoded object reaches both projections.
    assert first[0] is second[0]
    # A new batch replaces the old one; a record not loaded is decoded on the spot.
    shared.load(raws[3:])
    assert isinstance(shared(raws[0]), Decoded) and inner.calls == 5


def test_host_groups_name_the_served_versions_and_one_projection_keeps_its_own() -> None:
    settings = ProjectionSettings(group_prefix="g")
    assert runtime.host_group(settings, {"orders": 3}) == runtime.version_group(settings, "orders", 3)
    both = runtime.host_group(settings, {"orders": 1, "event_log": 2})
    assert both == "g-host-event_log-v2-orders-v1"
    assert runtime.host_group(settings, {"event_log": 2, "orders": 1}) == both
    assert runtime.host_group(settings, {"event_log": 3, "orders": 1}) != both


def test_the_catch_up_hands_over_within_half_the_threshold_so_the_tail_does_not_restart_it() -> None:
    # A threshold below what a batch per partition leaves: replay to the very end (the bench once
    # looped here: nothing replayed, the tail over the threshold, restart, again).
    assert catchup.handover_lag(ProjectionSettings(catchup_threshold=1, batch_size=2000), 6) == 0
    assert catchup.handover_lag(ProjectionSettings(catchup_threshold=50_000, batch_size=2000), 18) == 1388
    assert catchup.handover_lag(ProjectionSettings(catchup_threshold=50_000, batch_size=500), 6) == 500
    for partitions in (1, 6, 18, 42):
        settings = ProjectionSettings(catchup_threshold=10_000)
        assert catchup.handover_lag(settings, partitions) * partitions <= settings.catchup_threshold // 2
