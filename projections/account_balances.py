"""``account_balances``: per account its balance, deposits, withdrawals, status and last activity."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import UUID as PG_UUID

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
from esflow.readmodel.contract import Column, View, freshness
from esflow.readmodel.migrations import ReadModelDDL
from esflow.readmodel.model import ReadModel
from esflow.readmodel.tables import MONEY, ts
from projections.common import Events, Row, event_types, fold_by_aggregate, metadata, values

# ------------------------------------------------------------------------------ the read model

account_balances = sa.Table(
    "account_balances",
    metadata,
    sa.Column("account_id", PG_UUID(as_uuid=True), primary_key=True),
    sa.Column("owner_id", PG_UUID(as_uuid=True), nullable=False),
    sa.Column("currency", sa.CHAR(3), nullable=False),
    sa.Column("balance", MONEY, nullable=False),
    sa.Column("deposits_total", MONEY, nullable=False),
    sa.Column("withdrawals_total", MONEY, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    ts("opened_at", nullable=False),
    ts("closed_at"),
    ts("last_activity_at", nullable=False),
    sa.Column("version", sa.BigInteger, nullable=False),
)

DDL_V1 = ReadModelDDL(
    tables=(
        """
            CREATE TABLE account_balances (
                account_id         uuid          PRIMARY KEY,
                owner_id           uuid          NOT NULL,
                currency           char(3)       NOT NULL,
                balance            numeric(20,2) NOT NULL,
                deposits_total     numeric(20,2) NOT NULL,
                withdrawals_total  numeric(20,2) NOT NULL,
                status             text          NOT NULL,
                opened_at          timestamptz   NOT NULL,
                closed_at          timestamptz,
                last_activity_at   timestamptz   NOT NULL,
                version            bigint        NOT NULL,
                CONSTRAINT account_balances_status_known CHECK (status IN ('OPEN', 'FROZEN', 'CLOSED'))
            )
        """,
    ),
    frozen="b650b56ca7cd8136b7f5fbc64338b2fd708225fd7562c675f14b6d3955149599",
)
"""Code version 1, released: frozen (a change of these tables is a new code version)."""

VIEW = View(
    name="account_balances",
    projection="account_balances",
    table="account_balances",
    grain="one row per ledger account (account_id)",
    comment=(
        "Ledger accounts with their balance, the money that went in and out, their status and last "
        "activity. Folded from the account events; every amount is in the account's currency."
    ),
    freshness=freshness("account_balances", "the account event topic"),
    columns=(
        Column("account_id", "Account id (the account aggregate's id)."),
        Column("owner_id", "Owner of the account, from AccountOpened."),
        Column("currency", "ISO 4217 code of every amount of the account, fixed when it was opened."),
        Column(
            "balance",
            "Current balance, deposits_total - withdrawals_total, in currency; never negative "
            "(withdrawals beyond the balance are refused).",
        ),
        Column("deposits_total", "Sum of all deposits (FundsDeposited), in currency."),
        Column("withdrawals_total", "Sum of all withdrawals (FundsWithdrawn), in currency."),
        Column(
            "status",
            "OPEN; FROZEN between AccountFrozen and AccountUnfrozen (withdrawals blocked, deposits "
            "accepted); CLOSED after AccountClosed, for good.",
        ),
        Column("opened_at", "When the account was opened (AccountOpened)."),
        Column("closed_at", "When the account was closed (AccountClosed); null while it is not."),
        Column(
            "last_activity_at",
            "Event time of the account's latest event of any kind - opening, deposit, withdrawal, freeze, "
            "unfreeze or close, not only money movements.",
        ),
        Column(
            "version",
            "The account's aggregate version after the last event applied, i.e. how many events it has had.",
        ),
    ),
)

READ_MODEL = ReadModel(name="account_balances", tables=(account_balances,), ddl={1: DDL_V1}, views=(VIEW,))
"""The read model this projection builds, as `esflow db migrate`, the bi views and docs/bi.md see it."""

# ------------------------------------------------------------------------------ the projection

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
    read_model = READ_MODEL
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
