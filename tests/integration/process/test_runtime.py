"""The process runtime against real Kafka and the real command processor.

The worker runs in a child process (``tests.integration.process.worker``, the test definition
``ChargeOrder``: withdraw an order's total from its paying account, cancel the order on a rejection or a
missed deadline), so a test can SIGKILL it at any moment and start it again.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient

from esflow.domain.order import PlaceOrder
from esflow.domain.process import command_id
from esflow.domain.values import Address, OrderItem
from esflow.messaging.process_records import InstanceRecord
from esflow.messaging.topics import apply, process_topics
from esflow.settings import KafkaSettings, Settings
from processors.process.timeline import find_instance, render
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

ROOT = Path(__file__).resolve().parents[3]
ENDED = {"completed", "compensated"}


@pytest.fixture
def penv(kafka_settings: KafkaSettings, admin: AdminClient) -> Iterator[Env]:
    with processor_env(kafka_settings, admin, partitions=2) as env:
        apply(admin, process_topics("charge", env.topics))
        yield env


class Worker:
    """The process worker as a child process: start, SIGKILL, stop."""

    def __init__(self, env: Env, tmp: Path, deadline_s: float) -> None:
        self.env = env
        self.log = tmp / "worker.log"
        self.deadline_s = deadline_s
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        vars_ = {
            **os.environ,
            **self.env.env_vars(),
            "ESFLOW_PROCESS_GROUP_PREFIX": f"{self.env.topics.prefix}process",
            "TOY_DEADLINE_S": str(self.deadline_s),
        }
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.integration.process.worker"],
                cwd=ROOT,
                env=vars_,
                stdout=out,
                stderr=out,
            )

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)

    def tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-30:]) if self.log.exists() else ""


@pytest.fixture
def worker(penv: Env, tmp_path: Path) -> Iterator[Callable[[float], Worker]]:
    made: list[Worker] = []

    def make(deadline_s: float = 30.0) -> Worker:
        w = Worker(penv, tmp_path, deadline_s)
        w.start()
        made.append(w)
        return w

    yield make
    for w in made:
        w.stop()


@pytest.fixture
def processors(penv: Env) -> Iterator[Callable[[str], Processor]]:
    """Command processors on threads, one group per aggregate set; stopped at the end."""
    started: list[tuple[Processor, threading.Thread]] = []

    def start(aggregates: str) -> Processor:
        group = f"{penv.group_id}-{aggregates.replace(',', '-')}"
        proc = Processor(
            penv.kafka, penv.topics, penv.processor_settings(group_id=group, aggregates=aggregates), CODEC
        )
        thread = threading.Thread(target=proc.run, daemon=True)
        thread.start()
        started.append((proc, thread))
        return proc

    yield start
    for proc, _ in started:
        proc.stop()
    for _, thread in started:
        thread.join(60)


def settings_of(env: Env) -> Settings:
    return Settings(kafka=env.kafka, topics=env.topics)


def funded_account(sender: Sender, results: Results, amount: int) -> uuid.UUID:
    account = uuid.uuid4()
    cmds = sender.send([envelope(account, open_account())])
    if amount:
        cmds += sender.send([envelope(account, deposit(amount))])
    for cmd in cmds:
        assert results.one(cmd).status == "accepted"
    return account


def place(sender: Sender, account: uuid.UUID, total: int) -> uuid.UUID:
    order = uuid.uuid4()
    command = PlaceOrder(
        customer_id=uuid.uuid4(),
        items=(OrderItem(product_id=uuid.uuid4(), sku="SKU", quantity=1, unit_price=eur(total)),),
        shipping_address=Address(recipient="R", line1="L", city="C", postal_code="1", country="DE"),
        account_id=account,
    )
    sender.send([envelope(order, command)])
    return order


def instance(env: Env, order: uuid.UUID) -> InstanceRecord | None:
    return find_instance(settings_of(env), ["charge"], order)


def wait_ended(
    env: Env, orders: list[uuid.UUID], worker: Worker, timeout: float = 120
) -> dict[uuid.UUID, InstanceRecord]:
    found: dict[uuid.UUID, InstanceRecord] = {}

    def check() -> bool:
        for order in orders:
            if order not in found:
                record = instance(env, order)
                if record is not None and record.status in ENDED:
                    found[order] = record
        return len(found) == len(orders)

    eventually(
        check,
        timeout=timeout,
        interval=0.5,
        what="every instance ended",
        details=lambda: f"{len(orders) - len(found)} of {len(orders)} still running\n{worker.tail()}",
    )
    return found


def test_a_fulfilment_completes_and_one_compensates_after_a_rejected_payment(
    penv: Env, processors: Callable[[str], Processor], worker: Callable[[float], Worker]
) -> None:
    processors("order,account")
    w = worker(30.0)
    sender, results = Sender(penv), Results(penv)
    try:
        rich, poor = funded_account(sender, results, 100), funded_account(sender, results, 0)
        paid, refused = place(sender, rich, 40), place(sender, poor, 40)
        ended = wait_ended(penv, [paid, refused], w)
        assert ended[paid].status == "completed" and ended[paid].final
        assert ended[refused].status == "compensated"
        assert ended[refused].reason == "payment rejected: insufficient_funds"
        order_events = {
            (e.metadata.aggregate_id, e.event.type_name()) for _, e in events_of(penv.kafka, penv, "order")
        }
        assert (refused, "OrderCancelled") in order_events and (paid, "OrderCancelled") not in order_events
        withdrawn = [
            e for _, e in events_of(penv.kafka, penv, "account") if e.event.type_name() == "FundsWithdrawn"
        ]
        assert [
            (e.metadata.aggregate_id, e.metadata.command_id, e.metadata.correlation_id) for e in withdrawn
        ] == [(rich, command_id("charge", paid, "charge", 1), paid)]
        shown = render(ended[refused])
        assert "CancelOrder" in shown and "insufficient_funds" in shown
    finally:
        results.close()


def test_a_deadline_fires_after_the_worker_is_killed_and_restarted(
    penv: Env, processors: Callable[[str], Processor], worker: Callable[[float], Worker]
) -> None:
    # No account processor: the charge is never answered, so only the deadline can end the instance.
    processors("order")
    w = worker(4.0)
    sender = Sender(penv)
    order = place(sender, uuid.uuid4(), 10)
    record = eventually(
        lambda: instance(penv, order), timeout=90, interval=0.3, what="the instance", details=w.tail
    )
    assert record is not None and "payment" in record.timers
    w.kill()
    deadline = record.timers["payment"].timestamp()
    # Dead past its deadline: the timer lives in the state topic, not in the dead worker.
    eventually(lambda: time.time() > deadline + 1, timeout=30, what="the deadline to pass")
    w.start()
    ended = wait_ended(penv, [order], w)[order]
    assert ended.status == "compensated" and ended.reason == "payment deadline passed"
    fired = [h for h in ended.history if h.kind == "timer"]
    assert len(fired) == 1
    cancelled = [
        e for _, e in events_of(penv.kafka, penv, "order") if e.event.type_name() == "OrderCancelled"
    ]
    assert [e.metadata.aggregate_id for e in cancelled] == [order]


def test_sigkills_mid_run_lose_nothing_and_execute_nothing_twice(
    penv: Env, processors: Callable[[str], Processor], worker: Callable[[float], Worker]
) -> None:
    processors("order,account")
    w = worker(60.0)
    sender, results = Sender(penv), Results(penv)
    rng = random.Random(13)
    try:
        accounts = [funded_account(sender, results, rng.choice([0, 500])) for _ in range(6)]
        orders: list[uuid.UUID] = []
        for round_ in range(4):
            batch = [place(sender, rng.choice(accounts), rng.randint(5, 60)) for _ in range(15)]
            orders += batch
            if round_ < 3:
                # Kill it mid-round: once one instance of the round is recorded, the rest are in flight.
                probe = batch[rng.randrange(len(batch))]

                def started(order: uuid.UUID = probe) -> InstanceRecord | None:
                    return instance(penv, order)

                eventually(started, timeout=90, interval=0.1, what="work under way", details=w.tail)
                w.kill()
                w.start()
        ended = wait_ended(penv, orders, w, timeout=240)
        assert {r.status for r in ended.values()} <= ENDED
        account_events = events_of(penv.kafka, penv, "account")
        order_events = events_of(penv.kafka, penv, "order")
        # No command executed twice: every event's command id is unique per aggregate.
        per_command = Counter(
            (e.metadata.aggregate_id, e.metadata.command_id) for _, e in account_events + order_events
        )
        assert max(per_command.values()) == 1
        withdrawn = {
            e.metadata.correlation_id for _, e in account_events if e.event.type_name() == "FundsWithdrawn"
        }
        cancelled = {
            e.metadata.aggregate_id for _, e in order_events if e.event.type_name() == "OrderCancelled"
        }
        for order, record in ended.items():
            if record.status == "completed":
                assert order in withdrawn and order not in cancelled
            else:
                assert order in cancelled and order not in withdrawn
        # Money: every account's balance moved only by the withdrawals of completed orders.
        totals: dict[uuid.UUID, Decimal] = {}
        for _, e in account_events:
            amount: Any = getattr(e.event, "amount", None)
            if amount is not None:
                sign = -1 if e.event.type_name() == "FundsWithdrawn" else 1
                totals[e.metadata.aggregate_id] = (
                    totals.get(e.metadata.aggregate_id, Decimal(0)) + sign * amount.amount
                )
        assert all(total >= 0 for total in totals.values())
    finally:
        results.close()
