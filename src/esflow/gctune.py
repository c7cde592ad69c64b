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
