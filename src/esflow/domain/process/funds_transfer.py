"""Funds transfer: withdraw from the source account, deposit to the target, record how it ended.

One instance per transfer (:mod:`esflow.domain.aggregates.transfer`); its id is the transfer id, and a
TransferRequested starts it. Each arrow waits for the previous command's accepted answer::

    TransferRequested -> WithdrawFunds (source) -> DepositFunds (target) -> CompleteTransfer  => completed

    WithdrawFunds refused (funds, frozen, closed, currency)            -> FailTransfer  => compensated
    DepositFunds refused (target closed, currency) -> DepositFunds (source, the refund)
                                                   -> FailTransfer                   => compensated

A frozen target still takes deposits (the account's rules), so only a closed target, a target in another
currency or a missing one sends the money back. Every transfer ends: the process always sends
CompleteTransfer or FailTransfer, so the aggregate never stays ``REQUESTED`` once the process ran. The
instance ends ``failed`` (a person must look) only when the money's whereabouts are not what the transfer
records: a refund refused (the source was closed meanwhile), a withdrawal or deposit whose outcome is
unknown (no answer ever came), or the transfer refusing to be ended.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import ClassVar, Literal
from uuid import UUID

from esflow.domain.account import DepositFunds, WithdrawFunds
from esflow.domain.process.base import (
    TIMEOUT,
    Action,
    AnswerIn,
    EventIn,
    Input,
    ProcessDefinition,
    Reaction,
    Send,
    Status,
)
from esflow.domain.transfer import CompleteTransfer, FailTransfer, TransferRequested
from esflow.domain.values import Frozen, Money

WITHDRAW, DEPOSIT, REFUND, COMPLETE, FAIL = "withdraw", "deposit", "refund", "complete", "fail"

Phase = Literal[
    "withdrawing", "depositing", "refunding", "completing", "failing", "completed", "compensated", "failed"
]


class TransferProcessState(Frozen):
    """One transfer's progress: where the money is, and why it failed if it did."""

    transfer_id: UUID
    source_account_id: UUID
    target_account_id: UUID
    amount: Money
    reference: str | None = None
    phase: Phase = "withdrawing"
    status: Status = "running"
    reason: str | None = None
    problem: str | None = None
    awaiting: str | None = WITHDRAW


def _reaction(state: TransferProcessState, actions: Iterable[Action] = ()) -> Reaction[TransferProcessState]:
    ended = state.phase in ("completed", "compensated", "failed")
    return Reaction[TransferProcessState](
        state=state,
        actions=tuple(actions),
        status=state.status,
        step=state.phase,
        reason=state.reason,
        final=ended,
    )


class FundsTransfer(ProcessDefinition[TransferProcessState]):
    """The funds-transfer process."""

    name: ClassVar[str] = "funds_transfer"
    state_type: ClassVar[type[TransferProcessState]] = TransferProcessState

    def subscribes(self) -> frozenset[str]:
        """Transfer events: TransferRequested starts an instance."""
        return frozenset({"transfer"})

    def starts(self, event: EventIn) -> UUID | None:
        """A TransferRequested starts the instance of that transfer."""
        return event.aggregate_id if isinstance(event.event, TransferRequested) else None

    def correlate(self, event: EventIn) -> UUID | None:
        """None: after the start only answers advance a transfer, so no event needs routing."""
        return None

    def start(self, event: EventIn, now: datetime) -> Reaction[TransferProcessState]:
        """Withdraw the amount from the source account."""
        requested = event.event
        if not isinstance(requested, TransferRequested):
            raise ValueError(f"{requested.type_name()} starts no transfer")
        state = TransferProcessState(
            transfer_id=event.aggregate_id,
            source_account_id=requested.source_account_id,
            target_account_id=requested.target_account_id,
            amount=requested.amount,
            reference=requested.reference,
        )
        withdraw = WithdrawFunds(amount=state.amount, reference=self._reference(state, "to"))
        return _reaction(state, [Send(step=WITHDRAW, aggregate_id=state.source_account_id, command=withdraw)])

    def react(
        self, state: TransferProcessState, message: Input, now: datetime
    ) -> Reaction[TransferProcessState]:
        """Advance on the answer the instance waits for; anything else changes nothing."""
        if not isinstance(message, AnswerIn) or message.step != state.awaiting:
            return _reaction(state)
        refused = f"{message.step}: {message.reason}"
        match message.step:
            case "withdraw":
                if message.accepted:
                    deposit = DepositFunds(amount=state.amount, reference=self._reference(state, "from"))
                    send = Send(step=DEPOSIT, aggregate_id=state.target_account_id, command=deposit)
                    return _reaction(
                        state.model_copy(update={"phase": "depositing", "awaiting": DEPOSIT}), [send]
                    )
                problem = refused if message.reason == TIMEOUT else None  # maybe withdrawn: a person checks
                return self._fail(state, refused, problem)
            case "deposit":
                if message.accepted:
                    send = Send(step=COMPLETE, aggregate_id=state.transfer_id, command=CompleteTransfer())
                    return _reaction(
                        state.model_copy(update={"phase": "completing", "awaiting": COMPLETE}), [send]
                    )
                if message.reason == TIMEOUT:  # maybe deposited: refunding could create money
                    return self._fail(state, refused, refused)
                refund = DepositFunds(
                    amount=state.amount, reference=f"refund of transfer {state.transfer_id}"
                )
                send = Send(step=REFUND, aggregate_id=state.source_account_id, command=refund)
                update = {
                    "phase": "refunding",
                    "awaiting": REFUND,
                    "status": "compensating",
                    "reason": refused,
                }
                return _reaction(state.model_copy(update=update), [send])
            case "refund":
                problem = None if message.accepted else refused
                return self._fail(state, state.reason or refused, problem)
            case "complete":
                return self._ended(state, "completed", None if message.accepted else refused)
            case "fail":
                return self._ended(state, "compensated", None if message.accepted else refused)
        return _reaction(state)  # pragma: no cover - awaiting names one of the steps above

    def _reference(self, state: TransferProcessState, direction: Literal["to", "from"]) -> str:
        other = state.target_account_id if direction == "to" else state.source_account_id
        text = f"transfer {state.transfer_id} {direction} {other}"
        return f"{text}: {state.reference}" if state.reference else text

    def _fail(
        self, state: TransferProcessState, reason: str, problem: str | None
    ) -> Reaction[TransferProcessState]:
        send = Send(step=FAIL, aggregate_id=state.transfer_id, command=FailTransfer(reason=reason))
        update = {
            "phase": "failing",
            "awaiting": FAIL,
            "status": "compensating",
            "reason": reason,
            "problem": problem,
        }
        return _reaction(state.model_copy(update=update), [send])

    def _ended(
        self, state: TransferProcessState, outcome: Literal["completed", "compensated"], refused: str | None
    ) -> Reaction[TransferProcessState]:
        problem = "; ".join(p for p in (state.problem, refused) if p) or None
        if problem is None:
            return _reaction(state.model_copy(update={"phase": outcome, "status": outcome, "awaiting": None}))
        reason = f"{state.reason}; {problem}" if state.reason and state.reason not in problem else problem
        update = {
            "phase": "failed",
            "status": "failed",
            "awaiting": None,
            "reason": reason,
            "problem": problem,
        }
        return _reaction(state.model_copy(update=update))
