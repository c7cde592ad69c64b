"""Read-your-writes through the query bus, with real tokens: client -> processor -> projector -> cached ask.

Each deposit is followed at once by a *cached* ask of the balance with the deposit's token: the bus
must wait for the projector and must not serve the balance it cached before the deposit.
"""

from __future__ import annotations

import asyncio
import uuid
from decimal import Decimal

import pytest

from api.queries import HANDLERS
from esflow.client.sender import CommandClient
from esflow.domain.account import DepositFunds, OpenAccount
from esflow.query.bus import ConsistencyTimeout, QueryBus
from esflow.query.consistency import ConsistencyToken
from esflow.query.queries import AccountBalance
from esflow.settings import Settings
from tests.e2e.producers.test_read_your_writes import with_projector

__all__ = ["with_projector"]

pytestmark = pytest.mark.e2e


def test_a_cached_ask_with_a_token_sees_the_write(with_projector: Settings) -> None:
    settings = with_projector

    async def main() -> None:
        bus = QueryBus.connect(HANDLERS, settings, pool_size=2)
        try:
            with CommandClient(settings) as client:
                opened = await asyncio.to_thread(
                    client.send_and_wait, OpenAccount(owner_id=uuid.uuid4(), currency="EUR"), timeout=60
                )
                account = uuid.UUID(opened.aggregate_id or "")
                query = AccountBalance(account_id=account)
                # The first wait may include the projector's start-up and first assignment.
                first = await bus.ask(
                    query, consistent_with=ConsistencyToken.from_result(opened), timeout_s=90
                )
                assert first is not None and first.balance == 0
                expected = Decimal(0)
                for i in range(1, 11):
                    deposit = DepositFunds.model_validate({"amount": {"amount": str(i), "currency": "EUR"}})
                    result = await asyncio.to_thread(client.send_and_wait, deposit, account)
                    assert result.status == "accepted"
                    expected += i
                    assert (await bus.ask(query)) is not None  # may be the cached, older balance: allowed
                    seen = await bus.ask(
                        query, consistent_with=ConsistencyToken.from_result(result), timeout_s=30
                    )
                    assert seen is not None and seen.balance == expected, (i, seen)
                    assert await bus.ask(query) == seen  # and now the cache holds this state
                far = ConsistencyToken(
                    tuple((t, p, o + 1000) for t, p, o in ConsistencyToken.from_result(result).positions)
                )
                with pytest.raises(ConsistencyTimeout, match="projection account_balances is 1000 offset"):
                    await bus.ask(query, consistent_with=far, timeout_s=0.5)
        finally:
            await bus.close()

    asyncio.run(main())
