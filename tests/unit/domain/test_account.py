from __future__ import annotations

from decimal import Decimal
from uuid import uuid4

import pytest

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
from esflow.domain.aggregates import ACCOUNT
from esflow.domain.aggregates.account import AccountStatus
from esflow.domain.messages import Command
from esflow.domain.values import Money
from tests.unit.domain.gwt import given

OWNER = uuid4()
OPENED = AccountOpened(owner_id=OWNER, currency="EUR")


def eur(amount: str) -> Money:
    return Money(amount=Decimal(amount), currency="EUR")


FUNDED = (OPENED, FundsDeposited(amount=eur("100.00")))
FROZEN = (*FUNDED, AccountFrozen(reason="kyc"))
CLOSED = (OPENED, AccountClosed())


def test_open() -> None:
    state = given(ACCOUNT).when(OpenAccount(owner_id=OWNER, currency="EUR")).then(OPENED)
    assert state.status is AccountStatus.OPEN
    assert state.balance == 0


def test_open_twice_is_refused() -> None:
    given(ACCOUNT, OPENED).when(OpenAccount(owner_id=OWNER, currency="EUR")).then_rejected("already_exists")


ALL_BUT_OPEN: list[Command] = [
    DepositFunds(amount=eur("1.00")),
    WithdrawFunds(amount=eur("1.00")),
    FreezeAccount(reason="r"),
    UnfreezeAccount(),
    CloseAccount(),
]


@pytest.mark.parametrize("command", ALL_BUT_OPEN, ids=lambda c: type(c).__name__)
def test_every_other_command_needs_an_open_account(command: Command) -> None:
    given(ACCOUNT).when(command).then_rejected("not_found")


@pytest.mark.parametrize("command", ALL_BUT_OPEN, ids=lambda c: type(c).__name__)
def test_a_closed_account_refuses_everything(command: Command) -> None:
    given(ACCOUNT, *CLOSED).when(command).then_rejected("invalid_state", status="CLOSED")


def test_deposit() -> None:
    state = (
        given(ACCOUNT, OPENED)
        .when(DepositFunds(amount=eur("100.00"), reference="r1"))
        .then(FundsDeposited(amount=eur("100.00"), reference="r1"))
    )
    assert state.balance == Decimal("100.00")


def test_deposit_into_a_frozen_account() -> None:
    state = (
        given(ACCOUNT, *FROZEN)
        .when(DepositFunds(amount=eur("1.00")))
        .then(FundsDeposited(amount=eur("1.00")))
    )
    assert state.balance == Decimal("101.00")


@pytest.mark.parametrize("command_type", [DepositFunds, WithdrawFunds])
@pytest.mark.parametrize(
    ("amount", "code"),
    [
        (eur("0"), "invalid_amount"),
        (eur("-5.00"), "invalid_amount"),
        (Money(amount=Decimal(1), currency="USD"), "currency_mismatch"),
    ],
)
def test_amounts_are_positive_and_in_the_account_currency(
    command_type: type[DepositFunds | WithdrawFunds], amount: Money, code: str
) -> None:
    given(ACCOUNT, *FUNDED).when(command_type(amount=amount)).then_rejected(code)


def test_withdraw() -> None:
    state = (
        given(ACCOUNT, *FUNDED)
        .when(WithdrawFunds(amount=eur("100.00")))
        .then(FundsWithdrawn(amount=eur("100.00")))
    )
    assert state.balance == 0


def test_withdraw_beyond_the_balance_is_refused() -> None:
    given(ACCOUNT, *FUNDED).when(WithdrawFunds(amount=eur("100.01"))).then_rejected(
        "insufficient_funds", balance="100.00", requested="100.01"
    )


def test_withdraw_from_a_frozen_account_is_refused() -> None:
    given(ACCOUNT, *FROZEN).when(WithdrawFunds(amount=eur("1.00"))).then_rejected(
        "invalid_state", status="FROZEN"
    )


def test_freeze_and_unfreeze() -> None:
    assert (
        given(ACCOUNT, *FUNDED).when(FreezeAccount(reason="kyc")).then(FROZEN[-1]).status
        is AccountStatus.FROZEN
    )
    state = given(ACCOUNT, *FROZEN).when(UnfreezeAccount()).then(AccountUnfrozen())
    assert state.status is AccountStatus.OPEN
    given(ACCOUNT, *FROZEN, AccountUnfrozen()).when(WithdrawFunds(amount=eur("1.00"))).then(
        FundsWithdrawn(amount=eur("1.00"))
    )


def test_freeze_a_frozen_account_is_refused() -> None:
    given(ACCOUNT, *FROZEN).when(FreezeAccount(reason="x")).then_rejected("invalid_state", status="FROZEN")


def test_unfreeze_an_open_account_is_refused() -> None:
    given(ACCOUNT, *FUNDED).when(UnfreezeAccount()).then_rejected("invalid_state", status="OPEN")


def test_close() -> None:
    assert given(ACCOUNT, OPENED).when(CloseAccount()).then(AccountClosed()).status is AccountStatus.CLOSED


def test_close_with_a_balance_is_refused() -> None:
    given(ACCOUNT, *FUNDED).when(CloseAccount()).then_rejected("balance_not_zero", balance="100.00")


def test_close_a_frozen_account_is_refused() -> None:
    given(ACCOUNT, OPENED, AccountFrozen(reason="r")).when(CloseAccount()).then_rejected(
        "invalid_state", status="FROZEN"
    )


def test_close_after_emptying() -> None:
    given(ACCOUNT, *FUNDED, FundsWithdrawn(amount=eur("100.00"))).when(CloseAccount()).then(AccountClosed())
