"""Scale-out of the command processor: throughput of 1, 2 and 3 instances, and the rebalance pause.

    .venv/bin/python -m ops.bench.scaleout [--commands 30000] [--instances 1,2,3] [--rate 300]

Runs against ``ESFLOW_KAFKA_BOOTSTRAP`` (default: the local stack) on fresh, prefixed topics.

1. throughput: k ``esflow processor run`` processes (one group, instance ids 0..k-1) are started and the
   group waited for (stable, k members); then ``--commands`` commands (opens, then deposits) are written
   at once; commands/s from the first to the last result read. The CPU seconds each process used in that
   window (processors, the local stack's brokers, this process: the writer and the result reader) show
   where the time goes.
2. rebalance pause: two instances under a steady load of ``--rate`` deposits/s; one of them is stopped
   (SIGTERM) and started again, a rolling restart of one member. The pause is the longest time any
   events partition went without a newly committed event from the stop on (the steady-state longest gap
   is printed beside it). Once with static membership off, once on.
Nothing here asserts a time: run it, read it.
"""

from __future__ import annotations

import argparse
import itertools
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from confluent_kafka import Consumer, ConsumerGroupState, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from esflow.messaging.kafka import admin_client, consumer_config, producer_config
from esflow.settings import KafkaSettings, TopicSettings
from ops.bench.commands import CODEC, Bench, _deposit, _envelope, _produce, bench_topics, preload
from ops.stack.manager import Stack
from ops.stack.proc import cpu_seconds, own_cpu, wait_until

ESFLOW = str(Path(sys.executable).parent / "esflow")


class Instances:
    """``esflow processor run`` children of one group; logs in a temporary directory."""

    def __init__(self, bench: Bench, log_dir: Path, *, static: bool) -> None:
        self.bench = bench
        self.log_dir = log_dir
        self.static = static
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, instance_id: str) -> None:
        """Start (or restart) one instance."""
        env = {
            **os.environ,
            "ESFLOW_KAFKA_BOOTSTRAP": self.bench.kafka.bootstrap_servers,
            "ESFLOW_TOPIC_PREFIX": self.bench.topics.prefix,
            "ESFLOW_TOPIC_PARTITIONS": str(self.bench.topics.partitions),
            "ESFLOW_PROCESSOR_GROUP_ID": self.bench.group,
            "ESFLOW_PROCESSOR_INSTANCE_ID": instance_id,
            "ESFLOW_PROCESSOR_AGGREGATES": "account",
            "ESFLOW_PROCESSOR_STATIC_MEMBERSHIP": "true" if self.static else "false",
        }
        log = (self.log_dir / f"processor-{instance_id}.log").open("ab")
        self.procs[instance_id] = subprocess.Popen(
            [ESFLOW, "processor", "run", "--log-level", "WARNING"], env=env, stdout=log, stderr=log
        )
        log.close()

    def stop(self, instance_id: str) -> None:
        """SIGTERM one instance and wait for it (a clean stop: finish the batch, leave or not)."""
        proc = self.procs.pop(instance_id)
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)

    def stop_all(self) -> None:
        """Stop every instance still running."""
        for instance_id in list(self.procs):
            self.stop(instance_id)

    def pids(self) -> dict[str, int]:
        """Pid of each running instance."""
        return {i: p.pid for i, p in self.procs.items()}


def wait_stable(admin: AdminClient, group: str, members: int, timeout_s: float = 120) -> float:
    """Block until the group is stable with ``members`` members holding partitions; returns seconds."""
    t0 = time.monotonic()

    def stable() -> bool:
        try:
            desc = admin.describe_consumer_groups([group], request_timeout=5)[group].result()
        except KafkaException:
            # The coordinator is still loading (a new cluster creates __consumer_offsets first).
            return False
        return (
            desc.state == ConsumerGroupState.STABLE
            and len(desc.members) == members
            and all(m.assignment.topic_partitions for m in desc.members)
        )

    if not wait_until(stable, timeout_s=timeout_s, interval_s=0.2):
        raise RuntimeError(f"group {group} not stable with {members} members after {timeout_s}s")
    return time.monotonic() - t0


@contextmanager
def following(bench: Bench, topic: str, on_message: Callable[[int, bytes | None], None]) -> Iterator[None]:
    """Read ``topic`` (read_committed) from its current end in a thread while the block runs."""
    consumer = Consumer(consumer_config(bench.kafka, f"bench-{uuid.uuid4().hex}", **{"fetch.wait.max.ms": 5}))
    md = consumer.list_topics(topic, timeout=30)
    tps = []
    for p in md.topics[topic].partitions:
        _low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)
        tps.append(TopicPartition(topic, p, high))
    consumer.assign(tps)
    stop = threading.Event()

    def run() -> None:
        while not stop.is_set():
            for msg in consumer.consume(10000, 0.05):
                if msg.error() is None:
                    on_message(msg.partition() or 0, msg.key())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(10)
        consumer.close()


def broker_pids() -> list[int]:
    """Pids of the local stack's Kafka nodes (empty when the broker is not the local stack)."""
    return [pid for node in Stack().kafka_nodes if (pid := node.pid()) is not None]


