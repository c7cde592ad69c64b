"""Account (ledger): commands and events."""

from __future__ import annotations

from typing import ClassVar
from uuid import UUID

from esflow.domain.messages import AggregateType, Command, Event
from esflow.domain.values import CurrencyCode, Money


class _Account:
    aggregate_type: ClassVar[AggregateType] = "account"


class OpenAccount(_Account, Command):
    """Open a ledger account."""

    owner_id: UUID
    currency: CurrencyCode


class DepositFunds(_Account, Command):
    """Credit an account."""

    amount: Money
    reference: str | None = None


class WithdrawFunds(_Account, Command):
    """Debit an account (refused on insufficient funds or a frozen account)."""

    amount: Money
    reference: str | None = None


class FreezeAccount(_Account, Command):
    """Block withdrawals from an account."""

    reason: str


class UnfreezeAccount(_Account, Command):
    """Allow withdrawals again."""


class CloseAccount(_Account, Command):
    """Close an account whose balance is zero."""


class AccountOpened(_Account, Event):
    """A ledger account was opened."""

    owner_id: UUID
    currency: CurrencyCode


class FundsDeposited(_Account, Event):
    """An account was credited."""

    amount: Money
    reference: str | None = None


class FundsWithdrawn(_Account, Event):
    """An account was debited."""

    amount: Money
    reference: str | None = None


class AccountFrozen(_Account, Event):
    """Withdrawals from an account were blocked."""

    reason: str


class AccountUnfrozen(_Account, Event):
    """Withdrawals from an account were allowed again."""


class AccountClosed(_Account, Event):
    """An account was closed."""
