"""Batches whose size follows the load: ``take_adaptive``, a replacement for Faust's ``take_events``.

Faust's ``take_events(max_, within)`` yields on a fixed tick: every ``within`` seconds (or when ``max_``
events are buffered). That tick is a floor under command->read-model latency when the pipeline is idle
(a lone event waits up to ``within``), and under load it does not help either: while the agent body
runs, Faust stops filling the buffer, so a short tick makes many small Postgres transactions.

``take_adaptive`` yields a batch when

- the buffer is full (``max_``), or
- there is at least one event, ``linger_s`` has passed since the batch's first event, **and** the
  previous batch is no longer being applied (``busy()`` is None or done).

So an idle pipeline applies a lone event ``linger_s`` after it arrives, and a busy one keeps filling
the next batch for exactly as long as the current one takes to apply: the batch grows with the load,
with no window to tune. The agent applies one batch at a time (``concurrency=1``), so waiting for the
previous apply before yielding costs nothing: the agent body would wait for it anyway.

It is Faust's own algorithm (a stream processor that fills a buffer, acks disabled, each event acked
after its batch was handed over) with a different condition to yield; it uses two of Faust's
non-public stream methods (``_enable_passive``, ``_processors``) exactly as ``take_events`` does.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

from mode.utils.aiter import aiter
from mode.utils.futures import notify

Busy = Callable[[], "asyncio.Future[Any] | None"]
"""The apply in flight (None when there is none): the next batch is not yielded before it is done."""


async def take_adaptive(stream: Any, max_: int, linger_s: float, busy: Busy) -> AsyncIterator[list[Any]]:
    """Yield lists of Faust events from ``stream``: see the module docstring for when."""
    loop = asyncio.get_running_loop()
    events: list[Any] = []
    ready = asyncio.Event()  # the buffer holds at least one event
    full = asyncio.Event()  # the buffer holds max_ events: the batch goes at once
    consumed = asyncio.Event()
    consuming: asyncio.Future[Any] | None = None
    first_at = 0.0
    enable_acks: bool = stream.enable_acks

    async def add_to_buffer(value: Any) -> Any:
        nonlocal consuming, first_at
        try:
            if consuming is not None:
                # The batch is being handed over: nothing joins it now.
                try:
                    await consuming
                finally:
                    consuming = None
            event = stream.current_event
            if event is None:
                raise RuntimeError("take_adaptive found current_event is None")
            if not events:
                first_at = loop.time()
            events.append(event)
            ready.set()
            if len(events) >= max_:
                full.set()
                consumed.clear()
                await stream.wait(consumed)
        except asyncio.CancelledError:  # pragma: no cover - shutdown
            raise
        except Exception as exc:  # pragma: no cover - as take_events: crash the stream, loudly
            stream.log.exception("Error adding to take buffer: %r", exc)
            await stream.crash(exc)
        return value

    def idle() -> asyncio.Event:
        # An Event, not the future itself: Service.wait_first cancels what did not finish and
        # re-raises what failed, and the apply must see neither.
        done = asyncio.Event()
        inflight = busy()
        if inflight is None or inflight.done():
            done.set()
        else:
            inflight.add_done_callback(lambda _: done.set())
        return done

    stream.enable_acks = False
    stream.add_processor(add_to_buffer)
    stream._enable_passive(aiter(stream.channel))
    try:
        while not stream.should_stop:
            # mode's waits report a timeout as "stopped": only should_stop is asked whether it is.
            await stream.wait_for_stopped(ready)
            while not full.is_set() and not stream.should_stop:
                linger = first_at + linger_s - loop.time()
                if linger > 0:
                    await stream.wait_for_stopped(full, timeout=linger)
                    continue
                applied = idle()
                if applied.is_set():
                    break
                await stream.wait_first(full, applied)
            if stream.should_stop:
                break
            if not events:  # pragma: no cover - ready is set only with an event in the buffer
                continue
            consuming = loop.create_future()
            try:
                yield list(events)
            finally:
                handed = list(events)
                events.clear()
                ready.clear()
                for event in handed:
                    await stream.ack(event)
                notify(consuming)
                full.clear()
                consumed.set()
    finally:
        stream.enable_acks = enable_acks
        stream._processors.remove(add_to_buffer)
