"""The Product aggregate (inventory): catalogue data, stock on hand and reservations per order.

Rules:
- a product is registered once, with a positive price;
- price changes keep the currency, need a positive price and are refused once discontinued;
  setting the current price again appends nothing;
- received and reserved quantities are positive; a reservation never exceeds the available stock
  (on hand minus reserved); reserving again for the same order with the same quantity appends nothing,
  with another quantity it is refused; a discontinued product takes no new reservations;
- releasing needs a reservation for that order and gives back exactly what it held;
- discontinuing happens once.
"""

from __future__ import annotations

from collections.abc import Mapping
from uuid import UUID

from esflow.domain.aggregates.base import (
    Aggregate,
    Decision,
    already_exists,
    currency_mismatch,
    not_found,
    positive,
    reject,
)
from esflow.domain.messages import Command, Event
from esflow.domain.product import (
    ChangePrice,
    DiscontinueProduct,
    PriceChanged,
    ProductDiscontinued,
    ProductRegistered,
    ReceiveStock,
    RegisterProduct,
    ReleaseStock,
    ReserveStock,
    StockReceived,
    StockReleased,
    StockReserved,
)
from esflow.domain.reasons import (
    ALREADY_RESERVED,
    INSUFFICIENT_STOCK,
    INVALID_PRICE,
    INVALID_QUANTITY,
    NO_RESERVATION,
    PRODUCT_DISCONTINUED,
    UNKNOWN_COMMAND,
)
from esflow.domain.values import Frozen, Money


class ProductState(Frozen):
    """A registered product."""

    sku: str
    name: str
    category: str
    price: Money
    on_hand: int = 0
    reservations: Mapping[UUID, int] = {}
    discontinued: bool = False

    @property
    def reserved(self) -> int:
        """Units held for orders."""
        return sum(self.reservations.values())

    @property
    def available(self) -> int:
        """Units that can still be reserved."""
        return self.on_hand - self.reserved


def decide(state: ProductState | None, command: Command) -> Decision:
    """The events a product command appends, or why it is refused."""
    if isinstance(command, RegisterProduct):
        if state is not None:
            return already_exists("product")
        if not positive(command.price):
            return reject(INVALID_PRICE, "the price must be positive", price=str(command.price.amount))
        return (
            ProductRegistered(
                sku=command.sku, name=command.name, category=command.category, price=command.price
            ),
        )
    if state is None:
        return not_found("product")
    match command:
        case ChangePrice(price=price):
            if state.discontinued:
                return reject(PRODUCT_DISCONTINUED, "a discontinued product keeps its last price")
            if price.currency != state.price.currency:
                return currency_mismatch(state.price.currency, price.currency)
            if not positive(price):
                return reject(INVALID_PRICE, "the price must be positive", price=str(price.amount))
            return () if price == state.price else (PriceChanged(price=price),)
        case ReceiveStock(quantity=quantity):
            if quantity <= 0:
                return reject(INVALID_QUANTITY, "the quantity must be positive", quantity=quantity)
            return (StockReceived(quantity=quantity),)
        case ReserveStock(order_id=order_id, quantity=quantity):
            if state.discontinued:
                return reject(PRODUCT_DISCONTINUED, "a discontinued product takes no new reservations")
            if quantity <= 0:
                return reject(INVALID_QUANTITY, "the quantity must be positive", quantity=quantity)
            held = state.reservations.get(order_id)
            if held is not None:
                if held == quantity:
                    return ()
                return reject(
                    ALREADY_RESERVED,
                    f"{held} units are already reserved for this order",
                    order_id=str(order_id),
                    reserved=held,
                )
            if quantity > state.available:
                return reject(
                    INSUFFICIENT_STOCK,
                    f"only {state.available} units available, {quantity} requested",
                    available=state.available,
                    requested=quantity,
                )
            return (StockReserved(order_id=order_id, quantity=quantity),)
        case ReleaseStock(order_id=order_id):
            held = state.reservations.get(order_id)
            if held is None:
                return reject(NO_RESERVATION, "nothing is reserved for this order", order_id=str(order_id))
            return (StockReleased(order_id=order_id, quantity=held),)
        case DiscontinueProduct(reason=reason):
            if state.discontinued:
                return reject(PRODUCT_DISCONTINUED, "the product is already discontinued")
            return (ProductDiscontinued(reason=reason),)
    return reject(UNKNOWN_COMMAND, f"{command.type_name()} is not a product command")


def evolve(state: ProductState | None, event: Event) -> ProductState:
    """The product after ``event``."""
    if isinstance(event, ProductRegistered):
        return ProductState(sku=event.sku, name=event.name, category=event.category, price=event.price)
    if state is None:
        raise ValueError(f"{event.type_name()} before ProductRegistered")
    match event:
        case PriceChanged(price=price):
            return state.model_copy(update={"price": price})
        case StockReceived(quantity=quantity):
            return state.model_copy(update={"on_hand": state.on_hand + quantity})
        case StockReserved(order_id=order_id, quantity=quantity):
            return state.model_copy(update={"reservations": {**state.reservations, order_id: quantity}})
        case StockReleased(order_id=order_id):
            rest = {k: v for k, v in state.reservations.items() if k != order_id}
            return state.model_copy(update={"reservations": rest})
        case ProductDiscontinued():
            return state.model_copy(update={"discontinued": True})
    raise ValueError(f"{event.type_name()} is not a product event")


PRODUCT: Aggregate[ProductState] = Aggregate("product", ProductState, decide, evolve)
"""The Product aggregate."""
