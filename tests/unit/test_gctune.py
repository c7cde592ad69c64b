"""The processor's collection policy: survivors frozen between turns, cycles still found."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from esflow.gctune import SurvivorFreezer


class Node:
    """A container that can form a cycle and be watched with a weak reference."""

    def __init__(self) -> None:
        self.other: Node | None = None


@pytest.fixture
def collector() -> Iterator[SurvivorFreezer]:
    freezer = SurvivorFreezer(young_threshold=1000, floor=1000)
    freezer.start()
    try:
        yield freezer
    finally:
        freezer.stop()


def _held_cycle() -> tuple[list[Node], weakref.ref[Node]]:
    """A two-node cycle, alive while the returned list is, and a weak reference into it."""
    a, b = Node(), Node()
    a.other, b.other = b, a
    return [a, b], weakref.ref(a)


def _cycle() -> weakref.ref[Node]:
    """A two-node cycle that is garbage already (only the collector can free it)."""
    _, ref = _held_cycle()
    return ref


def test_start_switches_automatic_collection_off(collector: SurvivorFreezer) -> None:
    assert not gc.isenabled()
    assert gc.get_freeze_count() > 0


def test_a_turn_freezes_the_survivors_of_a_young_collection(collector: SurvivorFreezer) -> None:
    before = gc.get_freeze_count()
    kept = [Node() for _ in range(2000)]
    collector.turn(idle=False)
    assert gc.get_count()[0] < 1000
    assert gc.get_freeze_count() >= before + len(kept)


def test_a_turn_below_the_threshold_collects_nothing(collector: SurvivorFreezer) -> None:
    collector.young_threshold = 10**9
    before = gc.get_freeze_count()
    dead = _cycle()
    collector.turn(idle=False)
    assert dead() is not None, "no young collection is due yet"
    assert gc.get_freeze_count() == before


def test_young_garbage_cycles_are_collected_at_the_turn(collector: SurvivorFreezer) -> None:
    dead = _cycle()
    filler = [Node() for _ in range(2000)]
    collector.turn(idle=False)
    assert dead() is None
    assert filler


def test_a_cycle_that_died_after_it_was_frozen_goes_at_the_next_idle_full_collection(
    collector: SurvivorFreezer,
) -> None:
    held, watched = _held_cycle()
    grown = [Node() for _ in range(gc.get_freeze_count() * 2)]
    collector.turn(idle=False)  # young collection: the cycle is alive, it is frozen with the rest
    del held
    collector.turn(idle=False)
    assert watched() is not None, "a busy turn below force_growth runs no full collection"
    collector.turn(idle=True)
    assert watched() is None
    assert collector.full_collections == 1
    assert grown


def test_a_never_idle_process_still_collects_fully_once_the_frozen_set_grew_enough(
    collector: SurvivorFreezer,
) -> None:
    held, watched = _held_cycle()
    collector.turn(idle=False)
    del held
    grown = [Node() for _ in range(int(gc.get_freeze_count() * collector.force_growth) + 1000)]
    collector.turn(idle=False)
    assert watched() is None
    assert collector.full_collections == 1
    assert grown


def test_stop_hands_collection_back_as_start_found_it() -> None:
    was = gc.isenabled()
    gc.enable()
    try:
        freezer = SurvivorFreezer(young_threshold=1000, floor=1000)
        freezer.start()
        assert not gc.isenabled() and gc.get_freeze_count() > 0
        freezer.stop()
        assert gc.isenabled() and gc.get_freeze_count() == 0
        gc.disable()
        freezer = SurvivorFreezer(young_threshold=1000, floor=1000)
        freezer.start()
        freezer.stop()
        assert not gc.isenabled()  # it was off: stays off
    finally:
        gc.unfreeze()
        if was:
            gc.enable()
        else:
            gc.disable()
