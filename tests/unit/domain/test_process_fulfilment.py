"""Order fulfilment, given/when/then: every path from OrderPlaced to completed, compensated or failed."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from uuid import UUID, uuid4

import pytest

from esflow.domain.account import DepositFunds, WithdrawFunds
from esflow.domain.order import (
    CancelOrder,
    ConfirmOrder,
    MarkOrderPaid,
    OrderCancelled,
    OrderConfirmed,
    OrderPlaced,
    OrderShipped,
)
from esflow.domain.process import CancelTimer, Send, SetTimer
from esflow.domain.process.fulfilment import (
    CANCEL,
    CHARGE,
    CONFIRM,
    MARK_PAID,
    PAYMENT_DEADLINE,
    REFUND,
    OrderFulfilment,
    release_step,
    reserve_step,
)
from esflow.domain.product import ReleaseStock, ReserveStock, StockReserved
from esflow.domain.values import Address, Money, OrderItem
from tests.unit.domain.process_gwt import T0, accepted, event_in, given, later, rejected, timer

ORDER, ACCOUNT, P1, P2 = uuid4(), uuid4(), uuid4(), uuid4()
HOME = Address(recipient="Ada", line1="1 Main St", city="Berlin", postal_code="10115", country="DE")
FULFIL = OrderFulfilment(payment_window=timedelta(seconds=30))
DEADLINE = T0 + timedelta(seconds=30)


def eur(amount: str) -> Money:
    return Money(amount=Decimal(amount), currency="EUR")


def line(product: UUID, quantity: int, price: str) -> OrderItem:
    return OrderItem(product_id=product, sku=f"sku-{quantity}", quantity=quantity, unit_price=eur(price))


def placed(*items: OrderItem, account: UUID | None = ACCOUNT) -> OrderPlaced:
    items = items or (line(P1, 2, "5.00"), line(P2, 1, "10.00"))
    return OrderPlaced(customer_id=uuid4(), items=items, shipping_address=HOME, account_id=account)


PLACED = event_in(placed(), ORDER)
TOTAL = eur("20.00")
RESERVE_1 = Send(step=reserve_step(P1), aggregate_id=P1, command=ReserveStock(order_id=ORDER, quantity=2))
RESERVE_2 = Send(step=reserve_step(P2), aggregate_id=P2, command=ReserveStock(order_id=ORDER, quantity=1))
RELEASE_1 = Send(step=release_step(P1), aggregate_id=P1, command=ReleaseStock(order_id=ORDER))
RELEASE_2 = Send(step=release_step(P2), aggregate_id=P2, command=ReleaseStock(order_id=ORDER))
CONFIRMING = Send(step=CONFIRM, aggregate_id=ORDER, command=ConfirmOrder())
CHARGING = Send(
    step=CHARGE, aggregate_id=ACCOUNT, command=WithdrawFunds(amount=TOTAL, reference=f"order {ORDER}")
)
PAYING = Send(
    step=MARK_PAID, aggregate_id=ORDER, command=MarkOrderPaid(payment_ref=f"account {ACCOUNT}", amount=TOTAL)
)
REFUNDING = Send(
    step=REFUND,
    aggregate_id=ACCOUNT,
    command=DepositFunds(amount=TOTAL, reference=f"refund of order {ORDER}"),
)
STOP_DEADLINE = CancelTimer(name=PAYMENT_DEADLINE)


def cancelling(reason: str) -> Send:
    return Send(step=CANCEL, aggregate_id=ORDER, command=CancelOrder(reason=reason))


RESERVED = (PLACED, accepted(reserve_step(P1)), accepted(reserve_step(P2)))
CONFIRMED = (*RESERVED, accepted(CONFIRM))
CHARGED = (*CONFIRMED, accepted(CHARGE))
COMPLETED = (*CHARGED, accepted(MARK_PAID))


# ------------------------------------------------------------------------------------- which instance


def test_an_order_naming_an_account_starts_the_instance_of_that_order() -> None:
    assert FULFIL.starts(PLACED) == ORDER
    assert FULFIL.subscribes() == frozenset({"order"})


def test_an_order_without_an_account_starts_nothing() -> None:
    assert FULFIL.starts(event_in(placed(account=None), ORDER)) is None
    with pytest.raises(ValueError, match="without a paying account"):
        FULFIL.start(event_in(placed(account=None), ORDER), T0)


def test_order_events_correlate_by_order_id_whatever_their_correlation_id() -> None:
    assert FULFIL.correlate(event_in(OrderCancelled(reason="x"), ORDER)) == ORDER
    assert FULFIL.correlate(event_in(OrderShipped(carrier="c", tracking_number="t"), ORDER)) == ORDER
    assert FULFIL.correlate(event_in(OrderConfirmed(), ORDER, correlation_id=ORDER)) is None
    assert (
        FULFIL.correlate(event_in(StockReserved(order_id=ORDER, quantity=1), P1, correlation_id=ORDER))
        is None
    )


def test_the_state_is_stored_and_read_back_as_json() -> None:
    state = FULFIL.start(PLACED, T0).state
    assert FULFIL.state_type.model_validate_json(state.model_dump_json()) == state


# ------------------------------------------------------------------------------------- the happy path


def test_start_sets_the_payment_deadline_and_reserves_every_line() -> None:
    given(FULFIL).when(PLACED).then(
        SetTimer(name=PAYMENT_DEADLINE, at=DEADLINE), RESERVE_1, RESERVE_2, status="running", step="reserving"
    )


def test_the_deadline_counts_from_when_the_order_is_handled() -> None:
    outcome = given(FULFIL).when(PLACED, now=later(5))
    assert outcome.reaction.actions[0] == SetTimer(name=PAYMENT_DEADLINE, at=later(35))


def test_one_reservation_is_not_enough_to_confirm() -> None:
    given(FULFIL, PLACED).when(accepted(reserve_step(P2))).then(status="running", step="reserving")


def test_every_line_reserved_confirms_the_order() -> None:
    given(FULFIL, *RESERVED[:2]).when(RESERVED[2]).then(CONFIRMING, status="running", step="confirming")


def test_a_confirmed_order_charges_the_paying_account_its_total() -> None:
    given(FULFIL, *RESERVED).when(accepted(CONFIRM)).then(CHARGING, status="running", step="charging")


def test_an_accepted_charge_stops_the_deadline_and_marks_the_order_paid() -> None:
    given(FULFIL, *CONFIRMED).when(accepted(CHARGE)).then(
        STOP_DEADLINE, PAYING, status="running", step="paying"
    )


def test_a_paid_order_completes_the_instance() -> None:
    given(FULFIL, *CHARGED).when(accepted(MARK_PAID)).then(status="completed", step="completed")


def test_a_shipped_order_can_no_longer_be_cancelled_so_the_instance_is_final() -> None:
    shipped = event_in(OrderShipped(carrier="DHL", tracking_number="T1"), ORDER)
    given(FULFIL, *COMPLETED).when(shipped).then(status="completed", step="completed", final=True)


def test_a_zero_total_is_not_charged() -> None:
    free = event_in(placed(line(P1, 1, "0.00")), ORDER)
    paying = Send(
        step=MARK_PAID,
        aggregate_id=ORDER,
        command=MarkOrderPaid(payment_ref=f"account {ACCOUNT}", amount=eur("0")),
    )
    given(FULFIL, free, accepted(reserve_step(P1))).when(accepted(CONFIRM)).then(
        STOP_DEADLINE, paying, status="running", step="paying"
    )


# ------------------------------------------------------------------------------------- compensation


def test_a_refused_reservation_releases_the_others_and_cancels_the_order() -> None:
    reason = f"{reserve_step(P2)}: insufficient_stock"
    given(FULFIL, PLACED, accepted(reserve_step(P1))).when(
        rejected(reserve_step(P2), "insufficient_stock")
    ).then(
        STOP_DEADLINE,
        RELEASE_1,
        cancelling(reason),
        status="compensating",
        step="compensating",
        reason=reason,
    )


def test_compensation_ends_when_every_undo_step_is_answered() -> None:
    reason = f"{reserve_step(P2)}: insufficient_stock"
    refused = (PLACED, accepted(reserve_step(P1)), rejected(reserve_step(P2), "insufficient_stock"))
    given(FULFIL, *refused).when(accepted(CANCEL)).then(status="compensating", reason=reason)
    given(FULFIL, *refused, accepted(CANCEL)).when(accepted(release_step(P1))).then(
        status="compensated", step="compensated", reason=reason, final=True
    )


def test_a_reservation_accepted_after_compensation_started_is_released_too() -> None:
    reason = f"{reserve_step(P1)}: product_discontinued"
    refused = (PLACED, rejected(reserve_step(P1), "product_discontinued"))
    given(FULFIL, PLACED).when(refused[1]).then(
        STOP_DEADLINE, cancelling(reason), status="compensating", reason=reason
    )
    given(FULFIL, *refused).when(accepted(reserve_step(P2))).then(
        RELEASE_2, status="compensating", reason=reason
    )
    given(FULFIL, *refused, accepted(reserve_step(P2)), accepted(CANCEL)).when(
        accepted(release_step(P2))
    ).then(status="compensated", reason=reason, final=True)


def test_a_reservation_without_an_answer_is_released_in_case_it_was_held() -> None:
    reason = f"{reserve_step(P1)}: timeout"
    given(FULFIL, PLACED).when(rejected(reserve_step(P1), "timeout")).then(
        STOP_DEADLINE, RELEASE_1, cancelling(reason), status="compensating", reason=reason
    )


def test_releasing_what_was_never_held_counts_as_released() -> None:
    steps = (PLACED, rejected(reserve_step(P1), "timeout"), rejected(reserve_step(P2), "insufficient_stock"))
    given(FULFIL, *steps, accepted(CANCEL)).when(rejected(release_step(P1), "no_reservation")).then(
        status="compensated", reason=f"{reserve_step(P1)}: timeout", final=True
    )


def test_a_refused_charge_releases_every_line_and_cancels() -> None:
    given(FULFIL, *CONFIRMED).when(rejected(CHARGE, "insufficient_funds")).then(
        STOP_DEADLINE,
        RELEASE_1,
        RELEASE_2,
        cancelling("charge: insufficient_funds"),
        status="compensating",
        reason="charge: insufficient_funds",
    )


def test_the_payment_deadline_while_reserving_compensates() -> None:
    given(FULFIL, PLACED, accepted(reserve_step(P1))).when(
        timer(PAYMENT_DEADLINE, DEADLINE), now=DEADLINE
    ).then(RELEASE_1, cancelling("payment_deadline"), status="compensating", reason="payment_deadline")


def test_a_charge_accepted_after_the_deadline_is_refunded() -> None:
    late = (*CONFIRMED, timer(PAYMENT_DEADLINE, DEADLINE))
    given(FULFIL, *CONFIRMED).when(late[-1]).then(
        RELEASE_1, RELEASE_2, cancelling("payment_deadline"), status="compensating", reason="payment_deadline"
    )
    given(FULFIL, *late).when(accepted(CHARGE)).then(
        REFUNDING, status="compensating", reason="payment_deadline"
    )
    undone = (accepted(release_step(P1)), accepted(release_step(P2)), accepted(CANCEL))
    given(FULFIL, *late, accepted(CHARGE), *undone).when(accepted(REFUND)).then(
        status="compensated", reason="payment_deadline", final=True
    )


def test_a_deadline_that_comes_after_the_charge_changes_nothing() -> None:
    given(FULFIL, *CHARGED).when(timer(PAYMENT_DEADLINE, DEADLINE)).then(status="running", step="paying")


def test_a_refused_payment_refunds_releases_and_cancels() -> None:
    given(FULFIL, *CHARGED).when(rejected(MARK_PAID, "amount_mismatch")).then(
        RELEASE_1,
        RELEASE_2,
        REFUNDING,
        cancelling("mark-paid: amount_mismatch"),
        status="compensating",
        reason="mark-paid: amount_mismatch",
    )


def test_a_refused_confirmation_compensates() -> None:
    given(FULFIL, *RESERVED).when(rejected(CONFIRM, "invalid_state")).then(
        STOP_DEADLINE,
        RELEASE_1,
        RELEASE_2,
        cancelling("confirm: invalid_state"),
        status="compensating",
        reason="confirm: invalid_state",
    )


# ------------------------------------------------------------------------------------- cancellation


def test_a_paid_order_cancelled_by_its_customer_is_refunded_and_released() -> None:
    cancelled = event_in(OrderCancelled(reason="changed my mind"), ORDER)
    reason = "order_cancelled: changed my mind"
    given(FULFIL, *COMPLETED).when(cancelled).then(
        RELEASE_1, RELEASE_2, REFUNDING, status="compensating", reason=reason
    )
    undone = (accepted(release_step(P1)), accepted(release_step(P2)))
    given(FULFIL, *COMPLETED, cancelled, *undone).when(accepted(REFUND)).then(
        status="compensated", reason=reason, final=True
    )


def test_an_order_cancelled_by_its_customer_while_reserving_is_not_cancelled_again() -> None:
    cancelled = event_in(OrderCancelled(reason="oops"), ORDER)
    given(FULFIL, PLACED, accepted(reserve_step(P1))).when(cancelled).then(
        STOP_DEADLINE, RELEASE_1, status="compensating", reason="order_cancelled: oops"
    )


def test_the_cancellation_the_process_caused_is_not_a_customer_s() -> None:
    refused = (*CONFIRMED, rejected(CHARGE, "insufficient_funds"))
    ours = event_in(OrderCancelled(reason="charge: insufficient_funds"), ORDER, correlation_id=ORDER)
    given(FULFIL, *refused).when(ours).then(status="compensating", reason="charge: insufficient_funds")


def test_a_cancel_refused_because_the_order_is_cancelled_already_is_done() -> None:
    steps = (
        PLACED,
        rejected(reserve_step(P1), "insufficient_stock"),
        rejected(reserve_step(P2), "insufficient_stock"),
    )
    given(FULFIL, *steps).when(rejected(CANCEL, "invalid_state")).then(
        status="compensated", reason=f"{reserve_step(P1)}: insufficient_stock", final=True
    )


# ------------------------------------------------------------------------------------- failures


def test_a_refused_refund_fails_the_instance_for_a_person_to_look_at() -> None:
    cancelled = event_in(OrderCancelled(reason="bye"), ORDER)
    undone = (accepted(release_step(P1)), accepted(release_step(P2)))
    given(FULFIL, *COMPLETED, cancelled, *undone).when(rejected(REFUND, "invalid_state")).then(
        status="failed", reason="order_cancelled: bye; undo failed: refund: invalid_state", final=True
    )


def test_a_charge_without_an_answer_fails_the_instance_rather_than_refund_money_never_taken() -> None:
    given(FULFIL, *CONFIRMED).when(rejected(CHARGE, "timeout")).then(
        STOP_DEADLINE,
        RELEASE_1,
        RELEASE_2,
        cancelling("charge: timeout"),
        status="compensating",
        reason="charge: timeout",
    )
    undone = (accepted(release_step(P1)), accepted(release_step(P2)))
    given(FULFIL, *CONFIRMED, rejected(CHARGE, "timeout"), *undone).when(accepted(CANCEL)).then(
        status="failed", reason="charge: timeout; undo failed: charge: timeout", final=True
    )


# ------------------------------------------------------------------------------------- what changes nothing


@pytest.mark.parametrize(
    "message",
    [
        accepted(reserve_step(P1)),  # a duplicate answer
        accepted("charge"),  # an answer to a step not sent yet
        PLACED,  # the starting event read again
        event_in(OrderConfirmed(), ORDER),  # an event the instance does not need
        timer("other", DEADLINE),
    ],
    ids=["duplicate-answer", "unsent-step", "start-again", "other-event", "other-timer"],
)
def test_unexpected_input_changes_nothing(message: object) -> None:
    history = (PLACED, accepted(reserve_step(P1)))
    before = given(FULFIL, *history).reaction()
    assert before is not None
    outcome = given(FULFIL, *history).when(message)  # type: ignore[arg-type]
    outcome.then(status="running", step="reserving")
    assert outcome.reaction.state == before.state
