"""Process managers: pure definitions of long-running processes across aggregates.

The framework is in :mod:`esflow.domain.process.base` (read its docstring for the contract with the
runtime); the reference processes are :mod:`esflow.domain.process.fulfilment` (order fulfilment) and
:mod:`esflow.domain.process.funds_transfer` (funds transfer), listed by name in :data:`PROCESSES`.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from esflow.domain.process.base import (
    ENDED_STATUSES,
    TIMEOUT,
    Action,
    AnswerIn,
    CancelTimer,
    EventIn,
    Input,
    ProcessDefinition,
    Reaction,
    RetryPolicy,
    Send,
    SetTimer,
    Status,
    TimerIn,
    command_id,
)
from esflow.domain.process.fulfilment import OrderFulfilment
from esflow.domain.process.funds_transfer import FundsTransfer

PROCESSES: Mapping[str, type[ProcessDefinition[Any]]] = MappingProxyType(
    {p.name: p for p in (OrderFulfilment, FundsTransfer)}
)
"""The reference process definitions by name; each constructs with defaults (``OrderFulfilment`` takes
its ``payment_window``)."""

__all__ = [
    "ENDED_STATUSES",
    "PROCESSES",
    "TIMEOUT",
    "Action",
    "AnswerIn",
    "CancelTimer",
    "EventIn",
    "FundsTransfer",
    "Input",
    "OrderFulfilment",
    "ProcessDefinition",
    "Reaction",
    "RetryPolicy",
    "Send",
    "SetTimer",
    "Status",
    "TimerIn",
    "command_id",
]
