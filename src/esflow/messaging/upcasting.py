"""Code upcasters: the schema changes Avro resolution cannot express.

Avro resolution handles structural evolution (a new field with a default, a widened int). A semantic
change (integer cents becoming a decimal with a currency) needs code. An upcaster turns the record dict of
version N into the record dict of version N+1; the codec runs them in a loop, as pyeventsourcing's
``Mapper`` does with ``upcast_vN_vN+1`` methods, until the newest version is reached, so the domain only
ever sees the newest shape.

Upcasters work on plain dicts (the Avro record, ``metadata`` included), never on domain models: a model
exists only for the newest version. They must be pure and must not mutate their input.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any

Record = dict[str, Any]
Upcaster = Callable[[Mapping[str, Any]], Record]


class UpcasterRegistry:
    """Upcasters by (type name, from-version)."""

    def __init__(self) -> None:
        self._steps: dict[tuple[str, int], Upcaster] = {}

    def register(self, type_name: str, from_version: int) -> Callable[[Upcaster], Upcaster]:
        """Decorator: ``fn`` turns a ``type_name`` record of ``from_version`` into ``from_version + 1``."""

        def decorate(fn: Upcaster) -> Upcaster:
            key = (type_name, from_version)
            if key in self._steps:
                raise ValueError(f"an upcaster for {type_name} v{from_version} is already registered")
            self._steps[key] = fn
            return fn

        return decorate

    def get(self, type_name: str, from_version: int) -> Upcaster | None:
        """The upcaster for one step, or None when Avro resolution handles it."""
        return self._steps.get((type_name, from_version))

    def steps(self) -> dict[str, list[int]]:
        """For each type, the versions N whose step N -> N+1 is an upcaster."""
        out: dict[str, list[int]] = {}
        for name, version in sorted(self._steps):
            out.setdefault(name, []).append(version)
        return out


DEFAULT_UPCASTERS = UpcasterRegistry()
"""The upcasters of the reference domain."""

LEGACY_PRICE_CURRENCY = "EUR"
"""The currency of every v1 PriceChanged: the shop sold in euros only before prices carried one."""


@DEFAULT_UPCASTERS.register("PriceChanged", 1)
def upcast_price_changed_v1_v2(record: Mapping[str, Any]) -> Record:
    """PriceChanged v1 (``price_cents`` integer euro cents) -> v2 (``price``: decimal amount + currency)."""
    out = {k: v for k, v in record.items() if k != "price_cents"}
    # scaleb keeps the value exact; a float division would not be.
    out["price"] = {
        "amount": Decimal(int(record["price_cents"])).scaleb(-2),
        "currency": LEGACY_PRICE_CURRENCY,
    }
    return out
