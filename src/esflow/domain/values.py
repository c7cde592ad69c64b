"""Value objects shared by the messages of the reference domain.

Constraints here are the ones the wire format needs (a decimal that fits ``decimal(18, 2)``, an int that
fits 32 bits, an aware UTC time), not business rules: those belong to the aggregates, which must still
be able to read every historical event, including ones a stricter rule would reject today.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any
from uuid import UUID

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

Int32 = Annotated[int, Field(ge=-(2**31), le=2**31 - 1)]
"""A 32-bit signed integer (Avro ``int``)."""

Int64 = Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]
"""A 64-bit signed integer (Avro ``long``)."""

Amount = Annotated[Decimal, Field(max_digits=18, decimal_places=2, allow_inf_nan=False)]
"""A money amount: at most 18 digits, 2 of them after the point. Never a float."""

CurrencyCode = Annotated[str, Field(pattern=r"^[A-Z]{3}$")]
"""An ISO 4217 alphabetic currency code (format only: the list of codes changes over time)."""


def _to_utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


UtcDatetime = Annotated[AwareDatetime, AfterValidator(_to_utc)]
"""A timezone-aware instant, normalised to UTC (naive datetimes are rejected: their zone is a guess)."""


class Frozen(BaseModel):
    """Base of every message and value: immutable, no unknown fields."""

    model_config = ConfigDict(frozen=True, extra="forbid")


MONEY_SHAPE = '{"amount": "12.50", "currency": "EUR"}'
"""What a Money looks like in JSON: the amount as a decimal string (a number is taken too), an ISO code."""


class Money(Frozen):
    """An amount of money and its currency."""

    amount: Amount
    currency: CurrencyCode

    @model_validator(mode="before")
    @classmethod
    def _expect_object(cls, data: Any) -> Any:
        # A bare number or a half-filled object is the usual first try from the shell; pydantic alone
        # would answer "valid dictionary" or "field required" without showing the shape it wants.
        # Extra keys pass on to the model's own "extra inputs" error, which names them.
        if isinstance(data, Money) or (isinstance(data, dict) and data.keys() >= {"amount", "currency"}):
            return data
        got = f"an object with keys {sorted(map(str, data))}" if isinstance(data, dict) else repr(data)
        raise PydanticCustomError(
            "money_shape", "expected money as {shape}, got {got}", {"shape": MONEY_SHAPE, "got": got[:80]}
        )


class Address(Frozen):
    """A postal address to ship an order to."""

    recipient: str
    line1: str
    line2: str | None = None
    city: str
    postal_code: str
    country: Annotated[str, Field(pattern=r"^[A-Z]{2}$")]


class OrderItem(Frozen):
    """One order line: a product, how many, and the unit price agreed when the line was added."""

    product_id: UUID
    sku: str
    quantity: Int32
    unit_price: Money


class SalesChannel(StrEnum):
    """Where an order was placed (UNKNOWN for orders placed before channels were recorded)."""

    UNKNOWN = "UNKNOWN"
    WEB = "WEB"
    MOBILE = "MOBILE"
    STORE = "STORE"
