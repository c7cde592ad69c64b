"""Fixtures of the projection tests (shared by tests/integration/projections through its conftest)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.projections.harness import Harness
from tests.support.services import Services


@pytest.fixture
def harness(services: Services, pg_schema: str, tmp_path: Path) -> Iterator[Harness]:
    """Isolated topics (3 partitions), consumer groups and migrated schema, torn down afterwards."""
    logs = tmp_path / "logs"
    logs.mkdir()
    h = Harness(services, pg_schema, prefix=f"p{uuid.uuid4().hex[:8]}.", partitions=3, logs=logs)
    h.setup()
    yield h
    h.teardown()
