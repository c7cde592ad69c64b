"""Both processes against the real aggregates in random interleavings: every instance ends, and adds up.

A small in-memory world runs the commands a process sends through the real ``decide``/``evolve`` of the
product, order, account and transfer aggregates, answers them in a random order (some answers lost: the
command ran or not, and the process hears ``timeout``), delivers the order events the commands caused,
fires timers at random moments, and lets a customer cancel or a carrier ship at random moments.
Hypothesis explores the orders; the invariants are those of issue 13's acceptance run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID, uuid4

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from esflow.domain.account import AccountOpened, CloseAccount, FreezeAccount, FundsDeposited
from esflow.domain.aggregates import (
    ACCOUNT,
    AGGREGATES,
    ORDER,
    PRODUCT,
    TRANSFER,
    Aggregate,
    Rejection,
    execute,
)
from esflow.domain.aggregates.order import OrderStatus
from esflow.domain.aggregates.transfer import TransferStatus
from esflow.domain.messages import Command, Event
from esflow.domain.order import CancelOrder, OrderPlaced, ShipOrder
from esflow.domain.process import (
    AnswerIn,
    CancelTimer,
    EventIn,
    Input,
    ProcessDefinition,
    Reaction,
    Send,
    SetTimer,
    TimerIn,
)
from esflow.domain.process.fulfilment import OrderFulfilment
from esflow.domain.process.funds_transfer import FundsTransfer
from esflow.domain.product import ProductRegistered, StockReceived
from esflow.domain.transfer import TransferRequested
from esflow.domain.values import Address, Money, OrderItem
from tests.unit.domain.process_gwt import T0, event_in

HOME = Address(recipient="Ada", line1="1 Main St", city="Berlin", postal_code="10115", country="DE")
PROFILE = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def eur(amount: Decimal | int | str) -> Money:
    return Money(amount=Decimal(amount), currency="EUR")


@dataclass
class World:
    """Aggregates as event lists, a process instance, and what is still in flight between them."""

    definition: ProcessDefinition[Any]
    streams: dict[UUID, tuple[Aggregate[Any], list[Event]]] = field(default_factory=dict)
    in_flight: list[Send] = field(default_factory=list)
    events: list[EventIn] = field(default_factory=list)
    timers: dict[str, TimerIn] = field(default_factory=dict)
    reaction: Reaction[Any] | None = None
    lost: list[str] = field(default_factory=list)

    def create(self, aggregate_id: UUID, aggregate: Aggregate[Any], *events: Event) -> None:
        self.streams[aggregate_id] = (aggregate, list(events))

    def state(self, aggregate_id: UUID) -> Any:
        aggregate, events = self.streams[aggregate_id]
        return aggregate.fold(events)

    def run(
        self, aggregate_id: UUID, command: Command, correlation_id: UUID | None = None
    ) -> Rejection | None:
        """Decide ``command`` on its aggregate; order events go to the process, as the runtime would."""
        aggregate, events = self.streams.setdefault(aggregate_id, (AGGREGATES[command.aggregate_type], []))
        decision = execute(aggregate, aggregate.fold(events), len(events), command, None)
        if isinstance(decision, Rejection):
            return decision
        events.extend(decision)
        for event in decision:
            message = event_in(event, aggregate_id, correlation_id=correlation_id)
            if self.definition.correlate(message) is not None:
                self.events.append(message)
        return None

    def start(self, event: EventIn) -> None:
        self.apply(self.definition.start(event, T0))

    def feed(self, message: Input) -> None:
        assert self.reaction is not None
        self.apply(self.definition.react(self.reaction.state, message, T0))

    def apply(self, reaction: Reaction[Any]) -> None:
        self.reaction = reaction
        for action in reaction.actions:
            match action:
                case Send():
                    assert not reaction.final, "a final instance sends nothing"
                    self.in_flight.append(action)
                case SetTimer(name=name, at=at):
                    self.timers[name] = TimerIn(name=name, at=at)
                case CancelTimer(name=name):
                    self.timers.pop(name, None)

    def answer(self, index: int, fate: str) -> None:
        """Run in-flight send ``index`` and answer it, or lose the answer (``ran`` or ``lost``)."""
        send = self.in_flight.pop(index)
        assert self.reaction is not None
        refusal = (
            None if fate == "lost" else self.run(send.aggregate_id, send.command, correlation_id=uuid4())
        )
        if fate in ("ran", "lost"):
            self.lost.append(send.step)
            self.feed(AnswerIn(step=send.step, outcome="rejected", reason="timeout"))
        elif refusal is None:
            self.feed(AnswerIn(step=send.step, outcome="accepted"))
        else:
            self.feed(
                AnswerIn(step=send.step, outcome="rejected", reason=refusal.code, message=refusal.message)
            )

    def drive(self, data: st.DataObject, outside: list[tuple[UUID, Command]], lose: bool) -> None:
        """Until nothing is in flight: answer, deliver, fire or act from outside, in a drawn order."""
        for _ in range(400):
            choices = [f"answer{i}" for i in range(len(self.in_flight))]
            choices += ["event"] * bool(self.events) + [f"timer:{n}" for n in self.timers]
            choices += ["outside"] * bool(outside)
            if not choices:
                return
            choice = data.draw(st.sampled_from(choices))
            if choice.startswith("answer"):
                fates = ["answer", "answer", "ran", "lost"] if lose else ["answer"]
                self.answer(int(choice[6:]), data.draw(st.sampled_from(fates)))
            elif choice == "event":
                self.feed(self.events.pop(0))
            elif choice.startswith("timer:"):
                self.feed(self.timers.pop(choice[6:]))
            else:
                self.run(*outside.pop(0))
        raise AssertionError("the instance never settles")


# ------------------------------------------------------------------------------------- order fulfilment


@given(data=st.data())
@PROFILE
def test_every_fulfilment_ends_and_leaves_stock_and_money_as_its_outcome_says(data: st.DataObject) -> None:
    world = World(OrderFulfilment(payment_window=timedelta(seconds=30)))
    order, account, customer = uuid4(), uuid4(), uuid4()
    balance = Decimal(data.draw(st.integers(0, 60)))
    world.create(
        account,
        ACCOUNT,
        AccountOpened(owner_id=customer, currency="EUR"),
        FundsDeposited(amount=eur(balance)),
    )
    items = []
    for n in range(data.draw(st.integers(1, 3))):
        product = uuid4()
        registered = ProductRegistered(sku=f"s{n}", name="n", category="c", price=eur(5))
        world.create(product, PRODUCT, registered, StockReceived(quantity=data.draw(st.integers(0, 4))))
        price = data.draw(st.sampled_from(["0.00", "5.00", "10.00"]))
        items.append(
            OrderItem(
                product_id=product, sku=f"s{n}", quantity=data.draw(st.integers(1, 3)), unit_price=eur(price)
            )
        )
    placed = OrderPlaced(customer_id=customer, items=tuple(items), shipping_address=HOME, account_id=account)
    world.create(order, ORDER, placed)
    outside: list[tuple[UUID, Command]] = []
    if data.draw(st.booleans()):
        outside.append((order, CancelOrder(reason="customer")))
    if data.draw(st.booleans()):
        outside.append((order, ShipOrder(carrier="DHL", tracking_number="T")))
    lose = data.draw(st.booleans())

    world.start(event_in(placed, order))
    world.drive(data, outside, lose)

    reaction = world.reaction
    assert reaction is not None and not world.in_flight
    total = sum((i.unit_price.amount * i.quantity for i in items), Decimal(0))
    order_state = world.state(order)
    held = {i.product_id: world.state(i.product_id).reservations.get(order) for i in items}
    money = world.state(account).balance
    if reaction.status == "completed":
        assert order_state.status in (OrderStatus.PAID, OrderStatus.SHIPPED)
        assert held == {i.product_id: i.quantity for i in items}
        assert money == balance - total
    elif reaction.status == "compensated":
        assert reaction.final and order_state.status is OrderStatus.CANCELLED
        assert set(held.values()) == {None}, "a compensated order holds no stock"
        assert money == balance, "a compensated order costs nothing"
    else:
        assert reaction.status == "failed", reaction
        assert reaction.final and world.lost, "only a lost answer leaves an order to a person"
    if not world.lost:
        assert reaction.status in ("completed", "compensated")


# ------------------------------------------------------------------------------------- funds transfer


@given(data=st.data())
@PROFILE
def test_every_transfer_ends_completed_or_failed_and_money_is_conserved(data: st.DataObject) -> None:
    world = World(FundsTransfer())
    transfer, source, target = uuid4(), uuid4(), uuid4()
    balance = Decimal(data.draw(st.integers(0, 50)))
    amount = eur(data.draw(st.integers(1, 40)))
    world.create(
        source, ACCOUNT, AccountOpened(owner_id=uuid4(), currency="EUR"), FundsDeposited(amount=eur(balance))
    )
    target_kind = data.draw(st.sampled_from(["open", "frozen", "closed", "missing", "usd"]))
    if target_kind != "missing":
        currency = "USD" if target_kind == "usd" else "EUR"
        world.create(target, ACCOUNT, AccountOpened(owner_id=uuid4(), currency=currency))
        if target_kind == "frozen":
            assert world.run(target, FreezeAccount(reason="kyc")) is None
        if target_kind == "closed":
            assert world.run(target, CloseAccount()) is None
    requested = TransferRequested(source_account_id=source, target_account_id=target, amount=amount)
    world.create(transfer, TRANSFER, requested)
    lose = data.draw(st.booleans())

    world.start(event_in(requested, transfer))
    world.drive(data, [], lose)

    reaction = world.reaction
    assert reaction is not None and reaction.final and not world.in_flight
    status = world.state(transfer).status
    source_after = world.state(source).balance
    target_after = world.state(target).balance if target_kind != "missing" else Decimal(0)
    if reaction.status == "completed":
        assert status is TransferStatus.COMPLETED
        assert (source_after, target_after) == (balance - amount.amount, amount.amount)
    elif reaction.status == "compensated":
        assert status is TransferStatus.FAILED
        assert (source_after, target_after) == (balance, 0), "a failed transfer moves no money"
    else:
        assert reaction.status == "failed"
        assert world.lost, "only a lost answer leaves the money's whereabouts to a person"
        assert status is not TransferStatus.REQUESTED or "fail" in world.lost or "complete" in world.lost
    if not world.lost:
        assert status is not TransferStatus.REQUESTED, "every transfer ends completed or failed"
        assert source_after + target_after == balance, "money is conserved"
