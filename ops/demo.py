"""`esflow demo`: the main job. The whole pipeline on the local stack, a workload, and what it built.

1. the local stack (Kafka + PostgreSQL) is brought up, the topic catalogue and the read-model
   migrations are applied;
2. the command processor and the projection workers start as their own processes, as in production;
3. the load generator sends realistic shop/ledger traffic (with deliberate rejections) and measures
   command->result and command->read-model latency; first ``--warmup`` seconds of it, reported on their
   own, because a broker that has just started compiles its hot paths (the JVM's JIT) under the first
   load: on a 2-core box its C2 compiler took half a core for the demo's first 20 s, and command->result
   p99 was 0.7-1.1 s instead of 0.19 s on a broker that had already served a run;
4. once every projection has caught up with every accepted command, a summary is read from the read
   models (orders by status, top products, revenue by day, balances);
5. everything the demo started is stopped again; with ``--keep-running`` only once Ctrl-C (or SIGTERM)
   arrives, so the pipeline stays up in the foreground for the README's shell examples.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click
import psycopg

from esflow.errors import EsflowError, StackError
from esflow.messaging import topics
from esflow.messaging.kafka import admin_client
from esflow.messaging.results import CommandResult
from esflow.query.consistency import ConsistencyToken, ProjectionWaiter
from esflow.readmodel.versions import Layout
from esflow.settings import Settings, load_settings
from ops.stack.manager import Stack
from producers import loadgen as lg
from producers.workload import Planned
from projections.registry import PROJECTIONS


def _esflow(*args: str) -> list[str]:
    return [sys.executable, "-m", "esflow", *args]


@contextmanager
def _service(
    name: str, argv: list[str], log_dir: Path, ready_marker: str, timeout_s: float
) -> Iterator[None]:
    """Run one esflow service as a child process until the block ends (SIGTERM, then SIGKILL)."""
    log = log_dir / f"demo-{name}.log"
    with log.open("w") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + timeout_s
        while ready_marker not in log.read_text(errors="replace"):
            if proc.poll() is not None:
                raise StackError(
                    f"the {name} exited during start-up (exit {proc.returncode})", hint=f"see {log}"
                )
            if time.monotonic() > deadline:
                raise StackError(f"the {name} was not ready within {timeout_s:.0f}s", hint=f"see {log}")
            time.sleep(0.2)
        yield
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait_for_projections(settings: Settings, token: ConsistencyToken, timeout_s: float) -> dict[str, float]:
    """Seconds until each projection had applied every accepted command's events on its topics."""
    waited: dict[str, float] = {}
    with ProjectionWaiter(settings) as waiter:
        for name, factory in PROJECTIONS.items():
            wanted = {topics.source_topic(a, settings.topics) for a in factory().aggregates}
            part = ConsistencyToken(tuple(x for x in token.positions if x[0] in wanted))
            waited[name] = waiter.wait(part, name, timeout=timeout_s)
    return waited


def _send(settings: Settings, plans: list[Planned], rate: float) -> tuple[lg.LoadReport, ConsistencyToken]:
    """Send ``plans`` at ``rate``; the report and the positions of every accepted command's events."""
    accepted: list[CommandResult] = []
    report = lg.run(
        settings, plans, rate=rate, result_timeout_s=180, projection="event_log",
        on_result=lambda r, _t: accepted.append(r) if r.status == "accepted" else None,
    )  # fmt: skip
    token = ConsistencyToken(())
    for r in accepted:
        token = token.merge(ConsistencyToken.from_result(r))
    return report, token


def _warm_up(settings: Settings, count: int, rate: float, reject_share: float, seed: int) -> None:
    """Send ``count`` commands at ``rate``, print their latencies, wait until every projection applied them.

    The measured load then starts on a warm pipeline and without the warm-up's backlog.
    """
    click.echo(f"4/5 warm-up: {count} commands at {rate:,.0f}/s, measured apart from the load below")
    plans = lg.generate(count, reject_share=reject_share, seed=seed)
    report, token = _send(settings, plans, rate)
    for line in report.lines():
        if "latency" in line or "unexpected" in line:
            click.echo("    warm-up " + line)
    if report.unexpected:
        raise EsflowError(
            f"{len(report.unexpected)} warm-up commands had an unexpected outcome: {report.unexpected[0]}"
        )
    _wait_for_projections(settings, token, 180)
    click.echo("    warm-up " + _this_run(plans, report).replace("this run ", "", 1))


def _this_run(plans: list[Planned], report: lg.LoadReport) -> str:
    """What this run's load added, counted from what it sent (the read models hold every run)."""
    created = Counter(
        p.envelope.command.type_name()
        for p in plans
        if p.expect == "accepted" and p.envelope.command.type_name() in _CREATES
    )
    made = ", ".join(f"{created[t]} {what}" for t, what in _CREATES.items())
    rejected = sum(report.rejected.values())
    return f"this run created {made}; {report.accepted} commands accepted, {rejected} rejected"


# The creation commands, and what the summary calls their aggregates.
_CREATES = {"RegisterProduct": "products", "OpenAccount": "accounts", "PlaceOrder": "orders"}


