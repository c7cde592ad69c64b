"""Transfer (money between two ledger accounts): commands and events.

A transfer records a request and how it ended; the funds-transfer process
(:mod:`esflow.domain.process.funds_transfer`) moves the money on the accounts and reports back.
"""

from __future__ import annotations

from typing import ClassVar
from uuid import UUID

from esflow.domain.messages import AggregateType, Command, Event
from esflow.domain.values import Money


class _Transfer:
    aggregate_type: ClassVar[AggregateType] = "transfer"


class RequestTransfer(_Transfer, Command):
    """Ask to move money from one account to another."""

    source_account_id: UUID
    target_account_id: UUID
    amount: Money
    reference: str | None = None


class CompleteTransfer(_Transfer, Command):
    """Record that the money reached the target account."""


class FailTransfer(_Transfer, Command):
    """Record that the transfer did not happen (the source was refunded if it had been debited)."""

    reason: str


class TransferRequested(_Transfer, Event):
    """A transfer between two accounts was requested."""

    source_account_id: UUID
    target_account_id: UUID
    amount: Money
    reference: str | None = None


class TransferCompleted(_Transfer, Event):
    """The money of a transfer reached the target account."""


class TransferFailed(_Transfer, Event):
    """A transfer did not happen; no money moved in the end."""

    reason: str
