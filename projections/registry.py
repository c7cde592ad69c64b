"""Every projection by name with its read model, and the decoder that feeds them (events, process states).

Registering a projection here is the one step besides writing its module: `esflow db migrate`, the
``bi`` views, ``docs/bi.md`` (``python -m projections.bidocs``) and the workers all find it here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import sqlalchemy as sa

from esflow.domain.messages import EventEnvelope
from esflow.errors import MisroutedRecord, UnknownProjection
from esflow.messaging.codec import Codec
from esflow.messaging.process_records import InstanceRecord
from esflow.readmodel import tables
from esflow.readmodel.contract import PROJECTION_STATUS, View
from esflow.readmodel.migrations import ReadModelDDL
from esflow.readmodel.model import ReadModel
from esflow.readmodel.projection import Decoded, Projection, RawEvent
from projections.account_balances import AccountBalancesProjection
from projections.customer_order_stats import CustomerOrderStatsProjection
from projections.daily_revenue import DailyRevenueProjection
from projections.event_log import EventLogProjection
from projections.order_items import OrderItemsProjection
from projections.orders import OrdersProjection
from projections.process_instances import RECORD_TYPE, ProcessInstancesProjection
from projections.product_catalog import ProductCatalogProjection

PROJECTIONS: Mapping[str, Callable[[], Projection[Any]]] = {
    p.name: p
    for p in (
        OrdersProjection,
        OrderItemsProjection,
        CustomerOrderStatsProjection,
        ProductCatalogProjection,
        AccountBalancesProjection,
        DailyRevenueProjection,
        EventLogProjection,
        ProcessInstancesProjection,
    )
}
"""Factories of the reference domain's projections, by name (also their read model's and main view's)."""


def get(name: str) -> Projection[Any]:
    """A new instance of the projection called ``name``."""
    factory = PROJECTIONS.get(name)
    if factory is None:
        raise UnknownProjection(f"no projection {name!r}", hint=f"known: {', '.join(PROJECTIONS)}")
    return factory()


def read_models() -> list[ReadModel]:
    """The read model of every registered projection, in registry order."""
    return [factory().read_model for factory in PROJECTIONS.values()]


def newest_ddl() -> list[ReadModelDDL]:
    """Every read model's DDL at its newest code version (a schema with all of them: tests, benches)."""
    return [model.newest for model in read_models()]


def views() -> list[tuple[View, sa.Table]]:
    """Every view of the ``bi`` schema with the table it selects from: the read models', then freshness."""
    out = [(view, model.table(view.table)) for model in read_models() for view in model.views]
    return [*out, (PROJECTION_STATUS, tables.status)]


def view(name: str) -> View:
    """The view called ``name``; a :class:`ValueError` naming the known views otherwise."""
    known = {v.name: v for v, _ in views()}
    try:
        return known[name]
    except KeyError:
        raise ValueError(f"no BI view {name!r}; the views are: {', '.join(known)}") from None


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


class SourceDecoder(EnvelopeDecoder):
    """Decodes every projection source: events, and the instance records of process state topics.

    Events as :class:`EnvelopeDecoder`; the records of ``process.<name>.state`` for
    ``process_instances``. One decoder for both, because a projector host decodes each record once for
    all the projections it serves, whatever topic it comes from.
    """

    def __call__(self, raw: RawEvent) -> Decoded[Any]:
        """An envelope, or an :class:`InstanceRecord` typed ``ProcessInstance`` from a state topic.

        A state record is applied only where it belongs: on its own process's state topic, keyed by its
        instance id (what the runtime writes); anything else raises :class:`MisroutedRecord`.
        """
        if not raw.topic.endswith(".state"):
            return super().__call__(raw)
        record = InstanceRecord.from_bytes(raw.value or b"")
        if (
            not raw.topic.endswith(f"process.{record.process}.state")
            or raw.key != str(record.instance_id).encode()
        ):
            raise MisroutedRecord(
                f"a {record.process} instance record of {record.instance_id} under key {raw.key!r}",
                topic=raw.topic, partition=raw.partition, offset=raw.offset,
            )  # fmt: skip
        return Decoded(raw, RECORD_TYPE, record.updated_at, record)
