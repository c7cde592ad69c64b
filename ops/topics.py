"""`esflow topics …`: apply the declarative topic catalogue to the cluster."""

from __future__ import annotations

import click

from esflow.messaging import topics as catalogue_mod
from esflow.messaging.kafka import admin_client
from esflow.settings import load_settings


@click.group()
def topics() -> None:
    """Manage the topics in the catalogue (esflow.messaging.topics)."""


@topics.command("apply")
@click.option("--dry-run", is_flag=True, help="Print what would change; change nothing.")
def apply_cmd(dry_run: bool) -> None:
    """Create missing topics and align their configs; refuse partition-count changes."""
    settings = load_settings()
    specs = catalogue_mod.catalogue(settings.topics)
    result = catalogue_mod.apply(
        admin_client(settings.kafka),
        specs,
        replication_factor=settings.topics.replication_factor,
        min_insync_replicas=settings.topics.min_insync_replicas,
        dry_run=dry_run,
    )
    for line in result.lines():
        click.echo(("would " if dry_run and not line.startswith("ok") else "") + line)
    click.echo(
        f"{len(result.create)} created, {len(result.alter)} altered, {len(result.unchanged)} unchanged"
        + (" (dry run)" if dry_run else "")
    )


@topics.command("list")
def list_cmd() -> None:
    """Print the catalogue: name, partitions, cleanup policy, retention, purpose."""
    for spec in catalogue_mod.catalogue(load_settings().topics):
        retention = "infinite" if spec.retention_ms < 0 else f"{spec.retention_ms // catalogue_mod.DAY_MS}d"
        policy = "compact" if spec.compacted else "delete"
        click.echo(f"{spec.name:<28} {spec.partitions:>3}  {policy:<8} {retention:<9} {spec.purpose}")