def throughput_round(bench: Bench, admin: AdminClient, k: int, commands: int, log_dir: Path) -> str:
    """One row of the table: k instances drain ``commands`` preloaded commands."""
    instances = Instances(bench, log_dir, static=False)
    for i in range(k):
        instances.start(str(i))
    try:
        wait_stable(admin, bench.group, k)
        arrivals: list[float] = []
        brokers = broker_pids()
        pids = [*instances.pids().values(), *brokers]
        before = {pid: cpu_seconds(pid) for pid in pids}
        own_before = own_cpu()
        with following(
            bench, bench.name("command-results"), lambda _p, _k: arrivals.append(time.perf_counter())
        ):
            preload(bench, commands, max(1, commands // 10))
            if not wait_until(lambda: len(arrivals) >= commands, timeout_s=900, interval_s=0.2):
                raise RuntimeError(f"{len(arrivals)} of {commands} results after 15 min")
        used = {pid: cpu_seconds(pid) - before[pid] for pid in pids}
        own = own_cpu() - own_before
    finally:
        instances.stop_all()
    seconds = arrivals[-1] - arrivals[0]
    proc_cpu = sum(used[p] for p in pids if p not in brokers)
    broker_cpu = sum(used[p] for p in brokers)
    return (
        f"| {k} | {commands / seconds:,.0f} | {seconds:.1f} | {proc_cpu:.1f} | {broker_cpu:.1f} | {own:.1f} |"
    )


def rebalance_pause(bench: Bench, admin: AdminClient, *, static: bool, rate: float, log_dir: Path) -> str:
    """Steady load on two instances, a rolling restart of one; the longest per-partition event gap."""
    accounts = 2000
    ids, _size = preload(bench, accounts, accounts)  # opens only: every account exists before the load
    instances = Instances(bench, log_dir, static=static)
    instances.start("0")
    instances.start("1")
    arrivals: dict[int, list[float]] = defaultdict(list)
    stop_feed = threading.Event()

    def feed() -> None:
        producer = Producer(producer_config(bench.kafka))
        topic = bench.name("commands.account")
        started, n = time.perf_counter(), 0
        while not stop_feed.is_set():
            due = int((time.perf_counter() - started) * rate)
            while n < due:
                env = _envelope(ids[n % accounts], _deposit(n))
                _produce(
                    producer,
                    topic,
                    CODEC.encode(env, topic=topic),
                    CODEC.key(env),
                    headers=CODEC.headers(env),
                )
                n += 1
            producer.poll(0)
            time.sleep(0.002)
        producer.flush(30)

    try:
        wait_stable(admin, bench.group, 2)
        feeder = threading.Thread(target=feed, daemon=True)
        with following(
            bench, bench.name("events.account"), lambda p, _k: arrivals[p].append(time.perf_counter())
        ):
            feeder.start()
            time.sleep(6)  # steady state before the restart: part of the measurement, not a wait
            t_stop = time.perf_counter()
            instances.stop("1")
            t_stopped = time.perf_counter()
            instances.start("1")
            rejoin = wait_stable(admin, bench.group, 2)
            time.sleep(8)  # load after the restart, so late partitions show their gap
            stop_feed.set()
            feeder.join(30)
    finally:
        instances.stop_all()

    def longest_gap(start: float, end: float) -> float:
        worst = 0.0
        for times in arrivals.values():
            inside = [t for t in times if start <= t <= end]
            before = [t for t in times if t < start]
            points = ([before[-1]] if before else []) + inside
            gaps = [b - a for a, b in itertools.pairwise(points)]
            tail = end - points[-1] if points else end - start
            worst = max(worst, *gaps, tail)
        return worst

    steady = longest_gap(t_stop - 5, t_stop)
    pause = longest_gap(t_stop, t_stop + (t_stopped - t_stop) + rejoin + 6)
    return (
        f"| {'on' if static else 'off'} | {pause:.2f} | {steady:.2f} | {t_stopped - t_stop:.2f} | "
        f"{rejoin:.2f} |"
    )


def main(argv: list[str] | None = None) -> None:
    """Print the throughput table and the rebalance pauses."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--commands", type=int, default=30_000)
    ap.add_argument("--instances", default="1,2,3")
    ap.add_argument("--rate", type=float, default=300.0, help="deposits/s during the rebalance runs")
    args = ap.parse_args(argv)
    kafka = KafkaSettings()
    partitions = TopicSettings().partitions
    admin = admin_client(kafka)
    log_dir = Path(os.environ.get("TMPDIR", "/tmp")) / f"esflow-scaleout-{uuid.uuid4().hex[:8]}"
    log_dir.mkdir(parents=True)
    print(
        f"esflow processor scale-out: {args.commands} commands, {partitions} partitions, "
        f"{os.cpu_count()} CPUs, broker {kafka.bootstrap_servers}, logs {log_dir}"
    )
    print("| instances | commands/s | drain s | CPU s processors | CPU s brokers | CPU s writer+reader |")
    print("|---|---|---|---|---|---|")
    for k in (int(x) for x in args.instances.split(",")):
        # Fresh topics per row: every row starts from empty partitions and a new group.
        with bench_topics(kafka, partitions) as bench:
            print(throughput_round(bench, admin, k, args.commands, log_dir), flush=True)
    print()
    print("| static membership | pause s | steady max gap s | stop s | rejoin s |")
    print("|---|---|---|---|---|")
    for static in (False, True):
        with bench_topics(kafka, partitions) as bench:
            print(rebalance_pause(bench, admin, static=static, rate=args.rate, log_dir=log_dir), flush=True)


if __name__ == "__main__":
    main()
