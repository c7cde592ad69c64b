"""In-memory aggregate state of the assigned partitions, and its snapshot format.

One :class:`PartitionCache` per assigned (aggregate type, partition). Records are immutable: a batch
works on new records and only replaces the cached ones after its transaction committed, so an aborted
batch leaves the cache exactly as the last committed transaction left it.

Snapshot value (JSON, one per aggregate, compacted topic keyed by aggregate id)::

    {"f": 1, "type": "order", "id": "<uuid>", "version": 5, "last_event_offset": 812,
     "state": {...the aggregate's state model...} | null,
     "recent": [<CommandResult JSON>, ...]}      # the idempotency window, oldest first

Every snapshot also carries the header ``esflow-events-until``: the highest event offset the processor
had written to the co-partitioned event partition when it wrote the snapshot. Restore reads the whole
snapshot partition but only keeps the raw bytes (records are decoded when an aggregate is first used),
then folds the event partition after that offset: normally nothing, everything when the snapshot topic
was lost.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from esflow.domain.aggregates import Aggregate
from esflow.errors import RestoreError

SNAPSHOT_FORMAT = 1
HEADER_EVENTS_UNTIL = "esflow-events-until"
_IDENTIFIER = re.compile(r"[A-Za-z0-9_.:-]*")


def _json_str(value: str) -> str:
    # Aggregate ids are UUIDs and types are names: nothing to escape, so skip json.dumps for them.
    return f'"{value}"' if _IDENTIFIER.fullmatch(value) else json.dumps(value)


class ResultSlot:
    """A command result's bytes; filled in after the batch's events have offsets."""

    __slots__ = ("data",)

    def __init__(self, data: bytes | None = None) -> None:
        self.data = data


@dataclass(frozen=True, slots=True)
class AggregateRecord:
    """One aggregate as the processor keeps it: version, state, last event offset, recent results."""

    aggregate_id: str
    version: int = 0
    state: Any = None
    last_event_offset: int = -1
    recent: tuple[tuple[str, ResultSlot], ...] = ()

    def find(self, command_id: str) -> ResultSlot | None:
        """The stored result of ``command_id`` when it is still in the window."""
        for cid, slot in reversed(self.recent):
            if cid == command_id:
                return slot
        return None

    def remember(self, command_id: str, slot: ResultSlot, window: int) -> AggregateRecord:
        """A copy with ``command_id``'s result added, the oldest dropped beyond ``window``."""
        recent = (*self.recent, (command_id, slot))
        if len(recent) > window:
            recent = recent[-window:]
        return AggregateRecord(self.aggregate_id, self.version, self.state, self.last_event_offset, recent)

    def to_snapshot(self, aggregate: Aggregate[Any]) -> bytes:
        """The snapshot value (every result slot must be filled)."""
        state = b"null" if self.state is None else self.state.model_dump_json().encode()
        datas = [slot.data or b"null" for _, slot in self.recent]
        results = b",".join(datas)
        # Byte lengths of the results at the end: restore slices them out instead of re-encoding.
        lens = ",".join([str(len(d)) for d in datas])
        head = (
            f'{{"f":{SNAPSHOT_FORMAT},"type":{_json_str(aggregate.aggregate_type)},'
            f'"id":{_json_str(self.aggregate_id)},"version":{self.version:d},'
            f'"last_event_offset":{self.last_event_offset:d},"lens":[{lens}]'
        ).encode()
        return head + b',"state":' + state + b',"recent":[' + results + b"]}"

    @classmethod
    def from_snapshot(cls, aggregate: Aggregate[Any], data: bytes) -> AggregateRecord:
        """Parse a snapshot value written by :meth:`to_snapshot`."""
        try:
            doc = json.loads(data)
            if doc.get("f") != SNAPSHOT_FORMAT or doc.get("type") != aggregate.aggregate_type:
                raise ValueError(f"snapshot format {doc.get('f')!r} of type {doc.get('type')!r}")
            raw_state = doc["state"]
            state = None if raw_state is None else aggregate.state_type.model_validate(raw_state)
            results = doc["recent"]
            lens = doc.get("lens")
            if isinstance(lens, list) and len(lens) == len(results):
                # The results array closes the document: ``...,"recent":[r1,r2]}``.
                pos = len(data) - 2 - (sum(lens) + max(len(lens) - 1, 0))
                raws = []
                for n in lens:
                    raws.append(bytes(data[pos : pos + n]))
                    pos += n + 1
            else:
                raws = [json.dumps(r, separators=(",", ":")).encode() for r in results]
            recent = tuple(
                (str(r["command_id"]), ResultSlot(raw)) for r, raw in zip(results, raws, strict=True)
            )
            return cls(
                aggregate_id=str(doc["id"]),
                version=int(doc["version"]),
                state=state,
                last_event_offset=int(doc["last_event_offset"]),
                recent=recent,
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise RestoreError(f"unreadable {aggregate.aggregate_type} snapshot: {exc}") from exc


class PartitionCache:
    """The aggregates of one assigned partition: raw snapshots until first use, then records."""

    def __init__(self, aggregate: Aggregate[Any], partition: int) -> None:
        self.aggregate = aggregate
        self.partition = partition
        self._raw: dict[str, bytes] = {}
        self._records: dict[str, AggregateRecord] = {}
        self.events_until = -1
        """Highest event offset written to the co-partitioned event partition (-1: none)."""

    def __len__(self) -> int:
        return len(self._raw) + len(self._records)

    def load_raw(self, aggregate_id: str, snapshot: bytes | None) -> None:
        """Keep a snapshot's bytes for later (``None``, a tombstone, forgets the aggregate)."""
        self._records.pop(aggregate_id, None)
        if snapshot is None:
            self._raw.pop(aggregate_id, None)
        else:
            self._raw[aggregate_id] = snapshot

    def get(self, aggregate_id: str) -> AggregateRecord:
        """The committed record of an aggregate (a fresh one at version 0 when it has none)."""
        record = self._records.get(aggregate_id)
        if record is not None:
            return record
        raw = self._raw.pop(aggregate_id, None)
        record = (
            AggregateRecord(aggregate_id)
            if raw is None
            else AggregateRecord.from_snapshot(self.aggregate, raw)
        )
        self._records[aggregate_id] = record
        return record

    def put(self, record: AggregateRecord) -> None:
        """Replace an aggregate's record (after its transaction committed)."""
        self._records[record.aggregate_id] = record

    def decoded(self) -> Iterator[AggregateRecord]:
        """Every record, decoding the raw ones (tests and tools; the processor never needs it)."""
        for aggregate_id in list(self._raw):
            self.get(aggregate_id)
        yield from self._records.values()
