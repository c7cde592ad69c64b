"""The Account aggregate (ledger): one currency, a balance that never goes negative.

Rules:
- an account is opened once;
- amounts are positive and in the account's currency;
- deposits are accepted while OPEN or FROZEN; withdrawals only while OPEN and never beyond the balance;
- FROZEN and OPEN alternate through FreezeAccount / UnfreezeAccount (freezing a frozen account, or
  unfreezing an open one, is refused);
- an account closes once, only when OPEN and its balance is zero; a closed account refuses everything.
"""

from __future__ import annotations

from decimal import Decimal
from enum import StrEnum

from esflow.domain.account import (
    AccountClosed,
    AccountFrozen,
    AccountOpened,
    AccountUnfrozen,
    CloseAccount,
    DepositFunds,
    FreezeAccount,
    FundsDeposited,
    FundsWithdrawn,
    OpenAccount,
    UnfreezeAccount,
    WithdrawFunds,
)
from esflow.domain.aggregates.base import (
    Aggregate,
    Decision,
    already_exists,
    currency_mismatch,
    invalid_state,
    not_found,
    positive,
    reject,
)
from esflow.domain.messages import Command, Event
from esflow.domain.reasons import BALANCE_NOT_ZERO, INSUFFICIENT_FUNDS, INVALID_AMOUNT, UNKNOWN_COMMAND
from esflow.domain.values import Frozen, Money


class AccountStatus(StrEnum):
    """Whether an account moves money."""

    OPEN = "OPEN"
    FROZEN = "FROZEN"
    CLOSED = "CLOSED"


class AccountState(Frozen):
    """An opened account."""

    currency: str
    balance: Decimal = Decimal(0)
    status: AccountStatus = AccountStatus.OPEN


def _check_amount(state: AccountState, amount: Money) -> Decision | None:
    if amount.currency != state.currency:
        return currency_mismatch(state.currency, amount.currency)
    if not positive(amount):
        return reject(INVALID_AMOUNT, "the amount must be positive", amount=str(amount.amount))
    return None


def decide(state: AccountState | None, command: Command) -> Decision:
    """The events an account command appends, or why it is refused."""
    if isinstance(command, OpenAccount):
        if state is not None:
            return already_exists("account")
        return (AccountOpened(owner_id=command.owner_id, currency=command.currency),)
    if state is None:
        return not_found("account")
    status = state.status
    if status is AccountStatus.CLOSED:
        return invalid_state("account", command, status)
    match command:
        case DepositFunds(amount=amount, reference=ref):
            problem = _check_amount(state, amount)
            return problem if problem is not None else (FundsDeposited(amount=amount, reference=ref),)
        case WithdrawFunds(amount=amount, reference=ref):
            if status is not AccountStatus.OPEN:
                return invalid_state("account", command, status)
            problem = _check_amount(state, amount)
            if problem is not None:
                return problem
            if amount.amount > state.balance:
                return reject(
                    INSUFFICIENT_FUNDS,
                    f"the balance {state.balance} does not cover {amount.amount}",
                    balance=str(state.balance),
                    requested=str(amount.amount),
                )
            return (FundsWithdrawn(amount=amount, reference=ref),)
        case FreezeAccount(reason=reason):
            if status is not AccountStatus.OPEN:
                return invalid_state("account", command, status)
            return (AccountFrozen(reason=reason),)
        case UnfreezeAccount():
            if status is not AccountStatus.FROZEN:
                return invalid_state("account", command, status)
            return (AccountUnfrozen(),)
        case CloseAccount():
            if status is not AccountStatus.OPEN:
                return invalid_state("account", command, status)
            if state.balance != 0:
                return reject(
                    BALANCE_NOT_ZERO,
                    f"the balance is {state.balance}; it must be 0",
                    balance=str(state.balance),
                )
            return (AccountClosed(),)
    return reject(UNKNOWN_COMMAND, f"{command.type_name()} is not an account command")


def evolve(state: AccountState | None, event: Event) -> AccountState:
    """The account after ``event``."""
    if isinstance(event, AccountOpened):
        return AccountState(currency=event.currency)
    if state is None:
        raise ValueError(f"{event.type_name()} before AccountOpened")
    match event:
        case FundsDeposited(amount=amount):
            return state.model_copy(update={"balance": state.balance + amount.amount})
        case FundsWithdrawn(amount=amount):
            return state.model_copy(update={"balance": state.balance - amount.amount})
        case AccountFrozen():
            return state.model_copy(update={"status": AccountStatus.FROZEN})
        case AccountUnfrozen():
            return state.model_copy(update={"status": AccountStatus.OPEN})
        case AccountClosed():
            return state.model_copy(update={"status": AccountStatus.CLOSED})
    raise ValueError(f"{event.type_name()} is not an account event")


ACCOUNT: Aggregate[AccountState] = Aggregate("account", AccountState, decide, evolve)
"""The Account aggregate."""
