"""Several projections behind one stream of batches: each record decoded once, each projection its part.

A projector host (:func:`projections.runtime.build_host`) and its bulk catch-up
(:mod:`projections.catchup`) read each event topic once for every projection that reads it. A
:class:`FanOut` holds one :class:`~esflow.readmodel.applier.BatchApplier` per projection (each with its
own store: the schema of the version it serves, its checkpoints, dead letters and halts) and a
:class:`SharedDecoder` they all decode through; :meth:`FanOut.shares` splits a batch by the topics each
reads, and :meth:`FanOut.lowest_checkpoints` says where a shared consumer must start reading.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from esflow.messaging.topics import source_topic
from esflow.readmodel.applier import BatchApplier, Observer
from esflow.readmodel.projection import TP, Decoded, Decoder, Projection, RawEvent
from esflow.readmodel.store import BatchResult, ProjectionStore
from esflow.settings import ProjectionSettings, TopicSettings


def event_topics(projection: Projection[Any], topics: TopicSettings) -> tuple[str, ...]:
    """The topics a projection reads (its aggregates' event topics, or process state topics), prefixed."""
    return tuple(source_topic(source, topics) for source in projection.aggregates)


@dataclass(frozen=True)
class Member:
    """One projection a worker serves: the projection and the store of the version it serves."""

    projection: Projection[Any]
    store: ProjectionStore


class SharedDecoder:
    """Decodes each record of a batch once for all the projections that read it.

    :meth:`load` decodes a batch before the projections' appliers run; each of them then gets the same
    decoded envelope, or the same decoding error (which it dead-letters or halts on by its own policy).
    A record not loaded is decoded on the spot.
    """

    def __init__(self, decoder: Decoder[Any]) -> None:
        self.decoder = decoder
        self._done: dict[tuple[str, int, int], Decoded[Any] | Exception] = {}

    def load(self, raws: Sequence[RawEvent]) -> None:
        """Decode ``raws``, replacing the previous batch (whose appliers have all finished)."""
        done: dict[tuple[str, int, int], Decoded[Any] | Exception] = {}
        decode = self.decoder
        for raw in raws:
            if raw.value is None:  # a tombstone: prepare() rejects it before decoding
                continue
            try:
                done[(raw.topic, raw.partition, raw.offset)] = decode(raw)
            except Exception as exc:  # every projection reading it rejects it in prepare()
                done[(raw.topic, raw.partition, raw.offset)] = exc
        self._done = done

    def __call__(self, raw: RawEvent) -> Decoded[Any]:
        """The decoded record (raising its decoding error), from the loaded batch when it is there."""
        hit = self._done.get((raw.topic, raw.partition, raw.offset))
        if hit is None:
            return self.decoder(raw)
        if isinstance(hit, Exception):
            raise hit
        return hit


class FanOut:
    """The appliers of several projections fed from one stream of batches.

    Also usable where one :class:`~esflow.readmodel.applier.BatchApplier` is expected (the bulk
    replayer): :meth:`process` applies a batch through every projection, one after another, and
    :attr:`halted` lists the partitions any of them halted.
    """

    def __init__(
        self,
        members: Sequence[Member],
        decoder: Decoder[Any],
        settings: ProjectionSettings,
        topics: TopicSettings,
        *,
        observer: Observer | None = None,
    ) -> None:
        if not members:
            raise ValueError("a projection worker needs at least one projection")
        self.members = list(members)
        # One projection decodes inside its applier, as it always did; several share each decoded record.
        self.shared = SharedDecoder(decoder) if len(members) > 1 else None
        self.reads = {m.projection.name: frozenset(event_topics(m.projection, topics)) for m in members}
        self.appliers = {
            m.projection.name: BatchApplier(
                m.store, m.projection, self.shared or decoder, settings, observer=observer
            )
            for m in members
        }
        self.topics = tuple(dict.fromkeys(t for m in members for t in event_topics(m.projection, topics)))
        """Every topic any of the projections reads, each once."""

    @property
    def name(self) -> str:
        """The projections' names, for logs."""
        return "+".join(self.appliers)

    def load(self, raws: Sequence[RawEvent]) -> None:
        """Decode a batch once for all the projections (nothing to do for one projection)."""
        if self.shared is not None:
            self.shared.load(raws)

    def shares(
        self, raws: list[RawEvent], lag: Mapping[TP, int]
    ) -> list[tuple[BatchApplier, list[RawEvent], dict[TP, int]]]:
        """Each projection's applier with the records of the topics it reads and their lags (if any)."""
        if len(self.appliers) == 1:
            return [(next(iter(self.appliers.values())), raws, dict(lag))]
        out = []
        for name, applier in self.appliers.items():
            reads = self.reads[name]
            mine = [r for r in raws if r.topic in reads]
            if mine:
                out.append((applier, mine, {tp: v for tp, v in lag.items() if tp[0] in reads}))
        return out

    def lowest_checkpoints(self, tps: set[TP]) -> dict[TP, int]:
        """Per partition, the lowest checkpoint of the projections reading it (-1: one has none).

        A shared consumer reads from there; the projections further ahead skip what they applied.
        """
        lowest: dict[TP, int] = {}
        for member in self.members:
            name = member.projection.name
            mine = {tp for tp in tps if tp[0] in self.reads[name]}
            if not mine:
                continue
            done = member.store.checkpoints(name, mine)
            for tp in mine:
                lowest[tp] = min(lowest.get(tp, done.get(tp, -1)), done.get(tp, -1))
        return lowest

    def process(self, raws: Sequence[RawEvent], *, lag: Mapping[TP, int] | None = None) -> BatchResult:
        """Apply a batch through every projection, one after another; the results added up.

        The checkpoints of the result are the lowest per partition (what all of them have applied).
        """
        raws = list(raws)
        self.load(raws)
        total = BatchResult()
        for applier, mine, their_lag in self.shares(raws, lag or {}):
            result = applier.process(mine, lag=their_lag)
            total.applied += result.applied
            total.skipped += result.skipped
            total.dead_lettered += result.dead_lettered
            total.halted.update(result.halted)
            for tp, offset in result.checkpoints.items():
                total.checkpoints[tp] = min(total.checkpoints.get(tp, offset), offset)
        return total

    @property
    def halted(self) -> dict[TP, str]:
        """Partitions any projection halted, with the reason."""
        out: dict[TP, str] = {}
        for name, applier in self.appliers.items():
            out.update({tp: f"{name}: {why}" for tp, why in applier.halted.items()})
        return out

    def stop(self) -> None:
        """Make every applier's waiting retries give up (the worker is shutting down)."""
        for applier in self.appliers.values():
            applier.stop()

    def dispose_inherited(self) -> None:
        """In a forked process: forget the parent's pooled connections (they belong to the parent)."""
        for member in self.members:
            member.store.engine.dispose(close=False)
