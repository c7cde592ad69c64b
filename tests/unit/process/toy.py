"""A small process definition for the runtime's tests: charge the paying account of a placed order.

OrderPlaced (with an account) starts it: withdraw the order's total from the account (step ``charge``) and
set a ``payment`` deadline. Accepted before the deadline: completed. Rejected, or the deadline first:
cancel the order (step ``cancel``), then compensated.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from typing import ClassVar
from uuid import UUID

from esflow.domain.account import WithdrawFunds
from esflow.domain.order import CancelOrder, OrderPlaced
from esflow.domain.process import (
    AnswerIn,
    CancelTimer,
    EventIn,
    Input,
    ProcessDefinition,
    Reaction,
    RetryPolicy,
    Send,
    SetTimer,
    TimerIn,
)
from esflow.domain.values import Frozen, Money


class ChargeState(Frozen):
    """Where one charge is."""

    order_id: UUID
    account_id: UUID
    reason: str | None = None


class ChargeOrder(ProcessDefinition[ChargeState]):
    """See the module docstring."""

    name: ClassVar[str] = "charge"
    state_type: ClassVar[type[ChargeState]] = ChargeState
    retry: ClassVar[RetryPolicy] = RetryPolicy(
        first_delay_s=0.5, max_delay_s=2, answer_timeout_s=3, max_attempts=3
    )

    def __init__(self, deadline_s: float = 5.0) -> None:
        self.deadline_s = deadline_s

    def subscribes(self) -> frozenset[str]:
        return frozenset({"order"})

    def starts(self, event: EventIn) -> UUID | None:
        if isinstance(event.event, OrderPlaced) and event.event.account_id is not None:
            return event.aggregate_id
        return None

    def correlate(self, event: EventIn) -> UUID | None:
        return event.aggregate_id if event.aggregate_type == "order" else None

    def start(self, event: EventIn, now: datetime) -> Reaction[ChargeState]:
        placed = event.event
        assert isinstance(placed, OrderPlaced) and placed.account_id is not None
        total = sum((i.unit_price.amount * i.quantity for i in placed.items), Decimal(0))
        currency = placed.items[0].unit_price.currency
        state = ChargeState(order_id=event.aggregate_id, account_id=placed.account_id)
        return Reaction(
            state=state,
            actions=(
                Send(
                    step="charge",
                    aggregate_id=placed.account_id,
                    command=WithdrawFunds(amount=Money(amount=total, currency=currency), reference="order"),
                ),
                SetTimer(name="payment", at=now + timedelta(seconds=self.deadline_s)),
            ),
            status="running",
            step="charging",
        )

    def react(self, state: ChargeState, message: Input, now: datetime) -> Reaction[ChargeState]:
        if isinstance(message, AnswerIn) and message.step == "charge" and state.reason is None:
            if message.accepted:
                return Reaction(state=state, actions=(CancelTimer(name="payment"),), status="completed",
                                step="done", final=True)  # fmt: skip
            return self._cancel(state, f"payment rejected: {message.reason}")
        if isinstance(message, TimerIn) and message.name == "payment" and state.reason is None:
            return self._cancel(state, "payment deadline passed")
        if isinstance(message, AnswerIn) and message.step == "cancel":
            return Reaction(
                state=state, status="compensated", step="cancelled", reason=state.reason, final=True
            )
        if state.reason is not None:
            return Reaction(state=state, status="compensating", step="cancelling", reason=state.reason)
        return Reaction(state=state, status="running", step="charging")

    def _cancel(self, state: ChargeState, reason: str) -> Reaction[ChargeState]:
        new = state.model_copy(update={"reason": reason})
        return Reaction(
            state=new,
            actions=(
                CancelTimer(name="payment"),
                Send(step="cancel", aggregate_id=state.order_id, command=CancelOrder(reason=reason)),
            ),
            status="compensating",
            step="cancelling",
            reason=reason,
        )
