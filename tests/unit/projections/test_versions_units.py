"""Naming and bookkeeping rules of projection versions that need no server."""

from __future__ import annotations

import pytest

from esflow.readmodel import versions
from esflow.readmodel.versions import Layout, VersionError
from projections.registry import PROJECTIONS


def test_the_default_layout_uses_the_documented_names() -> None:
    layout = Layout()
    assert (layout.bi, layout.reader_role, layout.version_schema("orders", 3)) == (
        "bi",
        "esflow_bi_reader",
        "rm_orders_v3",
    )
    assert layout.registry == '"public"."projection_versions"'


def test_another_base_prefixes_every_derived_name() -> None:
    layout = Layout("staging")
    assert (layout.bi, layout.reader_role, layout.version_schema("orders", 1)) == (
        "staging_bi",
        "staging_esflow_bi_reader",
        "staging_rm_orders_v1",
    )


@pytest.mark.parametrize("bad", ["Public", "a-b", "1x", 'x"; drop', ""])
def test_unsafe_schema_names_are_refused(bad: str) -> None:
    with pytest.raises(VersionError, match="invalid schema name"):
        Layout(bad)


def test_behind_lists_only_partitions_short_of_their_target() -> None:
    target = {("t", 0): 10, ("t", 1): 5, ("t", 2): -1}
    assert versions.behind(target, {("t", 0): 10, ("t", 1): 4}) == {("t", 1): 5}
    assert versions.behind(target, {}) == {("t", 0): 10, ("t", 1): 5}


def test_every_projection_has_ddl_for_its_code_version_and_views() -> None:
    for name, factory in PROJECTIONS.items():
        projection = factory()
        assert projection.read_model.name == name
        assert projection.read_model.ddl_at(projection.version).tables, name
        assert projection.read_model.views, name
