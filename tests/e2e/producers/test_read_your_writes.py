"""Read-your-writes through the whole pipeline: command -> processor -> events -> projector -> Postgres."""

from __future__ import annotations

import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from decimal import Decimal

import psycopg
import pytest

from esflow.client.sender import CommandClient
from esflow.domain.account import DepositFunds, OpenAccount
from esflow.errors import ResultTimeout
from esflow.query.consistency import ConsistencyToken, ProjectionWaiter, wait_for_projection
from esflow.readmodel.versions import Layout
from esflow.settings import PostgresSettings, ProjectionSettings, Settings
from tests.conftest import drop_installation
from tests.support.services import Services


@pytest.fixture(scope="module")
def with_projector(
    pipeline: tuple[Settings, dict[str, str]], services: Services, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Settings]:
    settings, env = pipeline
    schema = f"ryw_{uuid.uuid4().hex[:8]}"
    env = {
        **env,
        "ESFLOW_PROJECTION_DB_SCHEMA": schema,
        "ESFLOW_PROJECTION_GROUP_PREFIX": f"{settings.topics.prefix}proj",
    }
    migrate = subprocess.run(
        [sys.executable, "-m", "esflow", "db", "migrate"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert migrate.returncode == 0, migrate.stderr
    log = tmp_path_factory.mktemp("projector") / "projector.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "esflow", "projector", "run", "account_balances"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield settings.model_copy(
            update={
                "postgres": PostgresSettings(database_url_override=services.database_url),
                "projections": ProjectionSettings(db_schema=schema),
            }
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        drop_installation(services.database_url.replace("+psycopg", ""), schema)


def _balance(settings: Settings, account: uuid.UUID) -> Decimal | None:
    url = settings.postgres.database_url.replace("+psycopg", "")
    with psycopg.connect(url) as conn:
        row = conn.execute(
            f'SELECT balance FROM "{Layout(settings.projections.db_schema).bi}".account_balances '
            "WHERE account_id = %s",
            (account,),
        ).fetchone()
    return None if row is None else Decimal(row[0])


def test_send_then_read_own_write(with_projector: Settings) -> None:
    settings = with_projector
    with CommandClient(settings) as client, ProjectionWaiter(settings) as waiter:
        opened = client.send_and_wait(OpenAccount(owner_id=uuid.uuid4(), currency="EUR"), timeout=60)
        account = uuid.UUID(opened.aggregate_id or "")
        # The first wait may include the projector's start-up and first assignment.
        waiter.wait(ConsistencyToken.from_result(opened), "account_balances", timeout=90)
        expected = Decimal("0")
        waits = []
        for i in range(1, 21):
            amount = Decimal(i)
            result = client.send_and_wait(
                DepositFunds.model_validate({"amount": {"amount": str(amount), "currency": "EUR"}}), account
            )
            assert result.status == "accepted"
            expected += amount
            waits.append(waiter.wait(ConsistencyToken.from_result(result), "account_balances", timeout=30))
            # Read-your-writes: right after the wait, the row shows this very deposit.
            assert _balance(settings, account) == expected
    assert max(waits) < 30


def test_token_round_trips_and_unreached_positions_time_out(with_projector: Settings) -> None:
    settings = with_projector
    with CommandClient(settings) as client:
        opened = client.send_and_wait(OpenAccount(owner_id=uuid.uuid4(), currency="EUR"), timeout=60)
    token = ConsistencyToken.from_result(opened)
    assert ConsistencyToken.parse(str(token)) == token
    assert wait_for_projection(opened, "account_balances", 90, settings=settings) >= 0
    far = ConsistencyToken(tuple((t, p, o + 1_000_000) for t, p, o in token.positions))
    with pytest.raises(ResultTimeout, match="has not reached"):
        wait_for_projection(far, "account_balances", 0.5, settings=settings)
