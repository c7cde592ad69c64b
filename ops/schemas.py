"""`esflow schemas …`: check the Avro contract, push it to a schema registry, generate the result schema."""

from __future__ import annotations

from pathlib import Path

import click

from esflow.errors import ConfigError, SchemaError
from esflow.messaging import result_schema
from esflow.messaging.contract import check
from esflow.messaging.registry import ConfluentFraming, topic_for
from esflow.messaging.schemas import SchemaCatalog, SchemaVersion
from esflow.messaging.upcasting import DEFAULT_UPCASTERS
from esflow.settings import load_settings


@click.group()
def schemas() -> None:
    """The Avro contract in schemas/ (esflow.messaging.schemas)."""


@schemas.command("check")
@click.option("--dir", "directory", type=click.Path(path_type=Path), help="Schema root (default: settings).")
def check_cmd(directory: Path | None) -> None:
    """Fail with one line per problem: compatibility, naming, missing docs, model drift."""
    s = load_settings().schemas
    root = directory or s.dir
    problems = check(root, event_mode=s.event_compatibility, command_mode=s.command_compatibility)
    for problem in problems:
        click.echo(problem)
    if problems:
        raise SchemaError(f"{len(problems)} schema problem(s) in {root}")
    n = sum(1 for _ in root.rglob("*.avsc"))
    click.echo(
        f"{n} schemas ok (events {s.event_compatibility}, commands {s.command_compatibility}, models in step)"
    )


@schemas.command("register")
@click.option("--dir", "directory", type=click.Path(path_type=Path), help="Schema root (default: settings).")
@click.option("--url", help="Registry URL (default: ESFLOW_SCHEMA_REGISTRY_URL).")
def register_cmd(directory: Path | None, url: str | None) -> None:
    """Register every schema version, oldest first, under `<topic>-<record>` subjects."""
    settings = load_settings()
    s = settings.schemas
    registry_url = url or s.registry_url
    if not registry_url:
        raise ConfigError(
            "no schema registry configured", hint="set ESFLOW_SCHEMA_REGISTRY_URL or pass --url"
        )
    root = directory or s.dir
    # Never push a contract that fails its own check: the registry would keep it forever.
    problems = check(root, event_mode=s.event_compatibility, command_mode=s.command_compatibility)
    if problems:
        raise SchemaError(f"refusing to register: {problems[0]}", hint="run `esflow schemas check`")
    catalog = SchemaCatalog.load(root)
    framing = ConfluentFraming.from_url(registry_url, catalog)
    prefix = settings.topics.prefix
    bridged = DEFAULT_UPCASTERS.steps()

    def compatibility(sv: SchemaVersion) -> str:
        # The registry knows nothing of code upcasters: a subject with one would refuse its next
        # version, so esflow's own epoch-aware check (above) is its only gate.
        if sv.name in bridged:
            return "NONE"
        return s.event_compatibility if sv.kind == "event" else s.command_compatibility

    registered = framing.register(
        catalog, topic=lambda sv: topic_for(sv, prefix), compatibility=compatibility
    )
    for subject, schema_id, schema in registered:
        click.echo(f"{subject} v{schema.version} -> id {schema_id}")


@schemas.command("results")
@click.option("--dir", "directory", type=click.Path(path_type=Path), help="Schema root (default: settings).")
@click.option("--check", "check_only", is_flag=True, help="Only fail when the committed file is stale.")
def results_cmd(directory: Path | None, check_only: bool) -> None:
    """Write the JSON Schema of command-results values (results/command-result.schema.json)."""
    path = (directory or load_settings().schemas.dir) / result_schema.RESULT_SCHEMA_PATH
    if check_only:
        if not result_schema.is_current(path):
            raise SchemaError(
                f"{path} is not what the result models generate", hint="run `esflow schemas results`"
            )
        click.echo(f"{path} is current")
        return
    result_schema.write(path)
    click.echo(f"wrote {path}")
