"""Benchmark of the process layer: order fulfilment through the pipeline, beside the same commands alone.

    .venv/bin/python -m ops.bench.processes [--orders 2000] [--repeat 2]

Both figures run with an ``esflow processor run`` child (all aggregates) and an ``esflow process run
order_fulfilment`` child on a fresh catalogue, warmed up first; each round alternates the figures on fresh
orders so the busy machine's swings hit both alike:

1. **with processes**: ``--orders`` PlaceOrder commands (``--lines`` lines each, every product and account
   well stocked and funded) preloaded; the process worker drives each order through reserve ->
   confirm -> charge -> mark paid; completed processes/s from the first OrderPlaced to
   the last OrderPaid, and p50/p99 OrderPlaced -> OrderConfirmed (event times, the processor's clock);
2. **the same commands without the process layer**: every command those processes send (PlaceOrder,
   ReserveStock per line, ConfirmOrder, WithdrawFunds, MarkOrderPaid) preloaded in an order the aggregates
   accept (the orders name no paying account, so no process starts), drained by the processor alone;
   orders/s over the same span.

The ratio is (1) / (2); the issue's target is at least 50 %. Nothing here asserts a time: run it, read it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from esflow.domain.account import DepositFunds, OpenAccount, WithdrawFunds
from esflow.domain.messages import Command, CommandEnvelope, CommandMetadata
from esflow.domain.order import ConfirmOrder, MarkOrderPaid, PlaceOrder
from esflow.domain.product import ReceiveStock, RegisterProduct, ReserveStock
from esflow.domain.values import Address, Money, OrderItem
from esflow.messaging.codec import Codec
from esflow.messaging.kafka import consumer_config, producer_config
from esflow.messaging.topics import apply, catalogue
from esflow.settings import KafkaSettings, TopicSettings

CODEC = Codec.from_settings()
ESFLOW = str(Path(sys.executable).parent / "esflow")
ADDRESS = Address(recipient="R", line1="L", city="C", postal_code="1", country="DE")


def eur(amount: int | Decimal) -> Money:
    """EUR money."""
    return Money(amount=Decimal(amount), currency="EUR")


def _env(aggregate: uuid.UUID, command: Command) -> CommandEnvelope:
    cid = uuid.uuid4()
    meta = CommandMetadata(command_id=cid, aggregate_type=command.aggregate_type, aggregate_id=aggregate,
                           correlation_id=cid, issued_at=datetime.now(UTC))  # fmt: skip
    return CommandEnvelope(metadata=meta, command=command)


class Bench:
    """A fresh catalogue, a producer, and the processor child."""

    def __init__(self, kafka: KafkaSettings, topics: TopicSettings) -> None:
        self.kafka = kafka
        self.topics = topics
        self.producer = Producer(producer_config(kafka, **{"linger.ms": 20, "batch.num.messages": 10000}))
        self.vars = {
            **os.environ,
            "ESFLOW_KAFKA_BOOTSTRAP": kafka.bootstrap_servers,
            "ESFLOW_TOPIC_PREFIX": topics.prefix,
            "ESFLOW_TOPIC_PARTITIONS": str(topics.partitions),
            "ESFLOW_PROCESSOR_GROUP_ID": f"{topics.prefix}processor",
            "ESFLOW_PROCESS_GROUP_PREFIX": f"{topics.prefix}process",
            "ESFLOW_PROCESS_PAYMENT_WINDOW_S": "600",
        }

    def send(self, envelopes: list[CommandEnvelope]) -> None:
        """Produce commands (key = aggregate id) and wait for the broker."""
        for env in envelopes:
            topic = f"{self.topics.prefix}commands.{env.metadata.aggregate_type}"
            while True:
                try:
                    headers: list[tuple[str, str | bytes | None]] = list(CODEC.headers(env))
                    self.producer.produce(
                        topic, CODEC.encode(env, topic=topic), CODEC.key(env), headers=headers
                    )
                    break
                except BufferError:
                    self.producer.poll(0.05)
        self.producer.flush(120)

    def child(self, *args: str) -> subprocess.Popen[bytes]:
        """An ``esflow`` child with the bench's settings."""
        return subprocess.Popen([ESFLOW, *args, "--log-level", "WARNING"], env=self.vars)


