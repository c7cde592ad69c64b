"""Every projection by name, and the decoder that feeds them from the Avro codec."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from esflow.domain.messages import EventEnvelope
from esflow.errors import MisroutedRecord, UnknownProjection
from esflow.messaging.codec import Codec
from esflow.readmodel.projection import Decoded, Projection, RawEvent
from projections.account_balances import AccountBalancesProjection
from projections.customer_order_stats import CustomerOrderStatsProjection
from projections.daily_revenue import DailyRevenueProjection
from projections.event_log import EventLogProjection
from projections.order_items import OrderItemsProjection
from projections.orders import OrdersProjection
from projections.product_catalog import ProductCatalogProjection

PROJECTIONS: Mapping[str, Callable[[], Projection[Any]]] = {
    "orders": OrdersProjection,
    "order_items": OrderItemsProjection,
    "customer_order_stats": CustomerOrderStatsProjection,
    "product_catalog": ProductCatalogProjection,
    "account_balances": AccountBalancesProjection,
    "daily_revenue": DailyRevenueProjection,
    "event_log": EventLogProjection,
}
"""Factories of the reference domain's projections, by name (also the read-model table's name)."""


def get(name: str) -> Projection[Any]:
    """A new instance of the projection called ``name``."""
    factory = PROJECTIONS.get(name)
    if factory is None:
        raise UnknownProjection(f"no projection {name!r}", hint=f"known: {', '.join(PROJECTIONS)}")
    return factory()


class EnvelopeDecoder:
    """Decodes event records with the codec (upcast to the newest models) into envelopes."""

    def __init__(self, codec: Codec) -> None:
        self.codec = codec

    def __call__(self, raw: RawEvent) -> Decoded[EventEnvelope]:
        """The envelope in ``raw``; codec errors name the record's topic, partition and offset.

        An event is applied only where it belongs: on its aggregate type's event topic, keyed by its
        aggregate id. Anything else (an event produced by hand to the wrong topic or under another key)
        raises :class:`MisroutedRecord` and is dead-lettered, so a record cannot change the rows of an
        aggregate it does not belong to.
        """
        envelope = self.codec.decode(
            raw.value or b"", kind="event", topic=raw.topic, partition=raw.partition, offset=raw.offset
        )
        meta = envelope.metadata
        if (
            not raw.topic.endswith(f"events.{meta.aggregate_type}")
            or raw.key != str(meta.aggregate_id).encode()
        ):
            raise MisroutedRecord(
                f"a {meta.aggregate_type} event of {meta.aggregate_id} under key {raw.key!r}",
                topic=raw.topic, partition=raw.partition, offset=raw.offset,
            )  # fmt: skip
        return Decoded(raw, envelope.event.type_name(), meta.occurred_at, envelope)
