"""Benchmark of the command processor, beside Kafka's own transactional tools measured in the same run.

    .venv/bin/python -m ops.bench.commands [--commands 50000] [--repeat 3] [--restore-aggregates 1000000]

Figures (one processor instance, EOS on, the account aggregate, ``ESFLOW_TOPIC_PARTITIONS`` partitions):

1. throughput: ``--commands`` commands preloaded on ``commands.account`` (opens, then deposits), drained by an
   in-process :class:`~processors.processor.Processor`; commands/s from the first to the last commit,
   ``--repeat`` rounds on fresh accounts, the median used below;
2. latency: an ``esflow processor run`` child process, fed at 25/50/75 % of that rate for
   ``--latency-seconds`` each; p50/p99 from handing a command to the producer to reading its result;
3. restore: ``--restore-aggregates`` snapshots written to ``snapshots.account``, then the time to restore
   every partition as an assignment would;
4. baselines on the same message count and size: ``ProducerPerformance`` with a transactional id
   (100 ms transactions) and ``TransactionalMessageCopier`` (group mode, KIP-447 group metadata,
   transactions of ``--batch`` messages), both from the kafka-tools jars the local stack caches.

Each processed command writes three records (event, result, snapshot) where the copier writes one; the
printout says so next to the ratio. Nothing here asserts a time: run it, read it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from esflow import gctune
from esflow.domain.account import DepositFunds, OpenAccount
from esflow.domain.aggregates import ACCOUNT
from esflow.domain.aggregates.account import AccountState
from esflow.domain.messages import Command, CommandEnvelope, CommandMetadata
from esflow.domain.values import Money
from esflow.messaging.codec import Codec
from esflow.messaging.kafka import admin_client, consumer_config, producer_config
from esflow.messaging.results import answer_key
from esflow.messaging.topics import apply, catalogue, wait_until_visible
from esflow.settings import KafkaSettings, ProcessorSettings, StackSettings, TopicSettings
from processors.processor import Processor
from processors.restore import restore_partition
from processors.state import HEADER_EVENTS_UNTIL, AggregateRecord, PartitionCache

CODEC = Codec.from_settings()


@dataclass
class Bench:
    """Where the benchmark runs."""

    kafka: KafkaSettings
    topics: TopicSettings
    group: str
    libs: Path

    def name(self, base: str) -> str:
        """A topic name with the benchmark's prefix."""
        return f"{self.topics.prefix}{base}"


def _envelope(account: uuid.UUID, command: Command) -> CommandEnvelope:
    return CommandEnvelope(
        metadata=CommandMetadata(
            command_id=uuid.uuid4(),
            aggregate_type="account",
            aggregate_id=account,
            correlation_id=uuid.uuid4(),
            issued_at=datetime.now(UTC),
        ),
        command=command,
    )


def _deposit(n: int) -> DepositFunds:
    return DepositFunds(amount=Money(amount=Decimal(n % 97 + 1), currency="EUR"), reference=f"bench-{n}")


def _produce(producer: Producer, topic: str, value: bytes | None, key: bytes, **kw: Any) -> None:
    while True:
        try:
            producer.produce(topic, value, key, **kw)
            return
        except BufferError:
            producer.poll(0.05)


def preload(bench: Bench, commands: int, accounts: int) -> tuple[list[uuid.UUID], float]:
    """Write the throughput run's commands; returns the accounts and the mean encoded command size."""
    ids = [uuid.uuid4() for _ in range(accounts)]
    producer = Producer(producer_config(bench.kafka, **{"linger.ms": 20, "batch.num.messages": 10000}))
    topic = bench.name("commands.account")
    total = 0
    for i in range(commands):
        env = (
            _envelope(ids[i], OpenAccount(owner_id=uuid.uuid4(), currency="EUR"))
            if i < accounts
            else (_envelope(ids[i % accounts], _deposit(i)))
        )
        value = CODEC.encode(env, topic=topic)
        total += len(value)
        _produce(producer, topic, value, CODEC.key(env), headers=CODEC.headers(env))
    producer.flush(120)
    return ids, total / commands


def throughput(bench: Bench, commands: int, batch: int) -> dict[str, float]:
    """Drain the preloaded commands with an in-process processor; commands/s between first and last commit."""
    settings = ProcessorSettings(
        group_id=bench.group, instance_id="bench", aggregates="account", batch_max_commands=batch
    )
    proc = Processor(bench.kafka, bench.topics, settings, CODEC)
    proc.start()
    done = 0
    first: float | None = None
    try:
        deadline = time.monotonic() + 600
        while done < commands and time.monotonic() < deadline:
            n = proc.run_once()
            if n and first is None:
                first = time.perf_counter()
            done += n
        elapsed = time.perf_counter() - (first or time.perf_counter())
    finally:
        proc.close()
    if proc.aborted_batches:
        print(f"  note: {proc.aborted_batches} batches aborted and retried during the run")
    return {
        "commands": done,
        "seconds": elapsed,
        "rate": done / elapsed if elapsed else 0.0,
        "batches": proc.committed_batches,
    }


