"""A realistic command stream for the reference domain (shop + ledger), for `esflow loadgen` and the demo.

The generator keeps its own model of what it has asked for, so it knows which commands the processor
should accept. With probability ``reject_share`` it deliberately emits a command the business rules
must refuse (overdraft, over-refund, wrong payment, shipping an unpaid order) and records the reason it
expects. Commands of one aggregate are keyed alike, so they are processed in the order generated and
the model's predictions hold.

Product SKUs carry a tag drawn once per workload (``run_tag``), so a second run against the same
database registers new products under new SKUs instead of a second product with an existing SKU.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from esflow.client.commands import command_spec, envelope
from esflow.domain import reasons
from esflow.domain.messages import Command, CommandEnvelope

CURRENCY = "EUR"
CATEGORIES = ("kitchen", "garden", "books", "toys", "tools", "sports")
CITIES = (("Berlin", "DE"), ("Lyon", "FR"), ("Porto", "PT"), ("Graz", "AT"), ("Gent", "BE"))
CARRIERS = ("DHL", "UPS", "GLS", "PostNL")
CENT = Decimal("0.01")


@dataclass(frozen=True)
class Planned:
    """One command and the outcome the workload expects for it."""

    envelope: CommandEnvelope
    expect: str  # "accepted" or the rejection reason code


@dataclass
class _Product:
    id: uuid.UUID
    sku: str
    price: Decimal


@dataclass
class _Account:
    id: uuid.UUID
    balance: Decimal = Decimal(0)


@dataclass
class _Order:
    id: uuid.UUID
    total: Decimal
    status: str = "placed"
    paid: Decimal = Decimal(0)
    refunded: Decimal = Decimal(0)


def new_run_tag() -> str:
    """A fresh tag for one run's SKUs: random, not from the seeded generator, so seeds stay comparable."""
    return uuid.uuid4().hex[:8].upper()


def _money(amount: Decimal) -> dict[str, str]:
    return {"amount": str(amount.quantize(CENT)), "currency": CURRENCY}


def _cmd(type_name: str, **fields: Any) -> Command:
    return command_spec(type_name).model.model_validate(fields)  # type: ignore[return-value]


