from __future__ import annotations

from decimal import Decimal
from uuid import uuid4

import pytest

from esflow.domain.aggregates import PRODUCT
from esflow.domain.aggregates.product import ProductState
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
from esflow.domain.values import Money
from tests.unit.domain.gwt import given

EUR10 = Money(amount=Decimal("10.00"), currency="EUR")
REGISTERED = ProductRegistered(sku="SKU-1", name="Mug", category="kitchen", price=EUR10)
ORDER_A = uuid4()
ORDER_B = uuid4()


def test_register() -> None:
    state = (
        given(PRODUCT)
        .when(RegisterProduct(sku="SKU-1", name="Mug", category="kitchen", price=EUR10))
        .then(REGISTERED)
    )
    assert state == ProductState(sku="SKU-1", name="Mug", category="kitchen", price=EUR10)


def test_register_twice_is_refused() -> None:
    cmd = RegisterProduct(sku="SKU-1", name="Mug", category="kitchen", price=EUR10)
    given(PRODUCT, REGISTERED).when(cmd).then_rejected("already_exists")


@pytest.mark.parametrize("amount", ["0", "-1.00"])
def test_register_needs_a_positive_price(amount: str) -> None:
    price = Money(amount=Decimal(amount), currency="EUR")
    given(PRODUCT).when(RegisterProduct(sku="S", name="n", category="c", price=price)).then_rejected(
        "invalid_price"
    )


@pytest.mark.parametrize(
    "command",
    [
        ChangePrice(price=EUR10),
        ReceiveStock(quantity=1),
        ReserveStock(order_id=ORDER_A, quantity=1),
        ReleaseStock(order_id=ORDER_A),
        DiscontinueProduct(),
    ],
    ids=lambda c: type(c).__name__,
)
def test_every_other_command_needs_a_registered_product(command: object) -> None:
    given(PRODUCT).when(command).then_rejected("not_found")  # type: ignore[arg-type]


def test_change_price() -> None:
    new = Money(amount=Decimal("12.50"), currency="EUR")
    state = given(PRODUCT, REGISTERED).when(ChangePrice(price=new)).then(PriceChanged(price=new))
    assert state.price == new


def test_change_to_the_same_price_appends_nothing() -> None:
    given(PRODUCT, REGISTERED).when(ChangePrice(price=EUR10)).then()


def test_change_price_keeps_the_currency() -> None:
    usd = Money(amount=Decimal("10.00"), currency="USD")
    given(PRODUCT, REGISTERED).when(ChangePrice(price=usd)).then_rejected(
        "currency_mismatch", expected="EUR", got="USD"
    )


def test_change_price_must_be_positive() -> None:
    zero = Money(amount=Decimal(0), currency="EUR")
    given(PRODUCT, REGISTERED).when(ChangePrice(price=zero)).then_rejected("invalid_price")


def test_discontinued_product_keeps_its_price() -> None:
    new = Money(amount=Decimal("11.00"), currency="EUR")
    given(PRODUCT, REGISTERED, ProductDiscontinued()).when(ChangePrice(price=new)).then_rejected(
        "product_discontinued"
    )


def test_receive_stock() -> None:
    state = given(PRODUCT, REGISTERED).when(ReceiveStock(quantity=5)).then(StockReceived(quantity=5))
    assert state.on_hand == 5


@pytest.mark.parametrize("quantity", [0, -3])
def test_receive_stock_needs_a_positive_quantity(quantity: int) -> None:
    given(PRODUCT, REGISTERED).when(ReceiveStock(quantity=quantity)).then_rejected(
        "invalid_quantity", quantity=quantity
    )


def test_reserve_stock() -> None:
    state = (
        given(PRODUCT, REGISTERED, StockReceived(quantity=5))
        .when(ReserveStock(order_id=ORDER_A, quantity=3))
        .then(StockReserved(order_id=ORDER_A, quantity=3))
    )
    assert state.available == 2
    assert state.reserved == 3


def test_reserve_beyond_available_stock_is_refused() -> None:
    given(PRODUCT, REGISTERED, StockReceived(quantity=5), StockReserved(order_id=ORDER_A, quantity=3)).when(
        ReserveStock(order_id=ORDER_B, quantity=3)
    ).then_rejected("insufficient_stock", available=2, requested=3)


def test_reserve_again_for_the_same_order_is_idempotent() -> None:
    given(PRODUCT, REGISTERED, StockReceived(quantity=5), StockReserved(order_id=ORDER_A, quantity=3)).when(
        ReserveStock(order_id=ORDER_A, quantity=3)
    ).then()


def test_reserve_another_quantity_for_the_same_order_is_refused() -> None:
    given(PRODUCT, REGISTERED, StockReceived(quantity=5), StockReserved(order_id=ORDER_A, quantity=3)).when(
        ReserveStock(order_id=ORDER_A, quantity=1)
    ).then_rejected("already_reserved", reserved=3)


@pytest.mark.parametrize("quantity", [0, -1])
def test_reserve_needs_a_positive_quantity(quantity: int) -> None:
    given(PRODUCT, REGISTERED, StockReceived(quantity=5)).when(
        ReserveStock(order_id=ORDER_A, quantity=quantity)
    ).then_rejected("invalid_quantity")


def test_discontinued_product_takes_no_reservations() -> None:
    given(PRODUCT, REGISTERED, StockReceived(quantity=5), ProductDiscontinued()).when(
        ReserveStock(order_id=ORDER_A, quantity=1)
    ).then_rejected("product_discontinued")


def test_release_gives_back_what_was_held() -> None:
    state = (
        given(PRODUCT, REGISTERED, StockReceived(quantity=5), StockReserved(order_id=ORDER_A, quantity=3))
        .when(ReleaseStock(order_id=ORDER_A))
        .then(StockReleased(order_id=ORDER_A, quantity=3))
    )
    assert state.available == 5
    assert state.reservations == {}


def test_release_without_reservation_is_refused() -> None:
    given(PRODUCT, REGISTERED, StockReceived(quantity=5)).when(ReleaseStock(order_id=ORDER_A)).then_rejected(
        "no_reservation"
    )


def test_release_twice_is_refused() -> None:
    given(
        PRODUCT,
        REGISTERED,
        StockReceived(quantity=5),
        StockReserved(order_id=ORDER_A, quantity=3),
        StockReleased(order_id=ORDER_A, quantity=3),
    ).when(ReleaseStock(order_id=ORDER_A)).then_rejected("no_reservation")


def test_discontinue() -> None:
    state = (
        given(PRODUCT, REGISTERED)
        .when(DiscontinueProduct(reason="eol"))
        .then(ProductDiscontinued(reason="eol"))
    )
    assert state.discontinued


def test_discontinue_twice_is_refused() -> None:
    given(PRODUCT, REGISTERED, ProductDiscontinued()).when(DiscontinueProduct()).then_rejected(
        "product_discontinued"
    )


def test_stock_still_arrives_after_discontinuing() -> None:
    given(PRODUCT, REGISTERED, ProductDiscontinued()).when(ReceiveStock(quantity=2)).then(
        StockReceived(quantity=2)
    )


def test_evolve_refuses_events_before_registration() -> None:
    with pytest.raises(ValueError, match="before ProductRegistered"):
        PRODUCT.evolve(None, StockReceived(quantity=1))
