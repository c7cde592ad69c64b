"""Order fulfilment: reserve every line, confirm, charge the paying account, mark the order paid.

One instance per order that names a paying account (``OrderPlaced.account_id``, schema v3); its id is the
order id. An order without an account starts no instance: it is confirmed and paid by hand, as before v3.

Happy path (each arrow waits for the previous command's accepted answer)::

    OrderPlaced -> ReserveStock on every line's product (in parallel) -> ConfirmOrder
                -> WithdrawFunds from the paying account (none for a zero total) -> MarkOrderPaid

The order is confirmed before it is charged because the order aggregate accepts a payment only on a
confirmed order, and confirming freezes its lines, so the amount charged is the amount it expects.

Compensation: a refused reservation, confirmation, charge or payment, the payment deadline (a timer set
at the start, cancelled when the charge is accepted) or the order cancelled by someone else starts it:
release every reservation held, refund what was charged (DepositFunds on the paying account) and, unless
the order is cancelled already, CancelOrder with the reason. Answers still on their way are awaited: a
reservation or a charge accepted after compensation started is undone too. The instance ends
``compensated``, or ``failed`` when an undo step itself was refused or a charge's outcome is unknown (no
answer ever came), which a person must look at.

Lines changed between placing and confirming (AddOrderItem, RemoveOrderItem) are not followed: the order
then refuses the payment (``amount_mismatch``) and the instance compensates.

A completed order cancelled later by someone else (an OrderCancelled the process did not cause) is
compensated the same way: its reservations are released and its payment refunded. Once shipped it can no
longer be cancelled, and the instance is final.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from decimal import Decimal
from typing import ClassVar, Literal
from uuid import UUID

from esflow.domain.account import DepositFunds, WithdrawFunds
from esflow.domain.messages import Command
from esflow.domain.order import (
    CancelOrder,
    ConfirmOrder,
    MarkOrderPaid,
    OrderCancelled,
    OrderDelivered,
    OrderPlaced,
    OrderShipped,
)
from esflow.domain.process.base import (
    TIMEOUT,
    Action,
    AnswerIn,
    CancelTimer,
    EventIn,
    Input,
    ProcessDefinition,
    Reaction,
    Send,
    SetTimer,
    Status,
    TimerIn,
)
from esflow.domain.product import ReleaseStock, ReserveStock
from esflow.domain.reasons import INVALID_STATE, NO_RESERVATION
from esflow.domain.values import Frozen, Int32, Money

PAYMENT_DEADLINE = "payment"
"""The name of the timer by which the charge must be accepted."""

CONFIRM, CHARGE, MARK_PAID, REFUND, CANCEL = "confirm", "charge", "mark-paid", "refund", "cancel"

LineStatus = Literal["reserving", "reserved", "refused", "unknown", "releasing", "released"]
ChargeStatus = Literal["none", "charging", "charged", "refused", "unknown", "refunding", "refunded"]


def reserve_step(product_id: UUID) -> str:
    """The step that reserves one line's stock."""
    return f"reserve/{product_id}"


def release_step(product_id: UUID) -> str:
    """The step that releases one line's stock."""
    return f"release/{product_id}"


class Line(Frozen):
    """One order line and where its reservation is."""

    product_id: UUID
    quantity: Int32
    status: LineStatus = "reserving"


class FulfilmentState(Frozen):
    """One order's fulfilment: its lines, the charge, and which answers it still waits for."""

    order_id: UUID
    account_id: UUID
    total: Money
    lines: tuple[Line, ...]
    status: Status = "running"
    step: str = "reserving"
    reason: str | None = None
    charge: ChargeStatus = "none"
    cancel_sent: bool = False
    order_cancelled: bool = False
    deadline_set: bool = True
    pending: frozenset[str] = frozenset()
    problems: tuple[str, ...] = ()
    final: bool = False

    def with_line(self, product_id: UUID, status: LineStatus) -> FulfilmentState:
        """The state with one line's status changed."""
        lines = tuple(
            line.model_copy(update={"status": status}) if line.product_id == product_id else line
            for line in self.lines
        )
        return self.model_copy(update={"lines": lines})