class OrderWatch:
    """Follows ``events.order`` from its end: per order, when it was placed, confirmed and paid."""

    def __init__(self, bench: Bench) -> None:
        topic = f"{bench.topics.prefix}events.order"
        self.consumer = Consumer(consumer_config(bench.kafka, f"watch-{uuid.uuid4().hex}"))
        parts = self.consumer.list_topics(topic, timeout=30).topics[topic].partitions
        ends = []
        for p in parts:
            _low, high = self.consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)
            ends.append(TopicPartition(topic, p, high))
        self.consumer.assign(ends)
        self.times: dict[str, dict[uuid.UUID, float]] = {
            "OrderPlaced": {},
            "OrderConfirmed": {},
            "OrderPaid": {},
        }

    def until_paid(self, orders: set[uuid.UUID], timeout_s: float) -> None:
        """Read events until every order is paid (or the timeout)."""
        deadline = time.monotonic() + timeout_s
        paid = self.times["OrderPaid"]
        while not orders <= paid.keys():
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{len(orders - paid.keys())} of {len(orders)} orders not paid in {timeout_s}s"
                )
            for msg in self.consumer.consume(5000, 0.5):
                if msg.error() is not None:
                    continue
                env = CODEC.decode(msg.value() or b"", kind="event")
                seen = self.times.get(env.event.type_name())
                if seen is not None:
                    seen[env.metadata.aggregate_id] = env.metadata.occurred_at.timestamp()

    def rate(self, orders: set[uuid.UUID]) -> float:
        """Orders/s from the first OrderPlaced to the last OrderPaid of ``orders``."""
        first = min(self.times["OrderPlaced"][o] for o in orders)
        last = max(self.times["OrderPaid"][o] for o in orders)
        return len(orders) / (last - first)

    def placed_to_confirmed(self, orders: set[uuid.UUID]) -> tuple[float, float]:
        """p50, p99 in ms."""
        gaps = sorted(self.times["OrderConfirmed"][o] - self.times["OrderPlaced"][o] for o in orders)
        q = statistics.quantiles(gaps, n=100)
        return q[49] * 1000, q[98] * 1000

    def close(self) -> None:
        """Release the consumer."""
        self.consumer.close()


def world(bench: Bench, products: int, accounts: int) -> tuple[list[uuid.UUID], list[uuid.UUID]]:
    """Products with plenty of stock and accounts with plenty of money."""
    pids, aids = [uuid.uuid4() for _ in range(products)], [uuid.uuid4() for _ in range(accounts)]
    cmds = []
    for i, p in enumerate(pids):
        cmds += [_env(p, RegisterProduct(sku=f"B{i}", name="n", category="c", price=eur(3))),
                 _env(p, ReceiveStock(quantity=2_000_000_000))]  # fmt: skip
    for a in aids:
        cmds += [
            _env(a, OpenAccount(owner_id=uuid.uuid4(), currency="EUR")),
            _env(a, DepositFunds(amount=eur(10**9))),
        ]
    bench.send(cmds)
    return pids, aids


def orders_of(
    n: int, lines: int, pids: list[uuid.UUID], aids: list[uuid.UUID], salt: int
) -> list[tuple[uuid.UUID, PlaceOrder]]:
    """``n`` orders of ``lines`` lines, spread over the products and accounts."""
    out = []
    for i in range(n):
        items = tuple(
            OrderItem(
                product_id=pids[(i * lines + j + salt) % len(pids)], sku="x", quantity=1, unit_price=eur(3)
            )
            for j in range(lines)
        )
        out.append((uuid.uuid4(), PlaceOrder(customer_id=uuid.uuid4(), items=items, shipping_address=ADDRESS,
                                             account_id=aids[(i + salt) % len(aids)])))  # fmt: skip
    return out


def with_processes(
    bench: Bench, orders: list[tuple[uuid.UUID, PlaceOrder]], timeout_s: float
) -> tuple[float, float, float]:
    """Completed fulfilment processes/s, p50 and p99 placed -> confirmed (ms)."""
    watch = OrderWatch(bench)
    try:
        bench.send([_env(oid, cmd) for oid, cmd in orders])
        ids = {oid for oid, _ in orders}
        watch.until_paid(ids, timeout_s)
        p50, p99 = watch.placed_to_confirmed(ids)
        return watch.rate(ids), p50, p99
    finally:
        watch.close()


