"""The declaration of one read model: its tables, its DDL per code version and its BI views, in one place.

A projection module of the deployable declares its read model once, beside the code that fills it::

    ORDERS = sa.Table("orders", metadata, ...)           # how the code reads and writes it
    READ_MODEL = ReadModel(
        name="orders",                                    # = the projection's name
        tables=(ORDERS,),
        ddl={1: ReadModelDDL(tables=(...), indexes=(...), frozen="<sha256>")},
        views=(View(name="orders", ...),),                # the BI contract, with column meanings
    )

    class OrdersProjection:
        name = "orders"
        version = 1
        read_model = READ_MODEL
        ...

The library never imports the deployable: everything that creates schemas, points the ``bi`` views or
writes ``docs/bi.md`` takes the declarations it is handed (:attr:`Projection.read_model
<esflow.readmodel.projection.Projection.read_model>`), and the deployable's registry lists them.
:func:`problems` says what is inconsistent in one declaration; a unit test runs it over the registry.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import sqlalchemy as sa

from esflow.errors import MigrationError
from esflow.readmodel.contract import View
from esflow.readmodel.migrations import ReadModelDDL


@dataclass(frozen=True)
class ReadModel:
    """A projection's tables (SQLAlchemy, for its code), frozen DDL per code version, and BI views."""

    name: str
    """The projection's name: also the checkpoint key, the version schema's infix and the main view's."""
    tables: tuple[sa.Table, ...]
    """Every table the projection writes, the ones BI never sees (lookup maps) included."""
    ddl: Mapping[int, ReadModelDDL]
    """The tables' DDL by code version; a released version's statements never change."""
    views: tuple[View, ...]
    """The views of the ``bi`` schema this read model serves, each over one of ``tables``."""

    def ddl_at(self, code_version: int) -> ReadModelDDL:
        """The DDL of one code version, or a :class:`~esflow.errors.MigrationError` naming the known ones."""
        try:
            return self.ddl[code_version]
        except KeyError:
            raise MigrationError(
                f"no DDL for projection {self.name!r} at code version {code_version}",
                hint=f"known: {sorted(self.ddl)}",
            ) from None

    @property
    def newest(self) -> ReadModelDDL:
        """The DDL of the highest code version declared."""
        return self.ddl[max(self.ddl)]

    def table(self, name: str) -> sa.Table:
        """The declared table called ``name`` (a :class:`KeyError` otherwise)."""
        for table in self.tables:
            if table.name == name:
                return table
        raise KeyError(f"read model {self.name} declares no table {name!r}")


def problems(model: ReadModel) -> list[str]:
    """What is inconsistent in one declaration (empty when nothing is).

    Every view is over a declared table and lists all its columns in table order (a BI view hides
    nothing and reorders nothing), views are named after their projection or prefixed by it, and every
    code version's DDL carries the digest it was frozen with.
    """
    found: list[str] = []
    if not model.ddl:
        found.append(f"{model.name}: no DDL")
    if not model.views:
        found.append(f"{model.name}: no BI view")
    for view in model.views:
        if view.projection != model.name:
            found.append(f"{model.name}: view {view.name} says it belongs to {view.projection}")
        if view.name != model.name and not view.name.startswith(f"{model.name}_"):
            found.append(f"{model.name}: view {view.name} is not named after the projection")
        try:
            table = model.table(view.table)
        except KeyError as exc:
            found.append(str(exc.args[0]))
            continue
        if view.column_names != tuple(c.name for c in table.columns):
            found.append(f"{model.name}: view {view.name} must list the columns of {table.name} in order")
    for code_version, ddl in sorted(model.ddl.items()):
        if ddl.frozen != ddl.digest:
            found.append(
                f"{model.name} v{code_version}: DDL digest {ddl.digest} but frozen={ddl.frozen!r}; a "
                "released version's DDL never changes (declare a new code version), a new one records it"
            )
    return found
