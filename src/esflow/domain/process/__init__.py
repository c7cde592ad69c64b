"""Process managers: pure definitions of long-running processes across aggregates.

The framework is in :mod:`esflow.domain.process.base` (read its docstring for the contract with the
runtime); the reference processes (order fulfilment, funds transfer) are modules beside it.
"""

from __future__ import annotations

from esflow.domain.process.base import (
    ENDED_STATUSES,
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

__all__ = [
    "ENDED_STATUSES",
    "Action",
    "AnswerIn",
    "CancelTimer",
    "EventIn",
    "Input",
    "ProcessDefinition",
    "Reaction",
    "RetryPolicy",
    "Send",
    "SetTimer",
    "Status",
    "TimerIn",
    "command_id",
]