@dataclass
class Workload:
    """An endless, seeded stream of :class:`Planned` commands."""

    reject_share: float = 0.05
    seed: int = 7
    min_products: int = 30
    min_accounts: int = 30
    run_tag: str = field(default_factory=new_run_tag)
    rng: random.Random = field(init=False)
    products: list[_Product] = field(default_factory=list)
    accounts: list[_Account] = field(default_factory=list)
    open_orders: list[_Order] = field(default_factory=list)
    paid_orders: list[_Order] = field(default_factory=list)
    shipping: list[_Order] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def __iter__(self) -> Iterator[Planned]:
        while True:
            yield from self.step()

    def _plan(self, command: Command, aggregate_id: uuid.UUID | None, expect: str = "accepted") -> Planned:
        return Planned(envelope(command, aggregate_id), expect)

    def step(self) -> list[Planned]:
        """The next one to three commands."""
        r = self.rng
        if len(self.products) < self.min_products:
            return self._new_product()
        if len(self.accounts) < self.min_accounts:
            return self._new_account()
        if r.random() < self.reject_share:
            bad = self._doomed()
            if bad is not None:
                return [bad]
        roll = r.random()
        if roll < 0.25:
            return self._place_order()
        if roll < 0.65 and (self.open_orders or self.shipping):
            return self._advance_order()
        if roll < 0.72:
            return self._deposit()
        if roll < 0.79:
            return self._withdraw()
        if roll < 0.83:
            return self._change_price()
        if roll < 0.90:
            return self._receive_stock()
        if roll < 0.95 and self.paid_orders:
            return self._refund()
        return self._place_order()

    def _new_product(self) -> list[Planned]:
        n = len(self.products)
        price = Decimal(self.rng.randint(199, 9999)) / 100
        p = _Product(uuid.uuid4(), f"SKU-{self.run_tag}-{n:03d}", price)
        self.products.append(p)
        register = _cmd(
            "RegisterProduct",
            sku=p.sku,
            name=f"Product {n}",
            category=self.rng.choice(CATEGORIES),
            price=_money(price),
        )
        return [
            Planned(envelope(register, p.id), "accepted"),
            self._plan(_cmd("ReceiveStock", quantity=self.rng.randint(100, 1000)), p.id),
        ]

    def _new_account(self) -> list[Planned]:
        a = _Account(uuid.uuid4())
        self.accounts.append(a)
        amount = Decimal(self.rng.randint(100, 5000))
        a.balance += amount
        return [
            Planned(
                envelope(_cmd("OpenAccount", owner_id=str(uuid.uuid4()), currency=CURRENCY), a.id), "accepted"
            ),
            self._plan(_cmd("DepositFunds", amount=_money(amount)), a.id),
        ]

    def _place_order(self) -> list[Planned]:
        r = self.rng
        chosen = r.sample(self.products, k=r.randint(1, 4))
        quantities = [r.randint(1, 3) for _ in chosen]
        items = [
            {"product_id": str(p.id), "sku": p.sku, "quantity": q, "unit_price": _money(p.price)}
            for p, q in zip(chosen, quantities, strict=True)
        ]
        total = sum((p.price * q for p, q in zip(chosen, quantities, strict=True)), Decimal(0))
        city, country = r.choice(CITIES)
        order = _Order(uuid.uuid4(), total.quantize(CENT))
        self.open_orders.append(order)
        place = _cmd(
            "PlaceOrder",
            customer_id=str(uuid.uuid4()),
            items=items,
            shipping_address={
                "recipient": "A. Customer", "line1": f"{r.randint(1, 200)} Main St", "city": city,
                "postal_code": f"{r.randint(10000, 99999)}", "country": country,
            },
            sales_channel=r.choice(["WEB", "MOBILE", "STORE"]),
        )  # fmt: skip
        return [Planned(envelope(place, order.id), "accepted")]

    def _advance_order(self) -> list[Planned]:
        r = self.rng
        # Uniform over every order in flight, so each stage holds orders in proportion to its traffic.
        i = r.randrange(len(self.open_orders) + len(self.shipping))
        pool = self.open_orders if i < len(self.open_orders) else self.shipping
        order = pool[i if pool is self.open_orders else i - len(self.open_orders)]
        if order.status in ("placed", "confirmed") and r.random() < 0.08:
            order.status = "cancelled"
            pool.remove(order)
            return [self._plan(_cmd("CancelOrder", reason="customer changed their mind"), order.id)]
        if order.status == "placed":
            order.status = "confirmed"
            return [self._plan(_cmd("ConfirmOrder"), order.id)]
        if order.status == "confirmed":
            order.status = "paid"
            order.paid = order.total
            pool.remove(order)
            self.shipping.append(order)
            self.paid_orders.append(order)
            if len(self.paid_orders) > 500:  # keep the refund pool bounded on long runs
                self.paid_orders.pop(0)
            ref = f"PAY-{r.randint(10**8, 10**9)}"
            return [self._plan(_cmd("MarkOrderPaid", payment_ref=ref, amount=_money(order.total)), order.id)]
        if order.status == "paid":
            order.status = "shipped"
            tracking = f"TRK{r.randint(10**9, 10**10)}"
            return [
                self._plan(_cmd("ShipOrder", carrier=r.choice(CARRIERS), tracking_number=tracking), order.id)
            ]
        order.status = "delivered"
        pool.remove(order)
        return [self._plan(_cmd("DeliverOrder"), order.id)]

    def _refund(self) -> list[Planned]:
        order = self.rng.choice(self.paid_orders)
        left = order.paid - order.refunded
        if left <= 0:
            self.paid_orders.remove(order)
            return self._place_order()
        amount = (left * Decimal(self.rng.choice(["0.25", "0.5", "1"]))).quantize(CENT)
        if amount <= 0:
            amount = left
        order.refunded += amount
        return [self._plan(_cmd("RefundOrder", amount=_money(amount), reason="damaged in transit"), order.id)]

    def _deposit(self) -> list[Planned]:
        a = self.rng.choice(self.accounts)
        amount = Decimal(self.rng.randint(10, 500))
        a.balance += amount
        return [self._plan(_cmd("DepositFunds", amount=_money(amount)), a.id)]

    def _withdraw(self) -> list[Planned]:
        a = self.rng.choice(self.accounts)
        if a.balance < 1:
            return self._deposit()
        amount = Decimal(self.rng.randint(1, int(a.balance)))
        a.balance -= amount
        return [self._plan(_cmd("WithdrawFunds", amount=_money(amount)), a.id)]

    def _change_price(self) -> list[Planned]:
        p = self.rng.choice(self.products)
        p.price = Decimal(self.rng.randint(199, 9999)) / 100
        return [self._plan(_cmd("ChangePrice", price=_money(p.price)), p.id)]

    def _receive_stock(self) -> list[Planned]:
        p = self.rng.choice(self.products)
        return [self._plan(_cmd("ReceiveStock", quantity=self.rng.randint(10, 200)), p.id)]

    def _doomed(self) -> Planned | None:
        """A command the rules must refuse, with the reason code it must get."""
        r = self.rng
        kind = r.choice(["overdraft", "over_refund", "ship_unpaid", "wrong_amount"])
        if kind == "overdraft":
            a = r.choice(self.accounts)
            too_much = a.balance + Decimal(r.randint(1, 1000))
            withdraw = _cmd("WithdrawFunds", amount=_money(too_much))
            return self._plan(withdraw, a.id, reasons.INSUFFICIENT_FUNDS)
        if kind == "over_refund" and self.paid_orders:
            o = r.choice(self.paid_orders)
            excess = o.paid - o.refunded + Decimal(r.randint(1, 100))
            return self._plan(
                _cmd("RefundOrder", amount=_money(excess), reason="too much"), o.id, "refund_exceeds_payment"
            )
        placed = [o for o in self.open_orders if o.status == "placed"]
        if kind == "ship_unpaid" and placed:
            o = r.choice(placed)
            ship = _cmd("ShipOrder", carrier="DHL", tracking_number="X")
            return self._plan(ship, o.id, reasons.INVALID_STATE)
        confirmed = [o for o in self.open_orders if o.status == "confirmed"]
        if kind == "wrong_amount" and confirmed:
            o = r.choice(confirmed)
            wrong = o.total + Decimal("1.00")
            return self._plan(
                _cmd("MarkOrderPaid", payment_ref="PAY-X", amount=_money(wrong)), o.id, "amount_mismatch"
            )
        return None
