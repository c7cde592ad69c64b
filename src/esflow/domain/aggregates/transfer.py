"""The Transfer aggregate: a request to move money between two accounts, and how it ended.

Life cycle (anything else is an ``invalid_state`` rejection)::

    REQUESTED -CompleteTransfer-> COMPLETED
        |
        +-------FailTransfer----> FAILED

Rules:
- a transfer is requested once, between two different accounts, for a positive amount;
- it ends once, completed or failed, and stays so: the funds-transfer process is the one that ends it,
  after the money moved (completed) or after it gave back what it took (failed).

The aggregate does not move money and does not know the accounts' balances or currencies: the accounts
decide that when the process withdraws and deposits.
"""

from __future__ import annotations

from enum import StrEnum
from uuid import UUID

from esflow.domain.aggregates.base import (
    Aggregate,
    Decision,
    already_exists,
    invalid_state,
    not_found,
    positive,
    reject,
)
from esflow.domain.messages import Command, Event
from esflow.domain.reasons import INVALID_AMOUNT, SAME_ACCOUNT, UNKNOWN_COMMAND
from esflow.domain.transfer import (
    CompleteTransfer,
    FailTransfer,
    RequestTransfer,
    TransferCompleted,
    TransferFailed,
    TransferRequested,
)
from esflow.domain.values import Frozen, Money


class TransferStatus(StrEnum):
    """Where a transfer is: requested, then completed or failed for good."""

    REQUESTED = "REQUESTED"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"


class TransferState(Frozen):
    """A requested transfer."""

    source_account_id: UUID
    target_account_id: UUID
    amount: Money
    status: TransferStatus = TransferStatus.REQUESTED
    failure_reason: str | None = None


def decide(state: TransferState | None, command: Command) -> Decision:
    """The events a transfer command appends, or why it is refused."""
    if isinstance(command, RequestTransfer):
        if state is not None:
            return already_exists("transfer")
        if command.source_account_id == command.target_account_id:
            return reject(
                SAME_ACCOUNT,
                "a transfer needs two different accounts",
                account_id=str(command.source_account_id),
            )
        if not positive(command.amount):
            return reject(INVALID_AMOUNT, "the amount must be positive", amount=str(command.amount.amount))
        return (
            TransferRequested(
                source_account_id=command.source_account_id,
                target_account_id=command.target_account_id,
                amount=command.amount,
                reference=command.reference,
            ),
        )
    if state is None:
        return not_found("transfer")
    match command:
        case CompleteTransfer():
            if state.status is not TransferStatus.REQUESTED:
                return invalid_state("transfer", command, state.status)
            return (TransferCompleted(),)
        case FailTransfer(reason=reason):
            if state.status is not TransferStatus.REQUESTED:
                return invalid_state("transfer", command, state.status)
            return (TransferFailed(reason=reason),)
    return reject(UNKNOWN_COMMAND, f"{command.type_name()} is not a transfer command")


def evolve(state: TransferState | None, event: Event) -> TransferState:
    """The transfer after ``event``."""
    if isinstance(event, TransferRequested):
        return TransferState(
            source_account_id=event.source_account_id,
            target_account_id=event.target_account_id,
            amount=event.amount,
        )
    if state is None:
        raise ValueError(f"{event.type_name()} before TransferRequested")
    match event:
        case TransferCompleted():
            return state.model_copy(update={"status": TransferStatus.COMPLETED})
        case TransferFailed(reason=reason):
            return state.model_copy(update={"status": TransferStatus.FAILED, "failure_reason": reason})
    raise ValueError(f"{event.type_name()} is not a transfer event")


TRANSFER: Aggregate[TransferState] = Aggregate("transfer", TransferState, decide, evolve)
"""The Transfer aggregate."""
