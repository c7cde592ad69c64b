"""Garbage-collector settings for esflow's long-running worker processes.

The workers allocate many short-lived objects per message (decoded envelopes, pydantic models, rows)
and keep a batch of them alive at once, so the young generations fill up and get traversed again and
again: measured in the bulk replayer, the collector's automatic passes took most of the decoding time.
Almost all of this garbage is freed by reference counting anyway; cycles are rare. So a worker moves
everything created at start-up (modules, schemas, compiled codecs) out of the collector's sight with
``gc.freeze()`` and collects the young generation after tens of thousands of allocations instead of
700, which bounds the uncollected cycles to a few batches' worth.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

YOUNG_THRESHOLD = 50_000
"""Allocations (net of deallocations) between collections of the youngest generation (CPython: 700)."""


def tune_for_throughput(young_threshold: int = YOUNG_THRESHOLD) -> None:
    """Freeze the objects alive now and collect the young generation rarely (call once, after start-up)."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(young_threshold, middle, old)


_lock = threading.Lock()
_depth = 0
_was_enabled = False


@contextmanager
def paused() -> Iterator[None]:
    """No automatic collection inside the block: for a batch whose objects all die when it ends.

    A batch keeps its messages, models and records alive until it ends, so a collection that falls
    inside it traverses tens of thousands of objects only to find them all reachable (a noticeable share
    of the command processor's time). Deallocations count down the collector's young-generation
    counter, so once the batch's objects are freed the counter is back near what survived, and
    collection resumes where it left off: cycles are still collected, between batches. Nested and
    concurrent blocks (the replayer's threads) are counted: collection resumes when the last one ends.
    """
    global _depth, _was_enabled
    with _lock:
        if _depth == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _was_enabled:
                gc.enable()


class SurvivorFreezer:
    """Collection between turns for a process whose survivors are a large, growing, acyclic cache.

    The command processor keeps every aggregate of its partitions in memory, and every command replaces
    one record with a new one: the young generation fills with objects that all survive, and each older
    generation's collection traverses everything promoted since the last one. With 100k aggregates a
    middle-generation pass took 386 ms of the processor's only thread (a command->result spike of half
    a second at 800 commands/s), and the pass grows with the data. The records are immutable and hold
    no cycles: reference counting frees the replaced ones, and a cycle among them can only come from a
    bug. So:

    - automatic collection is off; :meth:`turn` collects the young generation between turns once it
      holds ``young_threshold`` objects, and freezes what survived, so no pass sees it again (each
      object is traversed about once either way: a smaller threshold only makes the pauses shorter,
      about 5 ms for 10,000 objects here, against 20-50 ms for 50,000);
    - what the freezing may hide (a cycle that became garbage after it was frozen) is found by a full
      collection of everything, run on an idle turn once the frozen objects have doubled since the last
      one, and on any turn once they grew ``force_growth`` times (so a never-idle process still does).
    """

    def __init__(
        self,
        young_threshold: int = 10_000,
        *,
        idle_growth: float = 2.0,
        force_growth: float = 8.0,
        floor: int = 100_000,
    ) -> None:
        self.young_threshold = young_threshold
        self.idle_growth = idle_growth
        self.force_growth = force_growth
        self.floor = floor
        """No full collection while fewer objects than this are frozen."""
        self._after_full = 0
        self._frozen = 0
        """Objects frozen, counted here: ``gc.get_freeze_count()`` walks the whole frozen list."""
        self.full_collections = 0
        """Full collections :meth:`turn` ran (the one of :meth:`start` not counted)."""
        self._was_enabled = True

    def start(self) -> None:
        """Collect everything, freeze it and switch automatic collection off (call once, after start-up)."""
        self._was_enabled = gc.isenabled()
        gc.disable()
        self._full()

    def stop(self) -> None:
        """Hand collection back: unfreeze, and switch automatic collection on if :meth:`start` found it on.

        For a caller that uses the freezer for a while inside a longer-lived process (the load
        generator inside a benchmark or a test); the objects go back to the oldest generation.
        """
        gc.unfreeze()
        if self._was_enabled:
            gc.enable()

    def _full(self) -> None:
        gc.unfreeze()
        gc.collect()
        gc.freeze()
        self._frozen = self._after_full = gc.get_freeze_count()

    def turn(self, idle: bool) -> None:
        """Between two turns: collect the young generation when due; a full collection when due."""
        if gc.get_count()[0] >= self.young_threshold:
            gc.collect(0)
            # The survivors are in the middle generation now (the older ones are empty: all frozen).
            self._frozen += len(gc.get_objects(1))
            gc.freeze()
        base = max(self.floor, self._after_full)
        if self._frozen > base * self.force_growth or (idle and self._frozen > base * self.idle_growth):
            self._full()
            self.full_collections += 1
