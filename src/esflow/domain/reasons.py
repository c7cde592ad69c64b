"""Every reason code an aggregate can refuse a command with: the one registry of business reason codes.

A code is part of the contract (it is the ``reason`` of a rejected command result, and clients branch on
it), so each is a constant here, the aggregates name the constant instead of repeating a literal, and
:class:`~esflow.domain.aggregates.base.Rejection` refuses a code missing from :data:`BUSINESS_REASONS`.
``docs/domain.md`` gives each code's meaning; ``tests/unit/test_domain_contract.py`` keeps the two in step.
The codes of bad input, which no aggregate decides, live beside the result model
(``esflow.messaging.results``).
"""

from __future__ import annotations

# Shared by every aggregate.
NOT_FOUND = "not_found"
ALREADY_EXISTS = "already_exists"
VERSION_CONFLICT = "version_conflict"
UNKNOWN_COMMAND = "unknown_command"
INVALID_STATE = "invalid_state"
CURRENCY_MISMATCH = "currency_mismatch"
INVALID_AMOUNT = "invalid_amount"
INVALID_PRICE = "invalid_price"
INVALID_QUANTITY = "invalid_quantity"

# Product.
INSUFFICIENT_STOCK = "insufficient_stock"
ALREADY_RESERVED = "already_reserved"
NO_RESERVATION = "no_reservation"
PRODUCT_DISCONTINUED = "product_discontinued"

# Order.
EMPTY_ORDER = "empty_order"
DUPLICATE_ITEM = "duplicate_item"
ITEM_NOT_FOUND = "item_not_found"
AMOUNT_MISMATCH = "amount_mismatch"
NOT_PAID = "not_paid"
REFUND_EXCEEDS_PAYMENT = "refund_exceeds_payment"

# Account.
INSUFFICIENT_FUNDS = "insufficient_funds"
BALANCE_NOT_ZERO = "balance_not_zero"

# Transfer.
SAME_ACCOUNT = "same_account"

BUSINESS_REASONS: frozenset[str] = frozenset(
    {
        NOT_FOUND, ALREADY_EXISTS, VERSION_CONFLICT, UNKNOWN_COMMAND, INVALID_STATE, CURRENCY_MISMATCH,
        INVALID_AMOUNT, INVALID_PRICE, INVALID_QUANTITY,
        INSUFFICIENT_STOCK, ALREADY_RESERVED, NO_RESERVATION, PRODUCT_DISCONTINUED,
        EMPTY_ORDER, DUPLICATE_ITEM, ITEM_NOT_FOUND, AMOUNT_MISMATCH, NOT_PAID, REFUND_EXCEEDS_PAYMENT,
        INSUFFICIENT_FUNDS, BALANCE_NOT_ZERO,
        SAME_ACCOUNT,
    }
)  # fmt: skip
"""Every code a :class:`~esflow.domain.aggregates.base.Rejection` may carry."""
