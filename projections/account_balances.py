"""``account_balances``: per account its balance, deposits, withdrawals, status and last activity."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal

import sqlalchemy as sa

from esflow.domain.account import (
    AccountClosed,
    AccountFrozen,
    AccountOpened,
    AccountUnfrozen,
    FundsDeposited,
    FundsWithdrawn,
)
from esflow.domain.messages import EventEnvelope
from esflow.readmodel.bulk import UpsertMethod, upsert
from esflow.readmodel.tables import account_balances
from projections.common import Events, Row, event_types, fold_by_aggregate, values

COLUMNS: Sequence[str] = tuple(c.name for c in account_balances.columns)


def fold(row: Row | None, envelope: EventEnvelope) -> Row:
    """The account row after one event (a new dict)."""
    meta = envelope.metadata
    event = envelope.event
    at = meta.occurred_at
    if isinstance(event, AccountOpened):
        new: Row = {
            "account_id": meta.aggregate_id,
            "owner_id": event.owner_id,
            "currency": event.currency,
            "balance": Decimal("0.00"),
            "deposits_total": Decimal("0.00"),
            "withdrawals_total": Decimal("0.00"),
            "status": "OPEN",
            "opened_at": at,
            "closed_at": None,
        }
    else:
        if row is None:
            raise ValueError(f"{event.type_name()} for account {meta.aggregate_id} before AccountOpened")
        new = dict(row)
        match event:
            case FundsDeposited(amount=amount):
                new["balance"] += amount.amount
                new["deposits_total"] += amount.amount
            case FundsWithdrawn(amount=amount):
                new["balance"] -= amount.amount
                new["withdrawals_total"] += amount.amount
            case AccountFrozen():
                new["status"] = "FROZEN"
            case AccountUnfrozen():
                new["status"] = "OPEN"
            case AccountClosed():
                new.update(status="CLOSED", closed_at=at)
            case _:
                raise ValueError(f"account_balances does not handle {event.type_name()}")
    new["last_activity_at"] = at
    new["version"] = meta.aggregate_version
    return new


class AccountBalancesProjection:
    """Builds ``account_balances`` from ``events.account``."""

    name = "account_balances"
    version = 1
    aggregates = ("account",)
    _known = event_types("account")

    def knows(self, type_name: str) -> bool:
        """Every account event."""
        return type_name in self._known

    def apply(self, conn: sa.Connection, events: Events, *, method: UpsertMethod) -> None:
        """Fold the batch into the stored rows and upsert the changed ones."""
        changed = fold_by_aggregate(conn, account_balances, "account_id", events, fold)
        out = [values(row, COLUMNS) for row in changed]
        upsert(
            conn, account_balances, COLUMNS, out, conflict=["account_id"], update=COLUMNS[1:], method=method
        )
