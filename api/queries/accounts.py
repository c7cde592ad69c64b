"""Handlers of the account queries: balances from ``bi.account_balances``, statements from ``bi.event_log``.

A statement needs one row per movement of money, which ``event_log`` already is (FundsDeposited and
FundsWithdrawn rows of the account, with the amount in the payload), indexed by aggregate id and
version: no new read model. The balance after each movement is a running sum over the account's whole
history (an account opens at zero), computed before the page is cut, so every page shows true
balances.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from api.queries.views import MONEY, account_balances, event_log
from esflow.query.base import BadCursor, Page, Query, decode_cursor, encode_cursor
from esflow.query.bus import Handler
from esflow.query.queries import (
    Account,
    AccountBalance,
    AccountsOfOwner,
    AccountStatement,
    Movement,
    StatementLine,
)

a = account_balances.c
ACCOUNT = (
    a.account_id, a.owner_id, a.currency, a.balance, a.deposits_total, a.withdrawals_total, a.status,
    a.opened_at, a.closed_at, a.last_activity_at, a.version,
)  # fmt: skip
MOVEMENTS = {"FundsDeposited": Movement.DEPOSIT, "FundsWithdrawn": Movement.WITHDRAWAL}


async def account_balance(conn: AsyncConnection, query: AccountBalance) -> Account | None:
    """One account."""
    row = (await conn.execute(sa.select(*ACCOUNT).where(a.account_id == query.account_id))).mappings().first()
    return None if row is None else Account.model_validate(dict(row))


async def accounts_of_owner(conn: AsyncConnection, query: AccountsOfOwner) -> tuple[Account, ...]:
    """An owner's accounts, oldest first."""
    select = sa.select(*ACCOUNT).where(a.owner_id == query.owner_id).order_by(a.opened_at, a.account_id)
    return tuple(Account.model_validate(dict(r)) for r in (await conn.execute(select)).mappings())


def _movements(account_id: Any) -> sa.Subquery:
    e = event_log.c
    amount = sa.cast(e.payload["amount"]["amount"].astext, MONEY)
    signed = sa.case((e.event_type == "FundsDeposited", amount), else_=-amount)
    return (
        sa.select(
            e.event_id,
            e.aggregate_version.label("version"),
            e.occurred_at,
            e.event_type,
            amount.label("amount"),
            e.payload["amount"]["currency"].astext.label("currency"),
            e.payload["reference"].astext.label("reference"),
            sa.func.sum(signed).over(order_by=e.aggregate_version).label("balance_after"),
        )
        .where(
            e.aggregate_id == account_id,
            e.aggregate_type == "account",
            e.event_type.in_(list(MOVEMENTS)),
        )
        .subquery("movements")
    )


async def account_statement(conn: AsyncConnection, query: AccountStatement) -> Page[StatementLine]:
    """An account's movements, newest first, each with the balance after it."""
    m = _movements(query.account_id).c
    select = sa.select(m.event_id, m.version, m.occurred_at, m.event_type, m.amount, m.currency,
                       m.reference, m.balance_after)  # fmt: skip
    if query.from_time is not None:
        select = select.where(m.occurred_at >= query.from_time)
    if query.to_time is not None:
        select = select.where(m.occurred_at < query.to_time)
    if query.after is not None:
        (version,) = decode_cursor(query.after, 1)
        if not isinstance(version, int):
            raise BadCursor(f"cursor {query.after[:40]!r} does not belong to this query")
        select = select.where(m.version < version)
    rows = (await conn.execute(select.order_by(m.version.desc()).limit(query.first + 1))).mappings().all()
    items = tuple(
        StatementLine(
            event_id=r["event_id"],
            version=r["version"],
            occurred_at=r["occurred_at"],
            movement=MOVEMENTS[r["event_type"]],
            amount=r["amount"],
            currency=r["currency"],
            balance_after=r["balance_after"],
            reference=r["reference"],
        )
        for r in rows[: query.first]
    )
    more = len(rows) > query.first
    return Page[StatementLine](items=items, next_cursor=encode_cursor(items[-1].version) if more else None)


HANDLERS: dict[type[Query[Any]], Handler] = {
    AccountBalance: account_balance,
    AccountsOfOwner: accounts_of_owner,
    AccountStatement: account_statement,
}
"""The account queries' handlers, by query type."""
