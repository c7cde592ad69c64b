"""A Faust transport that reads committed data only and resumes from the Postgres checkpoints.

Faust (faust-streaming 0.15) sets ``isolation_level="read_committed"`` only under its own
``exactly_once`` guarantee, which the projections do not use: they keep Faust at-least-once and get
exactly-once in effect from the Postgres checkpoint. Without read_committed, events of aborted Kafka
transactions (the command processor aborts on every failure) would reach the read models. So the
consumer thread below builds the aiokafka consumer exactly as Faust does and switches its isolation
level before the consumer starts (aiokafka reads the attribute when it creates its fetcher in
``start()``); a test checks the fetcher and a real aborted transaction.

Faust seeks every assigned partition to Kafka's committed offset on each rebalance (and whenever flow
resumes). The consumer below overrides that seek: when Postgres holds a checkpoint for the partition,
the partition is sought to checkpoint + 1 instead. Postgres is the source of truth: a batch committed
there but not yet in Kafka is not reapplied (it would be skipped anyway), and a batch Kafka acked but
Postgres never committed (a crash, a halted partition) is read again instead of lost.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, cast

import faust
import tenacity
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types.tuples import ack_lock

from esflow.readmodel.projection import records_left

log = logging.getLogger("esflow.projections")

ISOLATION_LEVEL = "read_committed"

CheckpointSource = Callable[[set[tuple[str, int]]], Awaitable[Mapping[tuple[str, int], int]]]
"""Async lookup of the Postgres checkpoints (last applied offset) of some partitions."""


class ReadCommittedConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """Faust's aiokafka consumer thread with ``isolation_level=read_committed`` at all times."""

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        if not hasattr(consumer, "_isolation_level"):  # pragma: no cover - guards an aiokafka upgrade
            raise RuntimeError("aiokafka changed: cannot force read_committed on Faust's consumer")
        # Not started yet: aiokafka passes this attribute to its Fetcher in start().
        consumer._isolation_level = ISOLATION_LEVEL
        return consumer


class CheckpointSeekingConsumer(faust_aiokafka.Consumer):
    """Faust's aiokafka consumer, read_committed, seeking assigned partitions to the Postgres checkpoints."""

    def _new_consumer_thread(self) -> ReadCommittedConsumerThread:
        return ReadCommittedConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def seek_to_committed(self) -> Mapping[Any, int]:
        """Seek every assigned partition to its Postgres checkpoint + 1 (offset 0 where there is none).

        Kafka's committed offset is never trusted on its own: Faust commits a batch's offsets once the
        agent moves on, which can be before Postgres committed the batch, so it may be ahead of the read
        model, also for a partition whose very first batch never reached Postgres.
        """
        committed: dict[Any, int] = dict(await super().seek_to_committed())
        source = cast(CheckpointSource | None, getattr(self.app, "checkpoint_source", None))
        assigned = self.assignment()
        if source is None or not assigned:
            return committed
        tps = {(tp.topic, tp.partition) for tp in assigned}
        checkpoints = await source(tps)
        for tp in assigned:
            done = checkpoints.get((tp.topic, tp.partition))
            # Nothing applied yet: from the start (auto_offset_reset=earliest covers a truncated log).
            position = 0 if done is None or done < 0 else done + 1
            if committed.get(tp) != position:
                log.info(
                    "seek %s[%d] to %d from the Postgres checkpoint (Kafka committed: %s)",
                    tp.topic,
                    tp.partition,
                    position,
                    committed.get(tp),
                )
                await self._seek(tp, position)
            committed[tp] = position
        return committed

    async def _add_gap(self, tp: Any, offset_from: int, offset_to: int) -> None:
        """Mark the offsets this consumer skipped (``offset_from`` up to the next record) as acked.

        Under read_committed every transaction leaves a commit marker, an offset no consumer ever
        sees, so a live worker meets a gap per transaction. Faust keeps gaps in an IntervalTree that it
        re-merges on every one and folds into the acked offsets only when it commits, which was a tenth
        of a live host's CPU. Marking them acked at once is the same bookkeeping in O(gap). Faust's gap
        also includes ``offset_to``, the record that revealed it, which is acked on its own when its
        batch is handed over, so it is left out here.
        """
        committed = self._committed_offset[tp]
        if committed is not None:
            offset_from = max(offset_from, committed + 1)
        if offset_from >= offset_to:
            return
        with ack_lock:
            index = self._acked_index[tp]
            acked = self._acked[tp]
            for offset in range(offset_from, offset_to):
                if offset not in index:
                    index.add(offset)
                    acked.append(offset)

    def records_left(self, tp: Any, last: int) -> int | None:
        """Records still to apply in ``tp`` after offset ``last`` (the partition's ``lag``), or None.

        Counted by :func:`~esflow.readmodel.projection.records_left` from where read_committed reading
        stops: aiokafka's last stable offset, as of its latest fetch (the high watermark when it has
        none). Whether Faust still holds fetched records is not observable, so "the consumer read to
        the end" is never claimed here. Reads aiokafka's state without waiting, as Faust's own
        ``highwater()`` does.
        """
        state = self._thread._ensure_consumer()._subscription.subscription.assignment.state_value(tp)
        if state is None:
            return None
        end = state.lso if state.lso is not None and state.lso >= 0 else state.highwater
        return records_left(last, end)


class ReadCommittedTransport(faust_aiokafka.Transport):
    """The aiokafka transport with :class:`CheckpointSeekingConsumer`."""

    Consumer = CheckpointSeekingConsumer


class ProjectionApp(faust.App):
    """A Faust app whose consumer is read_committed and resumes from Postgres checkpoints."""

    checkpoint_source: CheckpointSource | None = None

    def _new_transport(self) -> Any:
        return ReadCommittedTransport(self.conf.broker_consumer, self)


def with_timeout(source: CheckpointSource, timeout_s: float, retry_s: float = 1.0) -> CheckpointSource:
    """Retry a checkpoint lookup through a Postgres outage for up to ``timeout_s``, then give up.

    Seeking to Kafka's offset without knowing the checkpoint could skip events Kafka acked but Postgres
    never committed, so there is no fallback: giving up crashes the worker, which a supervisor restarts.
    """

    def waiting(state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        log.warning("reading checkpoints failed, retrying in %.1fs: %s", retry_s, exc)

    async def lookup(tps: set[tuple[str, int]]) -> Mapping[tuple[str, int], int]:
        retrying = tenacity.AsyncRetrying(
            wait=tenacity.wait_fixed(retry_s),
            # No attempt that would start after the deadline, as the caller's timeout promises.
            stop=tenacity.stop_before_delay(timeout_s),
            before_sleep=waiting,
            reraise=True,
        )
        return await retrying(source, tps)

    return lookup
