"""Codec throughput: encode and decode records/s for a typical OrderPlaced (3 items).

Run: ``.venv/bin/python -m ops.bench.codec [--n 50000]``. Every figure is measured in the same run,
single-threaded, best of ``--repeat`` rounds:

- ``esflow codec``: the real path, envelope -> single-object bytes -> envelope (pydantic dump, fastavro,
  framing; on decode the compiled reader of the newest schema, then one pydantic-core validation of the
  whole envelope, every field and constraint of the models);
- ``esflow full path``: decoding as the codec does for older versions and for whatever the fast path
  refuses (fastavro's ``schemaless_reader``, then ``model_validate`` per model), for comparison;
- ``esflow records``: the same bytes to and from plain dicts (``encode_record`` / ``decode_record``), so
  the cost of the pydantic models can be read off;
- baselines on the same record as a dict (JSON form: uuids, decimals and times as strings):
  ``json`` and ``orjson`` dumps/loads, and ``orjson + pydantic`` (loads then the same model validation),
  the fair comparison for the full codec path.

Target (issue 3): decode >= 100k records/s.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson

from esflow.domain.messages import EventEnvelope, EventMetadata
from esflow.domain.order import OrderPlaced
from esflow.domain.values import Address, Money, OrderItem, SalesChannel
from esflow.messaging.codec import Codec
from esflow.messaging.schemas import SchemaCatalog

TARGET_DECODE = 100_000


def typical_order() -> EventEnvelope:
    """An OrderPlaced with three lines, as a shop writes it."""
    metadata = EventMetadata(
        event_id=uuid.uuid4(),
        aggregate_type="order",
        aggregate_id=uuid.uuid4(),
        aggregate_version=1,
        occurred_at=datetime.now(UTC),
        command_id=uuid.uuid4(),
        correlation_id=uuid.uuid4(),
        causation_id=uuid.uuid4(),
    )
    items = tuple(
        OrderItem(
            product_id=uuid.uuid4(),
            sku=f"BOOK-{1000 + i}",
            quantity=i + 1,
            unit_price=Money(amount=Decimal("12.90") + i, currency="EUR"),
        )
        for i in range(3)
    )
    event = OrderPlaced(
        customer_id=uuid.uuid4(),
        items=items,
        shipping_address=Address(
            recipient="Ada Lovelace",
            line1="12 St James's Square",
            city="London",
            postal_code="SW1Y 4JH",
            country="GB",
        ),
        sales_channel=SalesChannel.WEB,
    )
    return EventEnvelope(metadata=metadata, event=event)


def rate(
    fn: Callable[[], object], n: int, repeat: int, clock: Callable[[], float] = time.perf_counter
) -> float:
    """Best-of-``repeat`` calls per second of ``fn``."""
    best = float("inf")
    for _ in range(repeat):
        start = clock()
        for _ in range(n):
            fn()
        best = min(best, clock() - start)
    return n / best


def main(argv: list[str] | None = None) -> int:
    """Print the table; exit 0 (the target is reported, not enforced: machines differ)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50_000, help="records per round")
    parser.add_argument("--repeat", type=int, default=3, help="rounds; the best one counts")
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="wall time, or this process's CPU time (steadier on a shared, loaded machine)",
    )
    args = parser.parse_args(argv)
    clock = time.perf_counter if args.clock == "wall" else time.process_time

    codec = Codec(SchemaCatalog.load(Path(__file__).resolve().parents[2] / "schemas"))
    envelope = typical_order()
    record: dict[str, Any] = {"metadata": envelope.metadata.model_dump(), **envelope.event.model_dump()}
    json_dict: dict[str, Any] = {
        "metadata": envelope.metadata.model_dump(mode="json"),
        **envelope.event.model_dump(mode="json"),
    }
    avro = codec.encode(envelope)
    as_json = json.dumps(json_dict).encode()
    as_orjson = orjson.dumps(json_dict)
    assert codec.decode(avro) == envelope

    # The path the codec takes for what its compiled readers/writers refuse (and for older versions):
    # fastavro, and model-by-model validation (the reference path, without esflow.messaging.compiled).
    reference = Codec(codec.catalog, compiled=False)

    def full_encode() -> bytes:
        return reference.encode(envelope)

    def full_decode() -> object:
        return reference.decode(avro)

    assert full_encode() == avro and full_decode() == envelope

    def orjson_pydantic() -> object:
        d = orjson.loads(as_orjson)
        return EventEnvelope(
            metadata=EventMetadata.model_validate(d.pop("metadata")), event=OrderPlaced.model_validate(d)
        )

    rows = [
        ("esflow codec (envelope)", len(avro), lambda: codec.encode(envelope), lambda: codec.decode(avro)),
        ("esflow full path", len(avro), full_encode, full_decode),
        (
            "esflow records (dict)",
            len(avro),
            lambda: codec.encode_record("OrderPlaced", record),
            lambda: codec.decode_record(avro),
        ),
        ("json (dict)", len(as_json), lambda: json.dumps(json_dict).encode(), lambda: json.loads(as_json)),
        ("orjson (dict)", len(as_orjson), lambda: orjson.dumps(json_dict), lambda: orjson.loads(as_orjson)),
        (
            "orjson + pydantic",
            len(as_orjson),
            lambda: orjson.dumps(envelope.model_dump(mode="json")),
            orjson_pydantic,
        ),
    ]
    print(
        f"OrderPlaced, 3 items; {args.n} records x best of {args.repeat}, {args.clock} clock; "
        f"python {sys.version.split()[0]}"
    )
    print(f"{'format':<26}{'bytes':>7}{'encode rec/s':>15}{'decode rec/s':>15}{'decode us':>11}")
    results: dict[str, float] = {}
    for name, size, encode, decode in rows:
        enc = rate(encode, args.n, args.repeat, clock)
        dec = rate(decode, args.n, args.repeat, clock)
        results[name] = dec
        print(f"{name:<26}{size:>7}{enc:>15,.0f}{dec:>15,.0f}{1e6 / dec:>11.1f}")
    full = results["esflow codec (envelope)"]
    verdict = "met" if full >= TARGET_DECODE else "NOT met"
    print(f"target decode >= {TARGET_DECODE:,} rec/s (full codec path): {verdict} ({full:,.0f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