def latency(bench: Bench, accounts: list[uuid.UUID], rate: float, seconds: float) -> tuple[float, float, int]:
    """Feed ``rate`` commands/s to a running processor process; p50/p99 command->result in ms."""
    topic = bench.name("commands.account")
    results = bench.name("command-results")
    # A read_committed fetch that finds nothing below the last stable offset idles for fetch.wait.max.ms
    # (librdkafka default 500 ms) before it asks again: that would be measured as processor latency.
    consumer = Consumer(
        consumer_config(bench.kafka, f"bench-lat-{uuid.uuid4().hex}", **{"fetch.wait.max.ms": 5})
    )
    md = consumer.list_topics(results, timeout=30)
    tps = []
    for p in md.topics[results].partitions:
        _low, high = consumer.get_watermark_offsets(TopicPartition(results, p), timeout=30)
        tps.append(TopicPartition(results, p, high))
    consumer.assign(tps)
    sent: dict[str, float] = {}
    got: dict[str, float] = {}
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            for msg in consumer.consume(10000, 0.05):
                if msg.error() is None and msg.key() is not None:
                    got[msg.key().decode()] = time.perf_counter()  # type: ignore[union-attr]

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    # The command SDK's own linger (5 ms): with 1 ms the feeder sent a produce request per partition per
    # millisecond, and the broker's share of the two cores left the processor short at high rates.
    producer = Producer(producer_config(bench.kafka))
    # Encoded before the clock starts: building and encoding a command costs the feeder CPU that the
    # processor under test would otherwise share (the client's encoding is not the processor's latency).
    feed = []
    for i in range(int(rate * seconds) + 1):
        env = _envelope(accounts[i % len(accounts)], _deposit(i))
        feed.append(
            (
                answer_key("account", str(env.metadata.aggregate_id), str(env.metadata.command_id)).decode(),
                CODEC.encode(env, topic=topic),
                CODEC.key(env),
                CODEC.headers(env),
            )
        )
    started = time.perf_counter()
    n = 0
    while (now := time.perf_counter()) - started < seconds:
        due = min(int((now - started) * rate), len(feed))
        while n < due:
            command_id, value, key, headers = feed[n]
            sent[command_id] = time.perf_counter()
            _produce(producer, topic, value, key, headers=headers)
            n += 1
        producer.poll(0)
        time.sleep(0.001)
    producer.flush(30)
    deadline = time.monotonic() + 60
    while len(got.keys() & sent.keys()) < len(sent) and time.monotonic() < deadline:
        time.sleep(0.1)
    stop.set()
    reader.join(10)
    consumer.close()
    warm = started + 1.0  # the first second warms the pipeline up
    lat = sorted((got[k] - t) * 1000 for k, t in sent.items() if k in got and t >= warm)
    if not lat:
        return float("nan"), float("nan"), 0
    return (
        statistics.median(lat),
        lat[min(len(lat) - 1, int(len(lat) * 0.99))],
        len(sent) - len(got.keys() & sent.keys()),
    )


def restore_bench(bench: Bench, aggregates: int) -> dict[str, float]:
    """Write ``aggregates`` snapshots, then restore every partition like an assignment does."""
    topic = bench.name("snapshots.account")
    producer = Producer(
        producer_config(
            bench.kafka, **{"linger.ms": 50, "batch.num.messages": 10000, "compression.type": "lz4"}
        )
    )
    state = AccountState(currency="EUR", balance=Decimal("120.50"))
    n = bench.topics.partitions
    events = bench.name("events.account")
    t0 = time.perf_counter()
    for i in range(aggregates):
        aid = str(uuid.uuid4())
        data = AggregateRecord(aid, 3, state, i).to_snapshot(ACCOUNT, events, i % n)
        _produce(producer, topic, data, aid.encode(), partition=i % n, headers=[(HEADER_EVENTS_UNTIL, b"-1")])
    producer.flush(300)
    write_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    restored = 0
    for p in range(n):
        cache = PartitionCache(ACCOUNT, p)
        restore_partition(
            bench.kafka,
            CODEC,
            cache,
            snapshots_topic=topic,
            events_topic=bench.name("events.account"),
            window=32,
            timeout_s=1800,
        )
        restored += len(cache)
    restore_s = time.perf_counter() - t0
    return {"aggregates": restored, "write_s": write_s, "restore_s": restore_s}


