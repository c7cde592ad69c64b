"""Event ids drawn in blocks are RFC 4122 version-4 UUIDs in canonical form, and never repeat."""

from __future__ import annotations

import uuid

from processors.step import _EventIds


def test_event_ids_are_canonical_random_uuids_across_blocks() -> None:
    ids = _EventIds()
    drawn = [ids.next() for _ in range(3 * _EventIds.BLOCK + 5)]
    assert len(set(drawn)) == len(drawn)
    for text in drawn:
        parsed = uuid.UUID(text)
        assert str(parsed) == text
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122