def _reserve(state: FulfilmentState, line: Line) -> Send:
    command = ReserveStock(order_id=state.order_id, quantity=line.quantity)
    return Send(step=reserve_step(line.product_id), aggregate_id=line.product_id, command=command)


def _release(state: FulfilmentState, product_id: UUID) -> Send:
    command = ReleaseStock(order_id=state.order_id)
    return Send(step=release_step(product_id), aggregate_id=product_id, command=command)


def _to_order(state: FulfilmentState, step: str, command: Command) -> Send:
    return Send(step=step, aggregate_id=state.order_id, command=command)


def _to_account(state: FulfilmentState, step: str, command: Command) -> Send:
    return Send(step=step, aggregate_id=state.account_id, command=command)


def _reaction(state: FulfilmentState, actions: Iterable[Action] = ()) -> Reaction[FulfilmentState]:
    return Reaction[FulfilmentState](
        state=state,
        actions=tuple(actions),
        status=state.status,
        step=state.step,
        reason=state.reason,
        final=state.final,
    )


class OrderFulfilment(ProcessDefinition[FulfilmentState]):
    """The order-fulfilment process; ``payment_window`` is how long after placing the charge may take."""

    name: ClassVar[str] = "order_fulfilment"
    state_type: ClassVar[type[FulfilmentState]] = FulfilmentState

    def __init__(self, payment_window: timedelta = timedelta(seconds=30)) -> None:
        self.payment_window = payment_window

    def subscribes(self) -> frozenset[str]:
        """Order events: OrderPlaced starts an instance, OrderCancelled and OrderShipped advance one."""
        return frozenset({"order"})

    def starts(self, event: EventIn) -> UUID | None:
        """An OrderPlaced that names a paying account starts the instance of that order."""
        if isinstance(event.event, OrderPlaced) and event.event.account_id is not None:
            return event.aggregate_id
        return None

    def correlate(self, event: EventIn) -> UUID | None:
        """The order's instance, for the events that advance it: cancelled, shipped or delivered.

        Found from the order id whoever caused the event: a customer's CancelOrder does not carry the
        instance id as its correlation id. Other order events are left out, so the runtime need not look
        an instance up for each.
        """
        advancing = isinstance(event.event, OrderCancelled | OrderShipped | OrderDelivered)
        return event.aggregate_id if advancing else None

    def start(self, event: EventIn, now: datetime) -> Reaction[FulfilmentState]:
        """Set the payment deadline and reserve every line."""
        placed = event.event
        if not isinstance(placed, OrderPlaced) or placed.account_id is None:
            raise ValueError(f"{placed.type_name()} without a paying account starts no fulfilment")
        currency = placed.items[0].unit_price.currency if placed.items else "XXX"
        total = sum((i.unit_price.amount * i.quantity for i in placed.items), Decimal(0))
        state = FulfilmentState(
            order_id=event.aggregate_id,
            account_id=placed.account_id,
            total=Money(amount=total, currency=currency),
            lines=tuple(Line(product_id=i.product_id, quantity=i.quantity) for i in placed.items),
        )
        actions: list[Action] = [SetTimer(name=PAYMENT_DEADLINE, at=now + self.payment_window)]
        actions += [_reserve(state, line) for line in state.lines]
        state = state.model_copy(
            update={"pending": frozenset(reserve_step(li.product_id) for li in state.lines)}
        )
        if not state.lines:  # pragma: no cover - the order aggregate refuses an order without lines
            return self._confirm(state, actions)
        return _reaction(state, actions)

    def react(self, state: FulfilmentState, message: Input, now: datetime) -> Reaction[FulfilmentState]:
        """Advance on an answer, the payment deadline, or an order event."""
        match message:
            case AnswerIn():
                return self._answer(state, message)
            case TimerIn(name=name) if name == PAYMENT_DEADLINE and state.deadline_set:
                state = state.model_copy(update={"deadline_set": False})
                if state.status == "running" and state.charge in ("none", "charging"):
                    return self._compensate(state, "payment_deadline", [])
                return _reaction(state)
            case EventIn(event=OrderCancelled(reason=reason)):
                return self._cancelled(state, reason)
            case EventIn(event=OrderShipped() | OrderDelivered()) if state.status == "completed":
                return _reaction(state.model_copy(update={"final": True}))
        return _reaction(state)

    # ------------------------------------------------------------------------------------ answers

    def _answer(self, state: FulfilmentState, answer: AnswerIn) -> Reaction[FulfilmentState]:
        if answer.step not in state.pending:
            return _reaction(state)  # not awaited: a duplicate, or a step of another instance's making
        state = state.model_copy(update={"pending": state.pending - {answer.step}})
        step, _, product = answer.step.partition("/")
        if step == "reserve":
            return self._reserved(state, UUID(product), answer)
        if step == "release":
            return self._released(state, UUID(product), answer)
        if answer.step == CONFIRM:
            if state.status != "running":
                return self._settle(state, [])
            if answer.accepted:
                return self._charge(state)
            return self._compensate(state, f"{CONFIRM}: {answer.reason}", [])
        if answer.step == CHARGE:
            return self._charged(state, answer)
        if answer.step == MARK_PAID:
            if state.status != "running":
                return self._settle(state, [])
            if answer.accepted:
                return _reaction(state.model_copy(update={"status": "completed", "step": "completed"}))
            return self._compensate(state, f"{MARK_PAID}: {answer.reason}", [])
        if answer.step == REFUND:
            if answer.accepted:
                return self._settle(state.model_copy(update={"charge": "refunded"}), [])
            return self._settle(self._problem(state, answer), [])
        if answer.step == CANCEL:
            # invalid_state: the order is cancelled already (by its customer), or past cancelling.
            if answer.accepted or answer.reason == INVALID_STATE:
                return self._settle(state.model_copy(update={"order_cancelled": True}), [])
            return self._settle(self._problem(state, answer), [])
        return _reaction(state)

    def _reserved(
        self, state: FulfilmentState, product_id: UUID, answer: AnswerIn
    ) -> Reaction[FulfilmentState]:
        if answer.accepted:
            state = state.with_line(product_id, "reserved")
        elif answer.reason == TIMEOUT:
            state = state.with_line(product_id, "unknown")  # maybe held: released like a reserved one
        else:
            state = state.with_line(product_id, "refused")
        if state.status != "running":
            return self._settle(*self._release_held(state))
        if not answer.accepted:
            return self._compensate(state, f"{answer.step}: {answer.reason}", [])
        if all(line.status == "reserved" for line in state.lines):
            return self._confirm(state, [])
        return _reaction(state)

    def _released(
        self, state: FulfilmentState, product_id: UUID, answer: AnswerIn
    ) -> Reaction[FulfilmentState]:
        # no_reservation: the product holds nothing for the order, which is what releasing wants.
        if answer.accepted or answer.reason == NO_RESERVATION:
            return self._settle(state.with_line(product_id, "released"), [])
        return self._settle(self._problem(state, answer), [])

    def _charged(self, state: FulfilmentState, answer: AnswerIn) -> Reaction[FulfilmentState]:
        if not answer.accepted:
            charge: ChargeStatus = "unknown" if answer.reason == TIMEOUT else "refused"
            state = state.model_copy(update={"charge": charge})
            if charge == "unknown":
                state = self._problem(state, answer)
            if state.status != "running":
                return self._settle(state, [])
            return self._compensate(state, f"{CHARGE}: {answer.reason}", [])
        state = state.model_copy(update={"charge": "charged"})
        actions: list[Action] = []
        if state.deadline_set:
            actions.append(CancelTimer(name=PAYMENT_DEADLINE))
            state = state.model_copy(update={"deadline_set": False})
        if state.status != "running":
            return self._settle(*self._refund(state, actions))
        return self._mark_paid(state, actions)

    # -------------------------------------------------------------------------------- forward steps

    def _await(self, state: FulfilmentState, *steps: str, **update: object) -> FulfilmentState:
        return state.model_copy(update={**update, "pending": state.pending | set(steps)})

    def _confirm(self, state: FulfilmentState, actions: list[Action]) -> Reaction[FulfilmentState]:
        actions.append(_to_order(state, CONFIRM, ConfirmOrder()))
        return _reaction(self._await(state, CONFIRM, step="confirming"), actions)

    def _charge(self, state: FulfilmentState) -> Reaction[FulfilmentState]:
        if state.total.amount == 0:  # nothing to withdraw (a zero amount is refused): straight to paid
            actions: list[Action] = []
            if state.deadline_set:
                actions.append(CancelTimer(name=PAYMENT_DEADLINE))
                state = state.model_copy(update={"deadline_set": False})
            return self._mark_paid(state, actions)
        reference = f"order {state.order_id}"
        send = _to_account(state, CHARGE, WithdrawFunds(amount=state.total, reference=reference))
        return _reaction(self._await(state, CHARGE, step="charging", charge="charging"), [send])

    def _mark_paid(self, state: FulfilmentState, actions: list[Action]) -> Reaction[FulfilmentState]:
        payment = MarkOrderPaid(payment_ref=f"account {state.account_id}", amount=state.total)
        actions.append(_to_order(state, MARK_PAID, payment))
        return _reaction(self._await(state, MARK_PAID, step="paying"), actions)

    # --------------------------------------------------------------------------------- compensation

    def _cancelled(self, state: FulfilmentState, reason: str) -> Reaction[FulfilmentState]:
        if state.final:
            return _reaction(state)
        if state.cancel_sent or state.order_cancelled:  # the process's own CancelOrder, or a repeat
            return _reaction(state.model_copy(update={"order_cancelled": True}))
        state = state.model_copy(update={"order_cancelled": True})
        if state.status in ("running", "completed"):
            return self._compensate(state, f"order_cancelled: {reason}", [])
        return self._settle(state, [])

    def _compensate(
        self, state: FulfilmentState, reason: str, actions: list[Action]
    ) -> Reaction[FulfilmentState]:
        state = state.model_copy(update={"status": "compensating", "step": "compensating", "reason": reason})
        if state.deadline_set:
            actions.append(CancelTimer(name=PAYMENT_DEADLINE))
            state = state.model_copy(update={"deadline_set": False})
        state, actions = self._release_held(state, actions)
        state, actions = self._refund(state, actions)
        if not state.order_cancelled and not state.cancel_sent:
            actions.append(_to_order(state, CANCEL, CancelOrder(reason=reason)))
            state = self._await(state, CANCEL, cancel_sent=True)
        return self._settle(state, actions)

    def _release_held(
        self, state: FulfilmentState, actions: list[Action] | None = None
    ) -> tuple[FulfilmentState, list[Action]]:
        actions = [] if actions is None else actions
        for line in state.lines:
            if line.status in ("reserved", "unknown"):
                actions.append(_release(state, line.product_id))
                state = self._await(
                    state.with_line(line.product_id, "releasing"), release_step(line.product_id)
                )
        return state, actions

    def _refund(self, state: FulfilmentState, actions: list[Action]) -> tuple[FulfilmentState, list[Action]]:
        if state.charge == "charged":
            reference = f"refund of order {state.order_id}"
            actions.append(_to_account(state, REFUND, DepositFunds(amount=state.total, reference=reference)))
            state = self._await(state, REFUND, charge="refunding")
        return state, actions

    def _problem(self, state: FulfilmentState, answer: AnswerIn) -> FulfilmentState:
        return state.model_copy(update={"problems": (*state.problems, f"{answer.step}: {answer.reason}")})

    def _settle(self, state: FulfilmentState, actions: list[Action]) -> Reaction[FulfilmentState]:
        """End a compensating instance once nothing it sent is unanswered."""
        if state.status == "compensating" and not state.pending:
            status: Status = "failed" if state.problems else "compensated"
            reason = (
                state.reason
                if not state.problems
                else f"{state.reason}; undo failed: {', '.join(state.problems)}"
            )
            state = state.model_copy(
                update={"status": status, "step": status, "reason": reason, "final": True}
            )
        return _reaction(state, actions)