def _java(bench: Bench, *args: str, timeout: float = 600) -> tuple[str, float]:
    log4j = bench.libs.parent / "bench-log4j2.properties"
    log4j.write_text(
        "rootLogger.level = warn\nrootLogger.appenderRef.stderr.ref = STDERR\n"
        "appender.stderr.type = Console\nappender.stderr.name = STDERR\n"
        "appender.stderr.target = SYSTEM_ERR\nappender.stderr.layout.type = PatternLayout\n"
    )
    cmd = ["java", "-Xmx512m", f"-Dlog4j2.configurationFile={log4j}", "-cp", f"{bench.libs}/*", *args]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{args[0]} failed: {proc.stderr[-2000:]}")
    return proc.stdout, time.perf_counter() - t0


def _producer_perf(bench: Bench, topic: str, count: int, size: int, *options: str) -> str:
    """Kafka's ProducerPerformance flat out (acks=all) with extra ``options``; returns its output."""
    out, _ = _java(
        bench,
        "org.apache.kafka.tools.ProducerPerformance",
        "--topic",
        topic,
        "--num-records",
        str(count),
        "--record-size",
        str(size),
        "--throughput",
        "-1",
        *options,
        # --producer-props takes every following argument, so it comes last.
        "--producer-props",
        f"bootstrap.servers={bench.kafka.bootstrap_servers}",
        "acks=all",
    )
    return out


def baselines(bench: Bench, count: int, size: int, batch: int) -> dict[str, float]:
    """ProducerPerformance (transactional) and TransactionalMessageCopier: ``count`` records of ``size`` B."""
    admin = admin_client(bench.kafka)
    src, dst, txsrc = bench.name("copier-in"), bench.name("copier-out"), bench.name("perf-tx")
    n = bench.topics.partitions
    for fut in admin.create_topics([NewTopic(t, n, 1) for t in (src, dst, txsrc)]).values():
        fut.result(60)
    wait_until_visible(admin, [src, dst, txsrc], 60)
    boot = bench.kafka.bootstrap_servers
    out = _producer_perf(
        bench,
        txsrc,
        count,
        size,
        "--transactional-id",
        f"{bench.group}-pp",
        "--transaction-duration-ms",
        "100",
    )
    m = re.search(r"([\d.]+) records/sec", out.strip().splitlines()[-1])
    perf_tx = float(m.group(1)) if m else float("nan")
    # The copier's input is written without transactions: it counts remaining messages by end offset,
    # which transaction markers would keep above zero forever.
    _producer_perf(bench, src, count, size)
    out, wall = _java(
        bench,
        "org.apache.kafka.tools.TransactionalMessageCopier",
        "--input-topic",
        src,
        "--input-partition",
        "0",
        "--output-topic",
        dst,
        "--broker-list",
        boot,
        "--transactional-id",
        f"{bench.group}-copier",
        "--consumer-group",
        f"{bench.group}-copier",
        "--group-mode",
        "--use-group-metadata",
        "--transaction-size",
        str(batch),
        "--max-messages",
        str(count),
    )
    # Time between the copier's first record copied and its shutdown, from its own JSON progress lines.
    stamps: list[tuple[datetime, int]] = []
    for line in out.splitlines():
        with suppress(ValueError):
            doc = json.loads(line)
            stamps.append(
                (datetime.strptime(doc["time"], "%Y/%m/%d %H:%M:%S:%f"), int(doc["totalProcessed"]))
            )
    before = max((t for t, done in stamps if done == 0), default=None)
    end = stamps[-1][0] if stamps else None
    copier = float("nan")
    if before and end and end > before:
        copier = count / (end - before).total_seconds()
    return {"producer_perf_tx": perf_tx, "copier": copier, "copier_wall_s": wall}


@contextmanager
def bench_topics(kafka: KafkaSettings, partitions: int) -> Iterator[Bench]:
    """The catalogue under a fresh prefix, deleted afterwards."""
    prefix = f"bench-{uuid.uuid4().hex[:6]}."
    topics = TopicSettings(prefix=prefix, partitions=partitions)
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap_servers})
    specs = catalogue(topics)
    apply(admin, specs)
    libs = StackSettings().cache_dir / f"kafka-{kafka.version}" / "libs"
    try:
        yield Bench(kafka, topics, f"{prefix}processor", libs)
    finally:
        names = [s.name for s in specs] + [f"{prefix}{t}" for t in ("copier-in", "copier-out", "perf-tx")]
        for fut in admin.delete_topics(names, operation_timeout=60).values():
            with suppress(Exception):
                fut.result(60)


