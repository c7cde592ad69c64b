"""The Transfer aggregate, given/when/then: requested once, ended once, completed or failed."""

from __future__ import annotations

from decimal import Decimal
from uuid import UUID, uuid4

import pytest

from esflow.domain.account import FundsDeposited
from esflow.domain.aggregates import TRANSFER
from esflow.domain.aggregates.transfer import TransferStatus
from esflow.domain.messages import Command
from esflow.domain.transfer import (
    CompleteTransfer,
    FailTransfer,
    RequestTransfer,
    TransferCompleted,
    TransferFailed,
    TransferRequested,
)
from esflow.domain.values import Money
from tests.unit.domain.gwt import given

SOURCE, TARGET = uuid4(), uuid4()


def eur(amount: str) -> Money:
    return Money(amount=Decimal(amount), currency="EUR")


def request(amount: str = "25.00", target: UUID = TARGET) -> RequestTransfer:
    return RequestTransfer(
        source_account_id=SOURCE, target_account_id=target, amount=eur(amount), reference="rent"
    )


REQUESTED = TransferRequested(
    source_account_id=SOURCE, target_account_id=TARGET, amount=eur("25.00"), reference="rent"
)


def test_request() -> None:
    state = given(TRANSFER).when(request()).then(REQUESTED)
    assert state.status is TransferStatus.REQUESTED
    assert (state.source_account_id, state.target_account_id, state.amount) == (SOURCE, TARGET, eur("25.00"))


def test_request_twice_is_refused() -> None:
    given(TRANSFER, REQUESTED).when(request()).then_rejected("already_exists")


def test_request_needs_two_accounts() -> None:
    given(TRANSFER).when(request(target=SOURCE)).then_rejected("same_account", account_id=str(SOURCE))


@pytest.mark.parametrize("amount", ["0.00", "-1.00"])
def test_request_needs_a_positive_amount(amount: str) -> None:
    given(TRANSFER).when(request(amount)).then_rejected("invalid_amount", amount=amount)


def test_complete() -> None:
    state = given(TRANSFER, REQUESTED).when(CompleteTransfer()).then(TransferCompleted())
    assert state.status is TransferStatus.COMPLETED


def test_fail_records_the_reason() -> None:
    state = (
        given(TRANSFER, REQUESTED)
        .when(FailTransfer(reason="insufficient_funds"))
        .then(TransferFailed(reason="insufficient_funds"))
    )
    assert state.status is TransferStatus.FAILED
    assert state.failure_reason == "insufficient_funds"


@pytest.mark.parametrize("command", [CompleteTransfer(), FailTransfer(reason="x")])
def test_nothing_ends_a_transfer_that_does_not_exist(command: Command) -> None:
    given(TRANSFER).when(command).then_rejected("not_found")


@pytest.mark.parametrize("ended", [TransferCompleted(), TransferFailed(reason="x")])
@pytest.mark.parametrize("command", [CompleteTransfer(), FailTransfer(reason="y")])
def test_a_transfer_ends_once(ended: TransferCompleted | TransferFailed, command: Command) -> None:
    status = "COMPLETED" if isinstance(ended, TransferCompleted) else "FAILED"
    given(TRANSFER, REQUESTED, ended).when(command).then_rejected(
        "invalid_state", status=status, command=command.type_name()
    )


def test_version_is_checked_first() -> None:
    given(TRANSFER, REQUESTED).when(CompleteTransfer(), expected_version=0).then_rejected(
        "version_conflict", expected_version=0, actual_version=1
    )


def test_events_of_another_aggregate_do_not_fold() -> None:
    with pytest.raises(ValueError, match="is not a transfer event"):
        TRANSFER.fold([REQUESTED, FundsDeposited(amount=eur("1.00"))])
    with pytest.raises(ValueError, match="before TransferRequested"):
        TRANSFER.fold([TransferCompleted()])
