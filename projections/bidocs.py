"""``python -m projections.bidocs [--check]``: regenerate the view reference of docs/bi.md.

The sections come from the registered read models' declarations (:mod:`esflow.readmodel.bidocs`);
``--check`` only says whether the committed page is current (exit status 1 when it is not), as the
unit test that guards it does.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from esflow.readmodel.bidocs import regenerate
from projections import registry

PAGE = Path(__file__).resolve().parents[1] / "docs" / "bi.md"
"""The page in a source checkout."""


def current(page: str) -> str:
    """``page`` with its generated part made from the registered read models."""
    return regenerate(page, registry.views())


@click.command()
@click.option("--check", is_flag=True, help="Only check that the page is current; exit 1 if not.")
@click.option("--page", type=click.Path(path_type=Path, dir_okay=False), default=PAGE, show_default=True)
def main(check: bool, page: Path) -> None:
    """Regenerate the view reference in docs/bi.md from the read-model declarations."""
    text = page.read_text(encoding="utf-8")
    fresh = current(text)
    if fresh == text:
        click.echo(f"{page} is current")
        return
    if check:
        click.echo(f"{page} is stale: run `python -m projections.bidocs`", err=True)
        sys.exit(1)
    page.write_text(fresh, encoding="utf-8")
    click.echo(f"{page} regenerated")


if __name__ == "__main__":
    main()
