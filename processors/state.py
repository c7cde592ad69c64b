"""In-memory aggregate state of the assigned partitions, and its snapshot format.

One :class:`PartitionCache` per assigned (aggregate type, partition). Records are immutable: a batch
works on new records and only replaces the cached ones after its transaction committed, so an aborted
batch leaves the cache exactly as the last committed transaction left it.

Snapshot value (JSON, one per aggregate, compacted topic keyed by aggregate id)::

    {"f": 2, "type": "order", "id": "<uuid>", "version": 5, "last_event_offset": 812,
     "events": ["<events topic>", <partition>], "lens": [<byte length of each recent entry>, ...],
     "state": {...the aggregate's state model...} | null,
     "recent": [<entry>, ...]}      # the idempotency window, oldest first

An entry is a rejected command's ``CommandResult`` JSON, or an accepted command's result in compact
form, ``["a", command_id, version, correlation_id | null, processed_at, [[event_id, type,
aggregate_version, offset], ...]]``: everything else an accepted result says (type, id, events topic,
partition) is the snapshot's own. The full JSON is rebuilt only when a duplicate asks for it. With a
full window of 32 this halves what every command writes to the snapshot topic. Format 1 (every entry
full JSON, no "events") is still read.

Every snapshot also carries the header ``esflow-events-until``: the highest event offset the processor
had written to the co-partitioned event partition when it wrote the snapshot. Restore reads the whole
snapshot partition but only keeps the raw bytes (records are decoded when an aggregate is first used),
then folds the event partition after that offset: normally nothing, everything when the snapshot topic
was lost.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from esflow.domain.aggregates import Aggregate
from esflow.errors import RestoreError
from esflow.messaging.results import AppendedEvent, accepted_json, json_string

SNAPSHOT_FORMAT = 2
_READABLE_FORMATS = (1, 2)
HEADER_EVENTS_UNTIL = "esflow-events-until"


class ResultSlot:
    """A command result: its JSON (as ``command-results`` holds it) and its snapshot entry.

    The processor fills both in after the batch's events have offsets. A slot read from a snapshot holds
    only the entry; the JSON of a compact (accepted) entry is rebuilt on first use.
    """

    __slots__ = ("_context", "_data", "entry")

    def __init__(
        self,
        data: bytes | None = None,
        entry: bytes | None = None,
        context: tuple[str, str, str, int] | None = None,
    ) -> None:
        self._data = data
        self.entry = entry if entry is not None else data
        """What the snapshot's window holds for this result (a plain attribute: read 32 times a snapshot)."""
        self._context = context
        """(aggregate type, aggregate id, events topic, partition) of a compact entry."""

    @property
    def data(self) -> bytes | None:
        """The result's JSON (None until the batch fills it in)."""
        if self._data is None and self.entry is not None and self._context is not None:
            self._data = _expand(self.entry, self._context)
        return self._data

    def fill(self, data: bytes, entry: bytes | None = None) -> None:
        """Set the result's JSON and, when it has a compact form, that form."""
        self._data = data
        self.entry = entry if entry is not None else data


def compact_entry(
    command_id: str,
    version: int,
    correlation_id: str | None,
    processed_at: bytes,
    events: Sequence[AppendedEvent],
) -> bytes:
    """The snapshot entry of an accepted result; ``processed_at`` is its JSON string.

    Each event's topic and partition are the snapshot's own and are left out.
    """
    refs = b",".join(
        [b'["%s",%s,%d,%d]' % (e.event_id.encode(), json_string(e.type), e.aggregate_version, e.offset)
         for e in events]
    )  # fmt: skip
    corr = b"null" if correlation_id is None else b'"' + correlation_id.encode() + b'"'
    return b'["a","%s",%d,%s,%s,[%s]]' % (command_id.encode(), version, corr, processed_at, refs)


def _expand(entry: bytes, context: tuple[str, str, str, int]) -> bytes:
    """The result JSON of a compact entry."""
    aggregate_type, aggregate_id, topic, partition = context
    _tag, command_id, version, correlation_id, processed_at, refs = json.loads(entry)
    return accepted_json(
        command_id=command_id,
        aggregate_type=aggregate_type,
        aggregate_id=aggregate_id,
        version=version,
        events=[AppendedEvent(e, t, v, topic, partition, o) for e, t, v, o in refs],
        correlation_id=correlation_id,
        processed_at=json.dumps(processed_at).encode(),
    )


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

    def to_snapshot(self, aggregate: Aggregate[Any], events_topic: str, partition: int) -> bytes:
        """The snapshot value (every result slot must be filled); events go to ``events_topic[partition]``."""
        state = b"null" if self.state is None else self.state.model_dump_json().encode()
        entries = [slot.entry or b"null" for _, slot in self.recent]
        # Byte lengths of the entries at the end: restore slices them out instead of re-encoding.
        lens = b",".join([b"%d" % len(d) for d in entries])
        head = (
            b'{"f":%d,"type":%s,"id":%s,"version":%d,"last_event_offset":%d,'
            b'"events":[%s,%d],"lens":[%s],"state":'
        ) % (
            SNAPSHOT_FORMAT, json_string(aggregate.aggregate_type), json_string(self.aggregate_id),
            self.version, self.last_event_offset, json_string(events_topic), partition, lens,
        )  # fmt: skip
        return b"".join([head, state, b',"recent":[', b",".join(entries), b"]}"])

    @classmethod
    def from_snapshot(cls, aggregate: Aggregate[Any], data: bytes) -> AggregateRecord:
        """Parse a snapshot value written by :meth:`to_snapshot`."""
        try:
            doc = json.loads(data)
            if doc.get("f") not in _READABLE_FORMATS or doc.get("type") != aggregate.aggregate_type:
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
            aggregate_id = str(doc["id"])
            context: tuple[str, str, str, int] | None = None
            if "events" in doc:
                topic, partition = doc["events"]
                context = (aggregate.aggregate_type, aggregate_id, str(topic), int(partition))
            recent_list: list[tuple[str, ResultSlot]] = []
            for r, raw in zip(results, raws, strict=True):
                if isinstance(r, list):  # compact accepted entry
                    if r[0] != "a" or context is None:
                        raise ValueError(f"unknown window entry {r[0]!r}")
                    recent_list.append((str(r[1]), ResultSlot(entry=raw, context=context)))
                else:
                    recent_list.append((str(r["command_id"]), ResultSlot(raw)))
            recent = tuple(recent_list)
            return cls(
                aggregate_id=aggregate_id,
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
        if record.aggregate_id != aggregate_id:
            # A compacted topic keeps the last record per key, whoever wrote it: a snapshot of another
            # aggregate under this key must not become this aggregate's state.
            raise RestoreError(
                f"the {self.aggregate.aggregate_type} snapshot under key {aggregate_id} "
                f"is of {record.aggregate_id}"
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
