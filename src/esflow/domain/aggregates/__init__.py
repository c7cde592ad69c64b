"""The aggregates of the reference domain, by aggregate type."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from esflow.domain.aggregates.account import ACCOUNT
from esflow.domain.aggregates.base import Aggregate, Decision, Rejection, execute
from esflow.domain.aggregates.order import ORDER
from esflow.domain.aggregates.product import PRODUCT
from esflow.domain.aggregates.transfer import TRANSFER

AGGREGATES: Mapping[str, Aggregate[Any]] = MappingProxyType(
    {a.aggregate_type: a for a in (PRODUCT, ORDER, ACCOUNT, TRANSFER)}
)
"""Every aggregate, by its type name (``product``, ``order``, ``account``, ``transfer``)."""

__all__ = [
    "ACCOUNT",
    "AGGREGATES",
    "ORDER",
    "PRODUCT",
    "TRANSFER",
    "Aggregate",
    "Decision",
    "Rejection",
    "execute",
]
