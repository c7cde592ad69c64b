"""`esflow stack …`: run the local Kafka + PostgreSQL stack without Docker."""

from __future__ import annotations

import json
import sys
import time

import click

from ops.stack import proc
from ops.stack.manager import Stack, StackStatus


def _print_status(status: StackStatus) -> None:
    def line(name: str, pid: int | None, answers: bool, rss: int | None) -> str:
        if pid is None:
            return f"{name:<9} stopped"
        state = "up" if answers else "NOT ANSWERING"
        mem = f", rss {rss / 1024:.0f} MiB" if rss else ""
        return f"{name:<9} {state} (pid {pid}{mem})"

    if len(status.kafka_nodes) <= 1:
        click.echo(line("kafka", status.kafka.pid, status.kafka.answers, status.kafka.rss_kib))
    else:
        for node in status.kafka_nodes:
            name = f"kafka-{node.node_id}"
            ports = f" ports {node.port}/{node.controller_port}"
            click.echo(line(name, node.pid, node.answers, node.rss_kib) + ports)
    click.echo(line("postgres", status.postgres.pid, status.postgres.answers, status.postgres.rss_kib))
    click.echo(f"ESFLOW_KAFKA_BOOTSTRAP={status.kafka_bootstrap}")
    click.echo(f"ESFLOW_DATABASE_URL={status.database_url}")
    click.echo(f"stack dir: {status.stack_dir}")


@click.group()
def stack() -> None:
    """Run the local Kafka 4.3.1 (KRaft) + PostgreSQL 15 stack."""


@stack.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
@click.option(
    "--brokers",
    type=click.IntRange(1, 9),
    default=None,
    help="Kafka nodes (KRaft combined mode, consecutive ports); default: the existing cluster's size, "
    "else ESFLOW_KAFKA_BROKERS (1). Three nodes replicate topics 3 times with min.insync.replicas=2.",
)
def up(as_json: bool, brokers: int | None) -> None:
    """Start Kafka and PostgreSQL (idempotent) and print the connection strings."""
    stack = Stack(brokers=brokers)
    if not as_json and not stack.kafka.jars.present():
        click.echo("first run: resolving the Kafka jars from Maven Central…", err=True)
    status = stack.up()
    if as_json:
        click.echo(json.dumps(status.to_json()))
        return
    _print_status(status)
    click.echo(f"ready in {status.timings_s.get('total', 0):.1f}s")


@stack.command()
def down() -> None:
    """Stop the servers this stack started (never anything else)."""
    stopped = Stack().down()
    for name, was_running in stopped.items():
        click.echo(f"{name:<9} {'stopped' if was_running else 'was not running'}")


@stack.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (stable interface).")
def status(as_json: bool) -> None:
    """Report whether each server runs and answers; exit 1 when the stack is not fully up."""
    st = Stack().status()
    if as_json:
        click.echo(json.dumps(st.to_json()))
    else:
        _print_status(st)
    sys.exit(0 if st.running else 1)


@stack.command()
@click.argument("server", default="kafka")
@click.option("-n", "--lines", default=50, show_default=True, help="How many lines to show.")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines.")
def logs(server: str, lines: int, follow: bool) -> None:
    """Show a server's log: kafka (node 1), kafka-<n> (node n), kafka-stdout or postgres."""
    files = Stack().log_files()
    if server not in files:
        raise click.BadParameter(f"choose one of {', '.join(files)}", param_hint="SERVER")
    path = files[server]
    if not path.exists():
        raise click.ClickException(f"no log yet at {path} (has the stack been started?)")
    click.echo(proc.tail(path, lines))
    if not follow:
        return
    with path.open() as fh:
        fh.seek(0, 2)
        while True:
            chunk = fh.read()
            if chunk:
                click.echo(chunk, nl=False)
            else:
                time.sleep(0.5)


@stack.command()
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def reset(yes: bool) -> None:
    """Stop the stack and delete all its data (the cached jars stay)."""
    st = Stack()
    if not yes and not sys.stdin.isatty():
        raise click.UsageError("refusing to delete the stack's data without --yes (stdin is not a terminal)")
    if not yes:
        click.confirm(f"delete every topic and database under {st.settings.stack_dir}?", abort=True)
    st.reset()
    click.echo(f"stack data removed from {st.settings.stack_dir}")
