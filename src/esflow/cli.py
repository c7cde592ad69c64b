"""The `esflow` command line.

Subcommands are plugged in by the deployables through the ``esflow.commands`` entry-point group
(see pyproject.toml), so this shared module never imports producers, processors, projections or ops.
Expected failures (:class:`~esflow.errors.EsflowError`) print one line and exit non-zero.
"""

from __future__ import annotations

import sys
from importlib.metadata import entry_points

import click

from esflow import __version__
from esflow.errors import EsflowError


class _PluginGroup(click.Group):
    """A click group whose subcommands come from entry points, loaded only when used."""

    group_name = "esflow.commands"

    def _entry_points(self) -> dict[str, object]:
        return {ep.name: ep for ep in entry_points(group=self.group_name)}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self._entry_points()))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        builtin = super().get_command(ctx, cmd_name)
        if builtin is not None:
            return builtin
        ep = self._entry_points().get(cmd_name)
        if ep is None:
            return None
        command = ep.load()  # type: ignore[attr-defined]
        if not isinstance(command, click.Command):
            raise EsflowError(f"entry point {cmd_name!r} is not a click command")
        return command


@click.group(cls=_PluginGroup)
@click.version_option(__version__, prog_name="esflow")
def cli() -> None:
    """esflow: event sourcing and CQRS on Apache Kafka and PostgreSQL."""


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the CLI, turning expected errors into one line and an exit code."""
    try:
        cli.main(args=argv, prog_name="esflow", standalone_mode=False)
    except EsflowError as exc:
        click.echo(f"esflow: error: {exc.one_line()}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(1)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(0)
