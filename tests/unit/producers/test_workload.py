"""The demo/loadgen workload: SKUs never repeat, within a run or across runs with the same seed."""

from __future__ import annotations

import itertools

from esflow.domain.product import RegisterProduct
from producers.workload import Workload


def _skus(workload: Workload, count: int = 400) -> list[str]:
    commands = (p.envelope.command for p in itertools.islice(workload, count))
    return [c.sku for c in commands if isinstance(c, RegisterProduct)]


def test_two_runs_with_one_seed_register_disjoint_skus() -> None:
    first, second = _skus(Workload(seed=7)), _skus(Workload(seed=7))
    assert len(first) == len(second) == Workload().min_products
    assert len(set(first)) == len(first)
    assert not set(first) & set(second)
