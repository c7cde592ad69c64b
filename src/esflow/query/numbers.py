"""Human-readable order numbers, derived from the order id: ``7K2M-9QXD-4HTA``.

Decision (issue 14): the number is not stored anywhere. It is the first 60 bits of the order's UUID
(15 hex digits) in Crockford base32, in three groups of four. The order id is immutable and chosen once
(by the sender of PlaceOrder), so the number is too; the number turns back into a range of order ids
(every id starting with those 15 hex digits), which the ``orders`` primary key answers with an index
range scan. This needs no Avro change (OrderPlaced is being evolved elsewhere), no new ``orders``
DDL version and no rebuild, and every order already placed has its number.

Uniqueness: random (version 4) ids, what :mod:`esflow.client` gives, have 56 random bits in those
60, so two orders share a number with probability about n²/2^57 (1e-5 at a million orders). A sender
that chose time-ordered ids (UUIDv7: 48 bits of milliseconds first) could make two orders of the same
few milliseconds share one; the lookup then refuses to guess (see ``OrderByNumber``) rather than
return either. Crockford's alphabet has no I, L, O or U; reading accepts lower case, I/L for 1 and O
for 0, and ignores dashes.
"""

from __future__ import annotations

from uuid import UUID

ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_DECODE = {c: i for i, c in enumerate(ALPHABET)} | {"I": 1, "L": 1, "O": 0}
BITS = 60
DIGITS = BITS // 5


class BadOrderNumber(ValueError):
    """Text that is not an order number."""


def order_number(order_id: UUID) -> str:
    """The order number of ``order_id``."""
    value = order_id.int >> (128 - BITS)
    chars = [ALPHABET[(value >> (5 * i)) & 31] for i in reversed(range(DIGITS))]
    text = "".join(chars)
    return f"{text[0:4]}-{text[4:8]}-{text[8:12]}"


def parse_order_number(text: str) -> int:
    """The 60-bit value of an order number (a :class:`BadOrderNumber` for anything else)."""
    cleaned = text.strip().upper().replace("-", "")
    if len(cleaned) != DIGITS or any(c not in _DECODE for c in cleaned):
        raise BadOrderNumber(f"{text!r} is not an order number (12 letters and digits, e.g. 7K2M-9QXD-4HTA)")
    value = 0
    for c in cleaned:
        value = value * 32 + _DECODE[c]
    return value


def order_id_range(text: str) -> tuple[UUID, UUID]:
    """The smallest and largest order id whose number is ``text`` (inclusive)."""
    prefix = parse_order_number(text) << (128 - BITS)
    return UUID(int=prefix), UUID(int=prefix | ((1 << (128 - BITS)) - 1))


def normalise_order_number(text: str) -> str:
    """The canonical spelling of an order number (upper case, dashes, Crockford digits)."""
    value = parse_order_number(text)
    return order_number(UUID(int=value << (128 - BITS)))


__all__ = ["BadOrderNumber", "normalise_order_number", "order_id_range", "order_number", "parse_order_number"]