def main(argv: list[str] | None = None) -> None:
    """Run every figure and print them beside the baselines."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--commands", type=int, default=50_000)
    ap.add_argument("--accounts", type=int, default=10_000)
    ap.add_argument("--batch", type=int, default=1000, help="commands per transaction (and copier txn size)")
    ap.add_argument("--latency-seconds", type=float, default=8.0)
    ap.add_argument("--latency-accounts", type=int, default=2000, help="accounts the latency runs write to")
    ap.add_argument("--restore-aggregates", type=int, default=1_000_000, help="0 skips the restore figure")
    ap.add_argument("--skip-baselines", action="store_true")
    ap.add_argument("--repeat", type=int, default=3, help="throughput rounds (the median is reported)")
    args = ap.parse_args(argv)
    # The in-process processor runs with the collector settings of `esflow processor run`.
    gctune.tune_for_throughput()
    kafka = KafkaSettings()
    partitions = TopicSettings().partitions
    print(
        f"esflow command processor benchmark: {args.commands} commands, {partitions} partitions, "
        f"{os.cpu_count()} CPUs, broker {kafka.bootstrap_servers}"
    )
    with bench_topics(kafka, partitions) as bench:
        # Repeated because one drain varies a lot on this machine (the broker's share of two cores
        # differs from run to run); each round preloads fresh accounts, so nothing is a duplicate.
        rates = []
        for round_ in range(1, args.repeat + 1):
            accounts, size = preload(bench, args.commands, args.accounts)
            tp = throughput(bench, args.commands, args.batch)
            rates.append(tp["rate"])
            print(
                f"throughput round {round_}: {tp['rate']:,.0f} commands/s ({tp['commands']:.0f} commands of "
                f"{size:.0f} bytes in {tp['seconds']:.2f}s, {tp['batches']:.0f} transactions)"
            )
        rate = statistics.median(rates)
        print(
            f"throughput: {rate:,.0f} commands/s (median of {len(rates)}; each command writes event + result "
            "+ snapshot)"
        )
        env = {
            **os.environ,
            "ESFLOW_KAFKA_BOOTSTRAP": kafka.bootstrap_servers,
            "ESFLOW_TOPIC_PREFIX": bench.topics.prefix,
            "ESFLOW_TOPIC_PARTITIONS": str(partitions),
            "ESFLOW_PROCESSOR_GROUP_ID": bench.group,
            "ESFLOW_PROCESSOR_INSTANCE_ID": "bench",
            "ESFLOW_PROCESSOR_AGGREGATES": "account",
        }
        esflow = str(Path(sys.executable).parent / "esflow")
        child = subprocess.Popen([esflow, "processor", "run", "--log-level", "WARNING"], env=env)
        try:
            time.sleep(4.0)  # start, restore, join
            # Steady state: the first command of each aggregate after a restore decodes its snapshot.
            hot = accounts[: args.latency_accounts]
            latency(bench, hot, rate * 0.25, max(2.0, len(hot) / (rate * 0.25)))
            for share in (0.25, 0.5, 0.75):
                p50, p99, lost = latency(bench, hot, rate * share, args.latency_seconds)
                print(
                    f"latency at {share:.0%} of that rate ({rate * share:,.0f}/s): p50 {p50:.1f} ms, "
                    f"p99 {p99:.1f} ms" + (f" ({lost} unanswered)" if lost else "")
                )
        finally:
            child.terminate()
            child.wait(60)
        if not args.skip_baselines:
            base = baselines(bench, args.commands, round(size), args.batch)
            print(
                f"baseline ProducerPerformance, transactional (100 ms txns), {round(size)} B: "
                f"{base['producer_perf_tx']:,.0f} records/s"
            )
            print(
                f"baseline TransactionalMessageCopier (group metadata, {args.batch}/txn): "
                f"{base['copier']:,.0f} records/s (JVM wall {base['copier_wall_s']:.1f}s)"
            )
            if base["copier"] == base["copier"]:
                print(
                    f"processor / copier: {rate / base['copier']:.0%} "
                    "(the processor writes 3 records per command, the copier 1)"
                )
        if args.restore_aggregates:
            rb = restore_bench(bench, args.restore_aggregates)
            print(
                f"restore: {rb['aggregates']:,.0f} aggregates in {rb['restore_s']:.1f}s "
                f"({rb['aggregates'] / rb['restore_s']:,.0f}/s; writing them took {rb['write_s']:.1f}s)"
            )


if __name__ == "__main__":
    main()