def without_processes(bench: Bench, orders: list[tuple[uuid.UUID, PlaceOrder]], timeout_s: float) -> float:
    """Orders/s when the same commands are sent directly (no process layer).

    The orders name no paying account, so the process worker (running for the other figure) starts no
    instance for them; the charge goes to the account the order would have named.
    """
    watch = OrderWatch(bench)
    try:
        cmds = []
        for oid, cmd in orders:
            assert cmd.account_id is not None
            total = sum((i.unit_price.amount * i.quantity for i in cmd.items), Decimal(0))
            cmds += [_env(oid, cmd.model_copy(update={"account_id": None}))]
            cmds += [_env(i.product_id, ReserveStock(order_id=oid, quantity=i.quantity)) for i in cmd.items]
            cmds += [_env(oid, ConfirmOrder()), _env(cmd.account_id, WithdrawFunds(amount=eur(total))),
                     _env(oid, MarkOrderPaid(payment_ref=f"bench-{oid}", amount=eur(total)))]  # fmt: skip
        bench.send(cmds)
        ids = {oid for oid, _ in orders}
        watch.until_paid(ids, timeout_s)
        return watch.rate(ids)
    finally:
        watch.close()


@contextmanager
def bench_catalogue(kafka: KafkaSettings, partitions: int) -> Iterator[Bench]:
    """The catalogue under a fresh prefix, deleted afterwards."""
    topics = TopicSettings(prefix=f"pbench-{uuid.uuid4().hex[:6]}.", partitions=partitions)
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap_servers})
    specs = catalogue(topics)
    apply(admin, specs)
    try:
        yield Bench(kafka, topics)
    finally:
        for fut in admin.delete_topics([s.name for s in specs], operation_timeout=60).values():
            with suppress(Exception):
                fut.result(60)


def main(argv: list[str] | None = None) -> None:
    """Run both figures, alternating, and print them with the ratio."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--orders", type=int, default=2000)
    ap.add_argument("--lines", type=int, default=2)
    ap.add_argument("--products", type=int, default=200)
    ap.add_argument("--accounts", type=int, default=500)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=900)
    args = ap.parse_args(argv)
    kafka = KafkaSettings()
    partitions = TopicSettings().partitions
    print(f"esflow process benchmark: {args.orders} orders x {args.lines} lines, {partitions} partitions, "
          f"{os.cpu_count()} CPUs, broker {kafka.bootstrap_servers}")  # fmt: skip
    with bench_catalogue(kafka, partitions) as bench:
        processor = bench.child("processor", "run")
        worker = bench.child("process", "run", "order_fulfilment")
        try:
            pids, aids = world(bench, args.products, args.accounts)
            # Both workers started, restored and joined before anything is measured.
            with_processes(bench, orders_of(50, args.lines, pids, aids, 7), args.timeout)
            alone, layered, p50s, p99s = [], [], [], []
            for round_ in range(args.repeat):
                base = without_processes(
                    bench, orders_of(args.orders, args.lines, pids, aids, round_), args.timeout
                )
                rate, p50, p99 = with_processes(
                    bench, orders_of(args.orders, args.lines, pids, aids, round_ + 1), args.timeout
                )
                alone.append(base)
                layered.append(rate)
                p50s.append(p50)
                p99s.append(p99)
                print(
                    f"round {round_ + 1}: without processes {base:,.0f} orders/s; with processes "
                    f"{rate:,.0f} completed/s ({rate / base:.0%}); placed -> confirmed p50 {p50:.0f} ms, "
                    f"p99 {p99:.0f} ms"
                )
            a, b = statistics.median(alone), statistics.median(layered)
            print(
                f"median: without {a:,.0f} orders/s, with {b:,.0f} completed processes/s, ratio {b / a:.0%}; "
                f"placed -> confirmed p50 {statistics.median(p50s):.0f} ms, "
                f"p99 {statistics.median(p99s):.0f} ms"
            )
        finally:
            for child in (worker, processor):
                child.terminate()
                child.wait(60)


if __name__ == "__main__":
    main()
