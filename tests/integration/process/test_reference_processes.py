"""The domain's processes (order fulfilment, funds transfer) under `esflow process run`."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

from esflow.domain.order import PlaceOrder
from esflow.domain.product import ReceiveStock, RegisterProduct
from esflow.domain.transfer import RequestTransfer
from esflow.domain.values import Address, OrderItem
from esflow.messaging.process_records import InstanceRecord
from esflow.settings import KafkaSettings, Settings
from processors.process.timeline import find_instance
from processors.processor import Processor
from tests.integration.processor.kit import (
    CODEC,
    Env,
    Results,
    Sender,
    deposit,
    envelope,
    eur,
    events_of,
    open_account,
    processor_env,
)
from tests.support.wait import eventually

pytestmark = pytest.mark.integration

ESFLOW = str(Path(sys.executable).with_name("esflow"))


@pytest.fixture
def penv(kafka_settings: KafkaSettings, admin: AdminClient) -> Iterator[Env]:
    with processor_env(kafka_settings, admin, partitions=2) as env:
        yield env


@pytest.fixture
def pipeline(penv: Env, tmp_path: Path) -> Iterator[Path]:
    """The command processor (all aggregates) on a thread, both processes in an `esflow process run` child."""
    proc = Processor(penv.kafka, penv.topics, penv.processor_settings(), CODEC)
    thread = threading.Thread(target=proc.run, daemon=True)
    thread.start()
    log = tmp_path / "process.log"
    env = {
        **os.environ,
        **penv.env_vars(),
        "ESFLOW_PROCESS_GROUP_PREFIX": f"{penv.topics.prefix}process",
        "ESFLOW_PROCESS_PAYMENT_WINDOW_S": "60",
    }
    with log.open("wb") as out:
        child = subprocess.Popen([ESFLOW, "process", "run", "all"], env=env, stdout=out, stderr=out)
    try:
        yield log
    finally:
        child.terminate()
        child.wait(60)
        proc.stop()
        thread.join(60)


def ended(env: Env, process: str, instance: uuid.UUID, log: Path) -> InstanceRecord:
    settings = Settings(kafka=env.kafka, topics=env.topics)

    def check() -> InstanceRecord | None:
        record = find_instance(settings, [process], instance)
        return (
            record if record is not None and record.status in ("completed", "compensated", "failed") else None
        )

    record = eventually(
        check, timeout=120, interval=0.5, what=f"{process} {instance} to end",
        details=lambda: "\n".join(log.read_text(errors="replace").splitlines()[-30:]),
    )  # fmt: skip
    assert record is not None
    return record


def test_order_fulfilment_completes_or_compensates_and_a_transfer_completes(
    penv: Env, pipeline: Path
) -> None:
    sender, results = Sender(penv), Results(penv)
    try:
        product, rich, poor = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
        setup = [
            envelope(product, RegisterProduct(sku="P-1", name="Lamp", category="home", price=eur(5))),
            envelope(product, ReceiveStock(quantity=10)),
            envelope(rich, open_account()),
            envelope(rich, deposit(100)),
            envelope(poor, open_account()),
        ]
        for cmd in setup:
            sender.send([cmd])
            assert results.one(cmd).status == "accepted", results.one(cmd)

        def order(account: uuid.UUID) -> uuid.UUID:
            oid = uuid.uuid4()
            item = OrderItem(product_id=product, sku="P-1", quantity=3, unit_price=eur(5))
            address = Address(recipient="R", line1="L", city="C", postal_code="1", country="DE")
            command = PlaceOrder(
                customer_id=uuid.uuid4(), items=(item,), shipping_address=address, account_id=account
            )
            sender.send([envelope(oid, command)])
            return oid

        paid, refused = order(rich), order(poor)
        done = ended(penv, "order_fulfilment", paid, pipeline)
        assert done.status == "completed", done
        undone = ended(penv, "order_fulfilment", refused, pipeline)
        assert (
            undone.status == "compensated"
            and undone.reason is not None
            and "insufficient_funds" in undone.reason
        )
        # After the orders: the transfer's money must not pay the poor account's order.
        transfer = uuid.uuid4()
        sender.send(
            [
                envelope(
                    transfer, RequestTransfer(source_account_id=rich, target_account_id=poor, amount=eur(20))
                )
            ]
        )

        moved = ended(penv, "funds_transfer", transfer, pipeline)
        assert moved.status == "completed", moved

        product_events = [e for _, e in events_of(penv.kafka, penv, "product")]
        reserved = [
            e.event.type_name() for e in product_events if getattr(e.event, "order_id", None) == refused
        ]
        assert reserved == ["StockReserved", "StockReleased"]  # the refused order's reservation was undone
        order_types = {
            (e.metadata.aggregate_id, e.event.type_name()) for _, e in events_of(penv.kafka, penv, "order")
        }
        assert {(paid, "OrderConfirmed"), (paid, "OrderPaid"), (refused, "OrderCancelled")} <= order_types
        balances: dict[uuid.UUID, int] = {}
        for _, e in events_of(penv.kafka, penv, "account"):
            amount = getattr(e.event, "amount", None)
            if amount is not None:
                sign = -1 if e.event.type_name() == "FundsWithdrawn" else 1
                balances[e.metadata.aggregate_id] = balances.get(e.metadata.aggregate_id, 0) + sign * int(
                    amount.amount
                )
        assert balances == {rich: 100 - 15 - 20, poor: 20}
    finally:
        results.close()
