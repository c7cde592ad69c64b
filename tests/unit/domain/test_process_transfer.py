"""Funds transfer, given/when/then: withdraw, deposit, complete; or refund and fail; never left between."""

from __future__ import annotations

from decimal import Decimal
from uuid import uuid4

import pytest

from esflow.domain.account import DepositFunds, FundsDeposited, WithdrawFunds
from esflow.domain.process import Input, Send
from esflow.domain.process.funds_transfer import COMPLETE, DEPOSIT, FAIL, REFUND, WITHDRAW, FundsTransfer
from esflow.domain.transfer import (
    CompleteTransfer,
    FailTransfer,
    TransferCompleted,
    TransferRequested,
)
from esflow.domain.values import Money
from tests.unit.domain.process_gwt import T0, accepted, event_in, given, rejected, timer

TRANSFER, SOURCE, TARGET = uuid4(), uuid4(), uuid4()
PROCESS = FundsTransfer()
AMOUNT = Money(amount=Decimal("25.00"), currency="EUR")
REQUESTED = event_in(
    TransferRequested(source_account_id=SOURCE, target_account_id=TARGET, amount=AMOUNT, reference="rent"),
    TRANSFER,
)
WITHDRAWING = Send(
    step=WITHDRAW,
    aggregate_id=SOURCE,
    command=WithdrawFunds(amount=AMOUNT, reference=f"transfer {TRANSFER} to {TARGET}: rent"),
)
DEPOSITING = Send(
    step=DEPOSIT,
    aggregate_id=TARGET,
    command=DepositFunds(amount=AMOUNT, reference=f"transfer {TRANSFER} from {SOURCE}: rent"),
)
REFUNDING = Send(
    step=REFUND,
    aggregate_id=SOURCE,
    command=DepositFunds(amount=AMOUNT, reference=f"refund of transfer {TRANSFER}"),
)
COMPLETING = Send(step=COMPLETE, aggregate_id=TRANSFER, command=CompleteTransfer())


def failing(reason: str) -> Send:
    return Send(step=FAIL, aggregate_id=TRANSFER, command=FailTransfer(reason=reason))


WITHDRAWN = (REQUESTED, accepted(WITHDRAW))
DEPOSITED = (*WITHDRAWN, accepted(DEPOSIT))


def test_a_requested_transfer_starts_its_instance() -> None:
    assert PROCESS.starts(REQUESTED) == TRANSFER
    assert PROCESS.starts(event_in(TransferCompleted(), TRANSFER)) is None
    assert PROCESS.correlate(event_in(TransferCompleted(), TRANSFER)) is None
    assert PROCESS.correlate(event_in(FundsDeposited(amount=AMOUNT), TARGET, correlation_id=TRANSFER)) is None
    assert PROCESS.subscribes() == frozenset({"transfer"})


def test_start_withdraws_from_the_source() -> None:
    given(PROCESS).when(REQUESTED).then(WITHDRAWING, status="running", step="withdrawing")


def test_a_withdrawal_deposits_to_the_target() -> None:
    given(PROCESS, REQUESTED).when(accepted(WITHDRAW)).then(DEPOSITING, status="running", step="depositing")


def test_a_deposit_completes_the_transfer() -> None:
    given(PROCESS, *WITHDRAWN).when(accepted(DEPOSIT)).then(COMPLETING, status="running", step="completing")
    given(PROCESS, *DEPOSITED).when(accepted(COMPLETE)).then(status="completed", step="completed", final=True)


@pytest.mark.parametrize("reason", ["insufficient_funds", "invalid_state", "currency_mismatch", "not_found"])
def test_a_refused_withdrawal_fails_the_transfer_with_nothing_to_undo(reason: str) -> None:
    why = f"withdraw: {reason}"
    given(PROCESS, REQUESTED).when(rejected(WITHDRAW, reason)).then(
        failing(why), status="compensating", step="failing", reason=why
    )
    given(PROCESS, REQUESTED, rejected(WITHDRAW, reason)).when(accepted(FAIL)).then(
        status="compensated", step="compensated", reason=why, final=True
    )


@pytest.mark.parametrize("reason", ["invalid_state", "currency_mismatch", "not_found"])
def test_a_refused_deposit_refunds_the_source_then_fails_the_transfer(reason: str) -> None:
    why = f"deposit: {reason}"
    given(PROCESS, *WITHDRAWN).when(rejected(DEPOSIT, reason)).then(
        REFUNDING, status="compensating", step="refunding", reason=why
    )
    given(PROCESS, *WITHDRAWN, rejected(DEPOSIT, reason)).when(accepted(REFUND)).then(
        failing(why), status="compensating", step="failing", reason=why
    )
    given(PROCESS, *WITHDRAWN, rejected(DEPOSIT, reason), accepted(REFUND)).when(accepted(FAIL)).then(
        status="compensated", step="compensated", reason=why, final=True
    )


def test_a_refused_refund_still_ends_the_transfer_but_fails_the_instance() -> None:
    steps = (*WITHDRAWN, rejected(DEPOSIT, "invalid_state"))
    given(PROCESS, *steps).when(rejected(REFUND, "invalid_state")).then(
        failing("deposit: invalid_state"),
        status="compensating",
        step="failing",
        reason="deposit: invalid_state",
    )
    given(PROCESS, *steps, rejected(REFUND, "invalid_state")).when(accepted(FAIL)).then(
        status="failed", step="failed", reason="deposit: invalid_state; refund: invalid_state", final=True
    )


def test_a_withdrawal_without_an_answer_fails_the_transfer_and_asks_a_person() -> None:
    given(PROCESS, REQUESTED, rejected(WITHDRAW, "timeout")).when(accepted(FAIL)).then(
        status="failed", step="failed", reason="withdraw: timeout", final=True
    )


def test_a_deposit_without_an_answer_is_not_refunded() -> None:
    given(PROCESS, *WITHDRAWN).when(rejected(DEPOSIT, "timeout")).then(
        failing("deposit: timeout"), status="compensating", step="failing", reason="deposit: timeout"
    )
    given(PROCESS, *WITHDRAWN, rejected(DEPOSIT, "timeout")).when(accepted(FAIL)).then(
        status="failed", step="failed", reason="deposit: timeout", final=True
    )


def test_a_transfer_that_refuses_to_complete_fails_the_instance() -> None:
    given(PROCESS, *DEPOSITED).when(rejected(COMPLETE, "invalid_state")).then(
        status="failed", step="failed", reason="complete: invalid_state", final=True
    )


@pytest.mark.parametrize(
    "message",
    [accepted(COMPLETE), accepted(WITHDRAW), REQUESTED, timer("x", T0)],
    ids=["unsent-step", "duplicate", "start-again", "timer"],
)
def test_unexpected_input_changes_nothing(message: Input) -> None:
    before = given(PROCESS, *WITHDRAWN).reaction()
    assert before is not None
    outcome = given(PROCESS, *WITHDRAWN).when(message)
    outcome.then(status="running", step="depositing")
    assert outcome.reaction.state == before.state
