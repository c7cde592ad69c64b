"""A deterministic, domain-consistent stream of events for the projection tests and benchmark.

Products, accounts and orders live their lives in an interleaved order: each aggregate's events follow
the rules of its aggregate (registered before stocked, placed before paid, balance never negative), with
gap-free versions and increasing times, as the command processor would write them.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from esflow.domain.account import (
    AccountClosed,
    AccountFrozen,
    AccountOpened,
    AccountUnfrozen,
    FundsDeposited,
    FundsWithdrawn,
)
from esflow.domain.messages import Event, EventEnvelope, EventMetadata
from esflow.domain.order import (
    OrderCancelled,
    OrderConfirmed,
    OrderDelivered,
    OrderItemAdded,
    OrderItemRemoved,
    OrderPaid,
    OrderPlaced,
    OrderRefunded,
    OrderShipped,
    ShippingAddressUpdated,
)
from esflow.domain.product import (
    PriceChanged,
    ProductDiscontinued,
    ProductRegistered,
    StockReceived,
    StockReleased,
    StockReserved,
)
from esflow.domain.values import Address, Money, OrderItem, SalesChannel

_START = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
CURRENCIES = ("EUR", "USD")


@dataclass
class _Agg:
    kind: str
    id: uuid.UUID
    version: int = 0
    state: dict[str, object] = field(default_factory=dict)


class Workload:
    """Generates envelopes; the same seed gives the same events (ids included) on every run."""

    def __init__(self, seed: int = 7, *, customers: int = 200, products: int = 100) -> None:
        self.rng = random.Random(seed)
        self.clock = _START
        self.customers = [self._uuid() for _ in range(customers)]
        self.product_pool = products
        self.products: list[_Agg] = []

    def _uuid(self) -> uuid.UUID:
        return uuid.UUID(int=self.rng.getrandbits(128), version=4)

    def _envelope(self, agg: _Agg, event: Event) -> EventEnvelope:
        agg.version += 1
        # Minutes to hours apart, so the events span several days (daily_revenue gets many rows).
        self.clock += timedelta(seconds=self.rng.randint(1, 90), microseconds=self.rng.randint(0, 999_999))
        command = self._uuid()
        return EventEnvelope(
            metadata=EventMetadata(
                event_id=self._uuid(),
                aggregate_type=agg.kind,
                aggregate_id=agg.id,
                aggregate_version=agg.version,
                occurred_at=self.clock,
                command_id=command,
                correlation_id=self._uuid(),
                causation_id=command,
            ),
            event=event,
        )

    def _money(self, currency: str, low: int = 100, high: int = 50_000) -> Money:
        return Money(amount=Decimal(self.rng.randint(low, high)).scaleb(-2), currency=currency)

    def _address(self) -> Address:
        city = self.rng.choice(["Berlin", "Lyon", "Porto", "Austin", "Osaka"])
        return Address(
            recipient="R. Cipient", line1="1 Main St", city=city, postal_code="12345", country="DE"
        )

    def _product_life(self, agg: _Agg) -> Iterator[Event]:
        currency = self.rng.choice(CURRENCIES)
        yield ProductRegistered(
            sku=f"SKU-{agg.id.hex[:8]}", name="Widget", category="tools", price=self._money(currency)
        )
        reservations: list[tuple[uuid.UUID, int]] = []
        for _ in range(self.rng.randint(2, 12)):
            roll = self.rng.random()
            if roll < 0.3:
                yield StockReceived(quantity=self.rng.randint(1, 100))
            elif roll < 0.55:
                order_id, quantity = self._uuid(), self.rng.randint(1, 5)
                reservations.append((order_id, quantity))
                yield StockReserved(order_id=order_id, quantity=quantity)
            elif roll < 0.7 and reservations:
                order_id, quantity = reservations.pop(self.rng.randrange(len(reservations)))
                yield StockReleased(order_id=order_id, quantity=quantity)
            else:
                yield PriceChanged(price=self._money(currency))
        if self.rng.random() < 0.1:
            yield ProductDiscontinued(reason=self.rng.choice([None, "end of line"]))

    def _account_life(self, agg: _Agg) -> Iterator[Event]:
        currency = self.rng.choice(CURRENCIES)
        yield AccountOpened(owner_id=self.rng.choice(self.customers), currency=currency)
        balance = Decimal(0)
        frozen = False
        for _ in range(self.rng.randint(1, 10)):
            roll = self.rng.random()
            if roll < 0.5:
                amount = self._money(currency)
                balance += amount.amount
                yield FundsDeposited(amount=amount, reference=self.rng.choice([None, "salary"]))
            elif roll < 0.8 and not frozen and balance > 1:
                amount = Money(
                    amount=(balance * Decimal(self.rng.random())).quantize(Decimal("0.01")), currency=currency
                )
                if amount.amount > 0:
                    balance -= amount.amount
                    yield FundsWithdrawn(amount=amount, reference=None)
            elif roll < 0.9 and not frozen:
                frozen = True
                yield AccountFrozen(reason="review")
            elif frozen:
                frozen = False
                yield AccountUnfrozen()
        if balance == 0 and not frozen and self.rng.random() < 0.5:
            yield AccountClosed()

    def _item(self, currency: str, used: set[uuid.UUID]) -> OrderItem:
        product = self.rng.choice(self.products) if self.products else None
        product_id = product.id if product is not None else self._uuid()
        while product_id in used:
            product_id = self._uuid()
        used.add(product_id)
        return OrderItem(
            product_id=product_id,
            sku=f"SKU-{product_id.hex[:8]}",
            quantity=self.rng.randint(1, 4),
            unit_price=self._money(currency, 100, 20_000),
        )

    def _order_life(self, agg: _Agg) -> Iterator[Event]:
        currency = self.rng.choice(CURRENCIES)
        used: set[uuid.UUID] = set()
        items = [self._item(currency, used) for _ in range(self.rng.randint(1, 3))]
        yield OrderPlaced(
            customer_id=self.rng.choice(self.customers),
            items=tuple(items),
            shipping_address=self._address(),
            sales_channel=self.rng.choice(list(SalesChannel)),
        )
        for _ in range(self.rng.randint(0, 2)):
            if self.rng.random() < 0.6:
                item = self._item(currency, used)
                items.append(item)
                yield OrderItemAdded(item=item)
            elif len(items) > 1:
                gone = items.pop(self.rng.randrange(len(items)))
                yield OrderItemRemoved(product_id=gone.product_id)
        if self.rng.random() < 0.2:
            yield ShippingAddressUpdated(shipping_address=self._address())
        if self.rng.random() < 0.1:
            yield OrderCancelled(reason="changed mind")
            return
        yield OrderConfirmed()
        total = sum((i.unit_price.amount * i.quantity for i in items), Decimal(0))
        if self.rng.random() < 0.15:
            yield OrderCancelled(reason="not paid")
            return
        yield OrderPaid(payment_ref=f"PAY-{agg.id.hex[:6]}", amount=Money(amount=total, currency=currency))
        if self.rng.random() < 0.1:
            part = (total * Decimal("0.5")).quantize(Decimal("0.01"))
            yield OrderRefunded(amount=Money(amount=part, currency=currency), reason="damaged")
        if self.rng.random() < 0.8:
            yield OrderShipped(carrier="DHL", tracking_number=f"TN{agg.id.hex[:10]}")
            if self.rng.random() < 0.8:
                yield OrderDelivered()

    def events(self, count: int) -> list[EventEnvelope]:
        """About ``count`` envelopes (exactly ``count``), interleaving many aggregates' lives."""
        out: list[EventEnvelope] = []
        live: list[tuple[_Agg, Iterator[Event]]] = []
        while len(out) < count:
            if len(live) < 50:
                roll = self.rng.random()
                if roll < 0.15 or not self.products:
                    agg = _Agg("product", self._uuid())
                    self.products.append(agg)
                    self.products = self.products[-self.product_pool :]
                    life = self._product_life(agg)
                elif roll < 0.35:
                    agg = _Agg("account", self._uuid())
                    life = self._account_life(agg)
                else:
                    agg = _Agg("order", self._uuid())
                    life = self._order_life(agg)
                live.append((agg, life))
            index = self.rng.randrange(len(live))
            agg, life = live[index]
            event = next(life, None)
            if event is None:
                live.pop(index)
                continue
            out.append(self._envelope(agg, event))
        return out
