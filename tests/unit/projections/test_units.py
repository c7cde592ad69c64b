"""Units of the projections that need no server: error classes, decoding, folds, the Faust consumer."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import uuid4

import psycopg
import pytest
import sqlalchemy.exc as sa_exc
from click.testing import CliRunner

from esflow.cli import cli
from esflow.domain.messages import Event, EventEnvelope, EventMetadata
from esflow.domain.order import OrderItemAdded, OrderItemRemoved, OrderPaid, OrderPlaced, OrderRefunded
from esflow.domain.values import Address, Money, OrderItem
from esflow.messaging.codec import Codec
from esflow.readmodel.applier import is_transient
from esflow.readmodel.migrations import MIGRATIONS
from esflow.readmodel.projection import Decoded, RawEvent, Rejected, prepare, records_left
from esflow.settings import KafkaSettings, PostgresSettings, ProjectionSettings, TopicSettings
from projections import orders, registry, runtime
from projections.transport import ISOLATION_LEVEL, CheckpointSeekingConsumer, ReadCommittedConsumerThread

CODEC = Codec.from_settings()
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def _env(event: Event, aggregate: Any, version: int) -> EventEnvelope:
    return EventEnvelope(
        metadata=EventMetadata(
            event_id=uuid4(),
            aggregate_type=event.aggregate_type,
            aggregate_id=aggregate,
            aggregate_version=version,
            occurred_at=T0 + timedelta(minutes=version),
            command_id=uuid4(),
            correlation_id=uuid4(),
            causation_id=uuid4(),
        ),
        event=event,
    )


def _item(price: str, quantity: int) -> OrderItem:
    return OrderItem(
        product_id=uuid4(),
        sku="S",
        quantity=quantity,
        unit_price=Money(amount=Decimal(price), currency="EUR"),
    )


def test_every_read_model_has_a_projection_and_migrations_have_no_gaps() -> None:
    assert [m.name for m in registry.read_models()] == list(registry.PROJECTIONS)
    assert [m.version for m in MIGRATIONS] == list(range(1, len(MIGRATIONS) + 1))
    for name in registry.PROJECTIONS:
        projection = registry.get(name)
        assert projection.name == name and projection.aggregates


def test_transient_failures_are_retried_and_bugs_are_not() -> None:
    op = sa_exc.OperationalError("SELECT 1", {}, psycopg.OperationalError("server closed the connection"))
    assert is_transient(op)
    deadlock = sa_exc.OperationalError("UPDATE", {}, psycopg.errors.DeadlockDetected("deadlock"))
    assert is_transient(deadlock)
    missing = sa_exc.ProgrammingError("SELECT", {}, psycopg.errors.UndefinedTable("no table"))
    assert is_transient(missing)
    unique = sa_exc.IntegrityError("INSERT", {}, psycopg.errors.UniqueViolation("dup"))
    assert not is_transient(unique)
    assert not is_transient(sa_exc.DataError("INSERT", {}, psycopg.errors.NumericValueOutOfRange("big")))
    assert not is_transient(KeyError("bug in a projection"))
    # The same, raised by the psycopg connection itself (the store's BEGIN/lock and progress/COMMIT).
    assert is_transient(psycopg.errors.DeadlockDetected("deadlock"))
    assert is_transient(psycopg.errors.AdminShutdown("terminating connection"))
    assert is_transient(psycopg.errors.UndefinedTable("no table"))
    assert not is_transient(psycopg.errors.UniqueViolation("dup"))
    assert not is_transient(psycopg.errors.CheckViolation("status"))
    assert not is_transient(psycopg.errors.NumericValueOutOfRange("big"))


def test_prepare_turns_bad_input_into_rejections_in_place() -> None:
    good = _env(
        OrderPlaced(customer_id=uuid4(), items=(_item("1.00", 1),), shipping_address=_address()), uuid4(), 1
    )
    raws = [
        RawEvent("events.order", 0, 0, CODEC.key(good), CODEC.encode(good)),
        RawEvent("events.order", 0, 1, b"k", b"junk"),
        RawEvent("events.order", 0, 2, b"k", None),
    ]
    items = prepare(registry.get("orders"), registry.EnvelopeDecoder(CODEC), raws)
    assert isinstance(items[0], Decoded) and items[0].type_name == "OrderPlaced"
    assert isinstance(items[1], Rejected) and items[1].error_type == "FramingError"
    assert "offset=1" in items[1].reason  # the codec names the record's position
    assert isinstance(items[2], Rejected) and items[2].error_type == "EmptyRecord"
    # A projection of another aggregate does not know order events.
    wrong = prepare(registry.get("product_catalog"), registry.EnvelopeDecoder(CODEC), raws[:1])
    assert isinstance(wrong[0], Rejected) and wrong[0].error_type == "UnknownEventType"


def test_an_event_is_applied_only_on_its_own_topic_and_key() -> None:
    good = _env(
        OrderPlaced(customer_id=uuid4(), items=(_item("1.00", 1),), shipping_address=_address()), uuid4(), 1
    )
    someone_else = str(uuid4()).encode()
    raws = [
        RawEvent("p.events.order", 0, 0, CODEC.key(good), CODEC.encode(good)),
        RawEvent("p.events.order", 0, 1, someone_else, CODEC.encode(good)),  # under another key
        RawEvent("p.events.account", 0, 0, CODEC.key(good), CODEC.encode(good)),  # on another topic
    ]
    items = prepare(registry.get("event_log"), registry.EnvelopeDecoder(CODEC), raws)
    assert isinstance(items[0], Decoded)
    for item in items[1:]:
        assert isinstance(item, Rejected) and item.error_type == "MisroutedRecord", item


def _address() -> Address:
    return Address(recipient="A", line1="L", city="Berlin", postal_code="1", country="DE")


def test_the_orders_fold_keeps_totals_through_added_and_removed_lines() -> None:
    order = uuid4()
    first, second = _item("10.00", 2), _item("2.50", 4)
    row = orders.fold(
        None, _env(OrderPlaced(customer_id=uuid4(), items=(first,), shipping_address=_address()), order, 1)
    )
    row = orders.fold(row, _env(OrderItemAdded(item=second), order, 2))
    assert (row["item_count"], row["items_total"]) == (6, Decimal("30.00"))
    row = orders.fold(row, _env(OrderItemRemoved(product_id=first.product_id), order, 3))
    assert (row["item_count"], row["items_total"]) == (4, Decimal("10.00"))
    row = orders.fold(
        row, _env(OrderPaid(payment_ref="p", amount=Money(amount=Decimal("10.00"), currency="EUR")), order, 4)
    )
    row = orders.fold(
        row, _env(OrderRefunded(amount=Money(amount=Decimal("4.00"), currency="EUR"), reason="r"), order, 5)
    )
    assert (row["status"], row["paid_amount"], row["refunded_amount"], row["version"]) == (
        "PAID",
        Decimal("10.00"),
        Decimal("4.00"),
        5,
    )
    assert row["paid_at"] == T0 + timedelta(minutes=4) and row["updated_at"] == T0 + timedelta(minutes=5)
    with pytest.raises(ValueError, match="before OrderPlaced"):
        orders.fold(None, _env(OrderItemAdded(item=second), uuid4(), 1))


def test_the_faust_consumer_is_read_committed_and_checkpoint_seeking() -> None:
    async def scenario() -> tuple[Any, Any, str]:
        built = runtime.build(
            registry.get("event_log"),
            registry.EnvelopeDecoder(CODEC),
            None,  # type: ignore[arg-type]  # the store is not touched before the worker starts
            kafka=KafkaSettings(bootstrap="127.0.0.1:1"),
            topics=TopicSettings(prefix="unit."),
            settings=ProjectionSettings(),
        )
        consumer: Any = built.app.consumer
        thread = consumer._thread
        created = thread._create_worker_consumer(built.app.transport)
        try:
            return consumer, thread, created._isolation_level
        finally:
            await created.stop()
            built.remove_datadir()

    consumer, thread, isolation = asyncio.run(scenario())
    assert isinstance(consumer, CheckpointSeekingConsumer)
    assert isinstance(thread, ReadCommittedConsumerThread)
    assert isolation == ISOLATION_LEVEL == "read_committed"


def test_projector_cli_lists_projections_and_refuses_unknown_ones() -> None:
    runner = CliRunner()
    listed = runner.invoke(cli, ["projector", "list"])
    assert listed.exit_code == 0 and listed.output.split() == list(registry.PROJECTIONS)
    bad = runner.invoke(cli, ["projector", "run", "nope"])
    assert bad.exit_code != 0 and "unknown projection" in bad.output


def test_projection_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ESFLOW_PROJECTION_BATCH_SIZE", "123")
    monkeypatch.setenv("ESFLOW_PROJECTION_ON_BAD_INPUT", "halt")
    monkeypatch.setenv("ESFLOW_PROJECTION_DB_SCHEMA", "bi")
    s = ProjectionSettings()
    assert (s.batch_size, s.on_bad_input, s.db_schema, s.metrics_port, s.web_port) == (
        123,
        "halt",
        "bi",
        0,
        0,
    )
    monkeypatch.setenv("ESFLOW_PROJECTION_DB_SCHEMA", "Robert'); DROP TABLE")
    with pytest.raises(ValueError, match="db_schema"):
        ProjectionSettings()
    assert PostgresSettings().database_url.startswith("postgresql+psycopg://")


def test_lag_counts_the_events_left_not_the_commit_marker_after_them() -> None:
    # Events at offsets 0..9 in one committed transaction, its marker at 10: the end is 11.
    assert records_left(9, 11) == 0  # caught up
    assert records_left(4, 11) == 5  # offsets 5..9 left
    assert records_left(-1, 11) == 10  # nothing applied yet
    # The consumer read past the end (aborted records or several markers after the last event).
    assert records_left(9, 15, at_end=True) == 0
    assert records_left(9, 15) == 4  # without that knowledge: an upper bound
    assert records_left(3, None) is None and records_left(3, -1) is None  # end unknown