def _summary(settings: Settings) -> list[str]:
    url = settings.postgres.database_url.replace("postgresql+psycopg://", "postgresql://", 1)
    # Read through the bi views, as a BI tool does.
    schema = Layout(settings.projections.db_schema).bi
    out: list[str] = []
    with psycopg.connect(url, options=f"-c search_path={schema}") as conn:
        out.append("orders by status:")
        for status, n, total in conn.execute(
            "SELECT status, count(*), coalesce(sum(items_total), 0) FROM orders "
            "GROUP BY status ORDER BY 2 DESC"
        ):
            out.append(f"  {status:<10} {n:>7}  {total:>14,.2f}")
        out.append("top products by units ordered:")
        for sku, name, units, revenue in conn.execute(
            "SELECT i.sku, coalesce(p.name, '?'), sum(i.quantity), sum(i.line_total) FROM order_items i "
            "LEFT JOIN product_catalog p USING (product_id) GROUP BY 1, 2 ORDER BY 3 DESC LIMIT 5"
        ):
            out.append(f"  {sku:<16} {name:<14} {units:>7} units  {revenue:>14,.2f}")
        out.append("revenue by day:")
        for day, currency, gross, refunds, net, orders in conn.execute(
            "SELECT day, currency, gross, refunds, net, orders FROM daily_revenue ORDER BY day DESC LIMIT 7"
        ):
            out.append(
                f"  {day} {currency}  gross {gross:>12,.2f}  refunds {refunds:>10,.2f}  net {net:>12,.2f}"
                f"  ({orders} orders)"
            )
        n, total, top = conn.execute(
            "SELECT count(*), coalesce(sum(balance), 0), coalesce(max(balance), 0) FROM account_balances"
        ).fetchone() or (0, 0, 0)
        out.append(f"balances: {n} accounts, {total:,.2f} in total, largest {top:,.2f}")
        products, skus = conn.execute(
            "SELECT count(*), count(DISTINCT sku) FROM product_catalog"
        ).fetchone() or (0, 0)
        out.append(f"catalogue: {products} products, {skus} distinct SKUs")
        (events,) = conn.execute("SELECT count(*) FROM event_log").fetchone() or (0,)
        out.append(f"event_log: {events} events")
    return out


@click.command()
@click.option("--commands", "count", type=click.IntRange(min=1), default=4000, show_default=True)
@click.option(
    "--rate",
    type=float,
    default=200.0,
    show_default=True,
    help="Commands/s, open loop (seven workers share the CPU).",
)
@click.option("--reject-share", type=click.FloatRange(0, 1), default=0.05, show_default=True)
@click.option(
    "--warmup",
    "warmup_s",
    type=click.FloatRange(min=0),
    default=20.0,
    show_default=True,
    help="Seconds of load at --rate before the measured load, reported on their own line (a freshly "
    "started broker compiles its hot paths meanwhile); 0: none.",
)
@click.option(
    "--keep-running",
    is_flag=True,
    help="After the summary, keep the pipeline running in the foreground until Ctrl-C or SIGTERM.",
)
def demo(count: int, rate: float, reject_share: float, warmup_s: float, keep_running: bool) -> None:
    """Run the whole pipeline on the local stack with a demo workload and print what it built."""
    settings = load_settings()
    stack = Stack(settings.stack, settings.kafka, settings.postgres)
    started_stack = not stack.status().running
    click.echo("1/5 stack: " + ("starting Kafka and PostgreSQL…" if started_stack else "already running"))
    status = stack.up()
    click.echo(f"    kafka {status.kafka_bootstrap}, postgres {status.database_url}")
    try:
        result = topics.apply(
            admin_client(settings.kafka), topics.catalogue(settings.topics),
            replication_factor=settings.topics.replication_factor,
        )  # fmt: skip
        click.echo(
            f"2/5 topics: {len(result.create)} created, {len(result.unchanged) + len(result.alter)} present"
        )
        migrate = subprocess.run(_esflow("db", "migrate"), capture_output=True, text=True, check=False)
        if migrate.returncode != 0:
            raise StackError(f"migrations failed: {migrate.stderr.strip().splitlines()[-1:]}")
        click.echo("    read models migrated")
        log_dir = settings.stack.stack_dir / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        click.echo("3/5 starting the command processor and the projection workers…")
        with (
            _service("processor", _esflow("processor", "run"), log_dir, "assigned", 120),
            _service("projector", _esflow("projector", "run"), log_dir, "Worker ready", 180),
        ):
            seed = int(time.time())
            if warmup_s > 0:
                _warm_up(settings, max(1, round(warmup_s * rate)), rate, reject_share, seed + 1)
            click.echo(
                f"4/5 load: {count} commands at {rate:,.0f}/s ({reject_share:.0%} meant to be rejected)"
            )
            plans = lg.generate(count, reject_share=reject_share, seed=seed)
            report, token = _send(settings, plans, rate)
            for line in report.lines():
                click.echo("    " + line)
            waited = _wait_for_projections(settings, token, 180)
            click.echo(f"    all {len(waited)} projections caught up")
            click.echo("    " + _this_run(plans, report))
            click.echo("5/5 read models, the whole database (this run and every earlier one):")
            for line in _summary(settings):
                click.echo("    " + line)
            if keep_running:
                click.echo(
                    "pipeline running in the foreground (--keep-running): try README.md's shell examples "
                    "in another terminal; Ctrl-C stops everything this demo started."
                )
                _block_until_interrupted()
                click.echo("stopping the processor and the projection workers…")
    finally:
        if started_stack:
            stack.down()
            click.echo("stack stopped (it was started by this demo)")
    if report.unexpected:
        raise EsflowError(
            f"{len(report.unexpected)} commands had an unexpected outcome: {report.unexpected[0]}"
        )


def _block_until_interrupted() -> None:
    """Sleep until Ctrl-C (SIGINT) or SIGTERM, so a service manager can stop the demo like a terminal."""

    def interrupt(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)


__all__ = ["demo"]
