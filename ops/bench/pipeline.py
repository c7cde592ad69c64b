"""The whole pipeline as the README runs it: sustained rate, then latencies at 25/50/75 % of it.

    .venv/bin/python -m ops.bench.pipeline [--preload 20000] [--commands 20000] [--seconds 20] [--processes]
        [--fractions 0.25,0.5,0.75 | --rates 750,1500]

Against the running local stack (``esflow stack up``), on fresh prefixed topics and a fresh
installation (both removed afterwards), with ``esflow processor run`` and ``esflow projector run`` (every
projection in one supervised projector host, what the README starts; ``--processes``: one process per
projection) as children:

1. **preload**: ``--preload`` commands of the reference workload sent flat out and waited for until every
   projection has applied them, so the read models hold data before anything is measured;
2. **sustained**: ``--commands`` more sent flat out; the rate is the commands divided by the time from the
   first send until the last result *and* every projection has applied every event of the phase;
3. **latency**: at 25, 50 and 75 % of that rate, ``--seconds`` of open-loop load each (latency counted
   from when a command was due, :mod:`producers.loadgen`): command->result p50/p99, and command->visible in
   ``--projection`` (default ``orders``) p50/p99. Each phase starts only once every projection has
   applied the previous one, so no phase measures another's backlog;

   after the sustained phase and each latency phase, the CPU each part used meanwhile (% of one core:
   processor, projector, broker, Postgres, this process with the load generator) and the whole box's,
   so a missed latency shows whether the box was saturated and who took it;
4. **box speed**: before and after, how long a fixed single-threaded Python workload takes here (JSON
   and SHA-256 of a small order, best of three). Machines of the same size differ widely (Faust's no-op
   ceiling in ``ops.bench.projections``: 9.2k events/s on one 2-core box, 4.8k on another) and one
   machine drifts between runs, so only figures printed beside similar box speeds compare. Beside it,
   how long the broker has been up: one started minutes ago still compiles its hot paths under load;
5. **floor**: Kafka's own end-to-end latency in the same run (``org.apache.kafka.tools.EndToEndLatency``
   from the kafka-tools jar the stack caches: one record produced with acks=all, then consumed, at a
   time; not transactional, the tool has no such mode), on a topic of its own.

Nothing here asserts a time: run it, read it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import sqlalchemy as sa
from confluent_kafka.admin import AdminClient, NewTopic
from psycopg import sql

from esflow.messaging.results import CommandResult
from esflow.messaging.topics import apply, catalogue, wait_until_visible
from esflow.query.consistency import ConsistencyToken, ProjectionWaiter
from esflow.readmodel import versions
from esflow.readmodel.store import create_engine
from esflow.settings import Settings, StackSettings
from ops.stack.manager import Stack
from ops.stack.proc import own_cpu, tree_cpu_seconds, uptime_seconds
from producers import loadgen
from producers.workload import Planned
from projections.registry import PROJECTIONS, get

FRACTIONS = (0.25, 0.5, 0.75)


def _percentiles(values: list[float]) -> str:
    ordered = sorted(values)
    if not ordered:
        return "no samples"
    return f"p50 {loadgen.percentile(ordered, 50):,.0f} ms, p99 {loadgen.percentile(ordered, 99):,.0f} ms"


def box_speed_ms(rounds: int = 3) -> float:
    """Milliseconds the fastest of ``rounds`` runs of a fixed single-threaded Python workload takes."""
    order = {
        "order_id": "2b8f9a34-8d0c-4c1e-9d2f-6a7b8c9d0e1f",
        "lines": [{"sku": f"sku-{i}", "quantity": i % 7 + 1, "unit_price": "12.50"} for i in range(40)],
    }
    best = math.inf
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(2000):
            data = json.dumps(order).encode()
            hashlib.sha256(data).digest()
            json.loads(data)
        best = min(best, time.perf_counter() - t0)
    return best * 1000


WARM_AFTER_S = 300
"""A broker younger than this may still be compiling its hot paths (the JVM's JIT) under load."""


def broker_uptime_line() -> str:
    """How long the stack's broker has been up, with a warning when its JIT may still be warming up."""
    status = Stack(StackSettings()).status()
    ups = [up for node in status.kafka_nodes if node.pid and (up := uptime_seconds(node.pid)) is not None]
    if not ups:
        return "broker uptime: unknown (no broker of the local stack found)"
    youngest = min(ups)
    warning = (
        f" (under {WARM_AFTER_S} s: its JIT may still be compiling under the first load, and the first "
        "phases measure that; on 2 cores its C2 compiler took half a core through a demo's first 20 s)"
        if youngest < WARM_AFTER_S
        else ""
    )
    return f"broker up {youngest:,.0f} s{warning}"


def _box_busy_s() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    ticks = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = ticks[3] + ticks[4]
    total = sum(ticks[:8])
    tick = os.sysconf("SC_CLK_TCK")
    return (total - idle) / tick, total / tick


class CpuMeter:
    """CPU used by each part of the pipeline over one phase, in % of one core.

    Processor and projector are the children with their descendants; broker and Postgres the stack's
    server processes with theirs (a disconnected backend's time counts: the kernel adds it to its
    parent's); ``bench`` is this process, the load generator and its result/visibility pollers.
    """

    def __init__(self, children: dict[str, int]) -> None:
        status = Stack(StackSettings()).status()
        self.pids: dict[str, list[int]] = {name: [pid] for name, pid in children.items()}
        self.pids["broker"] = [n.pid for n in status.kafka_nodes if n.pid]
        self.pids["postgres"] = [status.postgres.pid] if status.postgres.pid else []
        self._start: tuple[float, dict[str, float], tuple[float, float]] | None = None

    def _sample(self) -> dict[str, float]:
        used = {name: sum(tree_cpu_seconds(pid) for pid in pids) for name, pids in self.pids.items()}
        used["bench"] = own_cpu()
        return used

    def start(self) -> None:
        """Begin a phase."""
        self._start = (time.monotonic(), self._sample(), _box_busy_s())

    def line(self) -> str:
        """The phase's CPU line: each part, then the whole box (busy of available)."""
        assert self._start is not None, "start() first"
        t0, before, (busy0, total0) = self._start
        wall = time.monotonic() - t0
        after = self._sample()
        busy1, total1 = _box_busy_s()
        parts = ", ".join(f"{name} {100 * (after[name] - before[name]) / wall:.0f}" for name in after)
        cores = os.cpu_count() or 1
        box = 100 * cores * (busy1 - busy0) / max(total1 - total0, 1e-9)
        return f"  cpu, % of one core: {parts}; whole box {box:.0f} of {100 * cores}"


class Pipeline:
    """The fresh installation, its children and a waiter for every projection."""

    def __init__(self, settings: Settings, logs: Path) -> None:
        self.settings = settings
        self.logs = logs
        self.children: list[subprocess.Popen[bytes]] = []
        self.waiter = ProjectionWaiter(settings)

    def start(self, *args: str) -> None:
        """An ``esflow`` child with the bench's environment, logging to a file."""
        log = (self.logs / f"{args[0]}.log").open("wb")
        self.children.append(
            subprocess.Popen(
                [sys.executable, "-m", "esflow", *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )

    def alive(self) -> None:
        """Fail fast when a child died."""
        for child in self.children:
            if child.poll() is not None:
                raise RuntimeError(f"{child.args!r} exited ({child.returncode}); logs in {self.logs}")

    def caught_up(self, token: ConsistencyToken, timeout_s: float = 600) -> None:
        """Block until every projection has applied every write in ``token``."""
        for name in PROJECTIONS:
            self.alive()
            self.waiter.wait(token, name, timeout=timeout_s)

    def run(self, plans: list[Planned], rate: float | None, projection: str | None = None) -> tuple[
        loadgen.LoadReport, ConsistencyToken
    ]:  # fmt: skip
        """One load phase; its report and the token of everything it wrote."""
        positions: list[ConsistencyToken] = []

        def collect(result: CommandResult, _due: float) -> None:
            positions.append(ConsistencyToken.from_result(result))

        self.alive()
        report = loadgen.run(self.settings, plans, rate=rate, projection=projection, on_result=collect)
        token = ConsistencyToken(())
        for t in positions:
            token = token.merge(t)
        return report, token

    def stop(self) -> None:
        """SIGTERM every child (SIGKILL after 60 s) and release the waiter."""
        for child in self.children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in self.children:
            try:
                child.wait(60)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait(30)
        self.waiter.close()


@contextmanager
def installation(partitions: int | None) -> Iterator[Settings]:
    """Fresh topics and schema under a unique prefix, removed afterwards.

    The prefix, schema and groups are set in this process's environment, which the children inherit.
    """
    run = uuid.uuid4().hex[:6]
    os.environ.update(
        ESFLOW_TOPIC_PREFIX=f"plbench-{run}.",
        ESFLOW_PROJECTION_DB_SCHEMA=f"plbench_{run}",
        ESFLOW_PROJECTION_GROUP_PREFIX=f"plbench-{run}-projection",
        ESFLOW_PROCESSOR_GROUP_ID=f"plbench-{run}-processor",
        ESFLOW_LOG_LEVEL="warning",
    )
    if partitions:
        os.environ["ESFLOW_TOPIC_PARTITIONS"] = str(partitions)
    settings = Settings()
    admin = AdminClient({"bootstrap.servers": settings.kafka.bootstrap_servers})
    specs = catalogue(settings.topics)
    apply(admin, specs)
    layout = versions.Layout(settings.projections.db_schema)
    base = create_engine(settings.postgres, settings.projections.db_schema)
    try:
        versions.install(base, layout, [get(n) for n in PROJECTIONS])
        yield settings
    finally:
        for fut in admin.delete_topics([s.name for s in specs], operation_timeout=60).values():
            with suppress(Exception):
                fut.result(60)
        with base.begin() as conn:
            schemas = [layout.base, layout.bi, *(layout.version_schema(n, 1) for n in PROJECTIONS)]
            for dropped in schemas:
                conn.execute(sa.text(f"DROP SCHEMA IF EXISTS {sql.Identifier(dropped).as_string()} CASCADE"))
            conn.execute(sa.text(f"DROP ROLE IF EXISTS {sql.Identifier(layout.reader_role).as_string()}"))
        base.dispose()


def kafka_floor(settings: Settings, records: int) -> str:
    """Kafka's EndToEndLatency on a fresh one-partition topic: its percentiles line."""
    topic = f"{settings.topics.prefix}e2e-latency"
    admin = AdminClient({"bootstrap.servers": settings.kafka.bootstrap_servers})
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(30)
    wait_until_visible(admin, [topic], 30)
    libs = StackSettings().cache_dir / f"kafka-{settings.kafka.version}" / "libs"
    try:
        out = subprocess.run(
            ["java", "-Xmx256m", "-cp", f"{libs}/*", "org.apache.kafka.tools.EndToEndLatency",
             settings.kafka.bootstrap_servers, topic, str(records), "all", "200"],
            capture_output=True, text=True, timeout=600, check=True,
        ).stdout  # fmt: skip
    finally:
        with suppress(Exception):
            admin.delete_topics([topic])[topic].result(30)
    found = re.search(r"Percentiles: 50th = ([\d.]+), 99th = ([\d.]+)", out)
    average = re.search(r"Avg latency: ([\d.]+)", out)
    if not found:
        return f"(EndToEndLatency printed no percentiles: {out[-300:]!r})"
    return f"p50 {float(found[1]):.1f} ms, p99 {float(found[2]):.1f} ms" + (
        f" (avg {float(average[1]):.1f} ms)" if average else ""
    )


def main(argv: list[str] | None = None) -> None:
    """Preload, sustained rate, latencies at three fractions of it, and Kafka's floor."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--preload", type=int, default=20_000, help="commands applied before measuring")
    ap.add_argument("--commands", type=int, default=20_000, help="commands of the sustained phase")
    ap.add_argument("--seconds", type=float, default=20, help="length of each latency phase")
    ap.add_argument("--projection", default="orders", choices=list(PROJECTIONS), help="command->visible in")
    ap.add_argument("--partitions", type=int, default=None, help="default: ESFLOW_TOPIC_PARTITIONS")
    ap.add_argument(
        "--fractions",
        type=lambda text: [float(f) for f in text.split(",")],
        default=list(FRACTIONS),
        help="latency phases as fractions of the sustained rate, comma-separated (default 0.25,0.5,0.75)",
    )
    ap.add_argument(
        "--rates",
        type=lambda text: [float(r) for r in text.split(",")],
        default=None,
        help="latency phases at these commands/s instead of fractions of the sustained rate (A/B runs "
        "of two builds at the same load); with --commands 0 the sustained phase is skipped",
    )
    ap.add_argument("--floor-records", type=int, default=2000)
    ap.add_argument(
        "--processes", action="store_true", help="one process per projection (projector run --processes)"
    )
    args = ap.parse_args(argv)
    seed = iter(range(1, 1000))
    with installation(args.partitions) as settings, tempfile.TemporaryDirectory(prefix="plbench-") as tmp:
        print(
            f"esflow pipeline benchmark: processor + {len(PROJECTIONS)} projections "
            f"({'one process each' if args.processes else 'one projector host'}), "
            f"{settings.topics.partitions} partitions, {os.cpu_count()} CPUs, broker "
            f"{settings.kafka.bootstrap_servers}"
        )
        print(
            f"box speed: a fixed Python workload takes {box_speed_ms():.0f} ms (best of 3; lower is faster)"
        )
        print(broker_uptime_line())
        pipeline = Pipeline(settings, Path(tmp))
        try:
            pipeline.start("processor", "run")
            pipeline.start("projector", "run", *(["--processes"] if args.processes else []))
            if args.preload:
                t0 = time.monotonic()
                plans = loadgen.generate(args.preload, reject_share=0.05, seed=next(seed))
                _, token = pipeline.run(plans, None)
                pipeline.caught_up(token)
                print(f"preload: {args.preload:,} commands applied by every projection in "
                      f"{time.monotonic() - t0:.1f}s")  # fmt: skip
            cpu = CpuMeter({"processor": pipeline.children[0].pid, "projector": pipeline.children[1].pid})
            sustained = 0.0
            if args.commands:
                plans = loadgen.generate(args.commands, reject_share=0.05, seed=next(seed))
                cpu.start()
                t0 = time.monotonic()
                report, token = pipeline.run(plans, None)
                results_s = time.monotonic() - t0
                pipeline.caught_up(token)
                total_s = time.monotonic() - t0
                sustained = args.commands / total_s
                print(
                    f"sustained: {sustained:,.0f} commands/s with every projection caught up "
                    f"({args.commands:,} in {total_s:.1f}s; results alone {args.commands / results_s:,.0f}/s)"
                )
                print(cpu.line())
            elif args.rates is None:
                ap.error("--commands 0 needs --rates (there is no sustained rate to take fractions of)")
            phases = (
                [(rate, f"{rate:,.0f}/s") for rate in args.rates]
                if args.rates is not None
                else [(sustained * f, f"{f:.0%} ({sustained * f:,.0f}/s)") for f in args.fractions]
            )
            for rate, label in phases:
                plans = loadgen.generate(
                    max(1, round(rate * args.seconds)), reject_share=0.05, seed=next(seed)
                )
                cpu.start()
                report, token = pipeline.run(plans, rate, projection=args.projection)
                load_cpu = cpu.line()
                pipeline.caught_up(token)
                print(
                    f"at {label}: "
                    f"command->result {_percentiles(report.result_latency_ms)}; "
                    f"command->visible in {args.projection} {_percentiles(report.projection_latency_ms)} "
                    f"({len(report.projection_latency_ms):,} commands; the other "
                    f"{report.projection_unread:,} accepted wrote nothing it reads)"
                    + (f"; {len(report.unexpected)} unexpected outcomes" if report.unexpected else "")
                )
                print(load_cpu)
        finally:
            pipeline.stop()
        print(f"box speed at the end: {box_speed_ms():.0f} ms")
        print(f"floor, Kafka EndToEndLatency ({args.floor_records:,} records, acks=all, 200 B): "
              f"{kafka_floor(settings, args.floor_records)}")  # fmt: skip


if __name__ == "__main__":
    main()
