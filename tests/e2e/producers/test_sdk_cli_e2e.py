"""The SDK and CLI through the real command processor: accepted, rejected, duplicates, audit trail."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from esflow.client.commands import envelope
from esflow.client.sender import CommandClient
from esflow.domain.product import ReceiveStock, RegisterProduct, ReserveStock
from esflow.settings import Settings

Cli = Callable[..., subprocess.CompletedProcess[str]]


def _money(amount: str) -> dict[str, str]:
    return {"amount": amount, "currency": "EUR"}


def test_sdk_accepted_rejected_and_duplicate(pipeline: tuple[Settings, dict[str, str]]) -> None:
    settings, _ = pipeline
    with CommandClient(settings) as client:
        registered = client.send_and_wait(
            RegisterProduct.model_validate(
                {"sku": "SKU-1", "name": "Kettle", "category": "kitchen", "price": _money("19.90")}
            )
        )
        assert registered.status == "accepted" and registered.version == 1
        product = uuid.UUID(registered.aggregate_id or "")
        assert registered.events[0].type == "ProductRegistered"

        stocked = client.send_and_wait(ReceiveStock(quantity=5), product, expected_version=1)
        assert (stocked.status, stocked.version) == ("accepted", 2)

        too_many = client.send_and_wait(ReserveStock(order_id=uuid.uuid4(), quantity=50), product)
        assert too_many.status == "rejected"
        assert too_many.version == 2  # a rejection changes nothing

        conflict = client.send_and_wait(ReceiveStock(quantity=1), product, expected_version=1)
        assert (conflict.status, conflict.reason) == ("rejected", "version_conflict")

        # The same command id twice: executed once, the stored result comes back.
        env = envelope(ReceiveStock(quantity=3), product)
        first = client.send_and_wait(env)
        again = client.send_and_wait(env)
        assert first.status == again.status == "accepted"
        assert again.version == first.version == 3
        assert again.events == first.events


def test_cli_round_trip_history_and_state(cli: Cli) -> None:
    opened = cli(
        "send",
        "OpenAccount",
        "--wait",
        "--json",
        json.dumps({"owner_id": str(uuid.uuid4()), "currency": "EUR"}),
    )
    assert opened.returncode == 0, opened.stderr
    account = json.loads(opened.stdout)["aggregate_id"]

    def deposit(amount: str) -> subprocess.CompletedProcess[str]:
        body = {"aggregate_id": account, "amount": _money(amount)}
        return cli("send", "DepositFunds", "--wait", "--json", json.dumps(body))

    assert deposit("100.00").returncode == 0
    assert deposit("50.00").returncode == 0
    time.sleep(0.05)
    between = time.time()
    time.sleep(0.05)
    withdraw = cli(
        "send",
        "WithdrawFunds",
        "--wait",
        "--json",
        json.dumps({"aggregate_id": account, "amount": _money("30.00")}),
    )
    assert withdraw.returncode == 0, withdraw.stderr
    refused = cli(
        "send",
        "WithdrawFunds",
        "--wait",
        "--json",
        json.dumps({"aggregate_id": account, "amount": _money("999.00")}),
    )
    assert refused.returncode == 2
    assert json.loads(refused.stdout)["reason"] == "insufficient_funds"
    assert refused.stderr.startswith("esflow: rejected: insufficient_funds")

    history = cli("aggregate", "history", "account", account, "--json")
    rows = [json.loads(line) for line in history.stdout.splitlines()]
    assert [r["type"] for r in rows] == [
        "AccountOpened",
        "FundsDeposited",
        "FundsDeposited",
        "FundsWithdrawn",
    ]
    assert [r["metadata"]["aggregate_version"] for r in rows] == [1, 2, 3, 4]

    def balance(*args: str) -> Decimal:
        out = cli("aggregate", "state", "account", account, *args)
        assert out.returncode == 0, out.stderr
        return Decimal(json.loads(out.stdout)["state"]["balance"])

    assert balance() == Decimal("120.00")
    assert balance("--version", "2") == Decimal("100.00")
    as_of = datetime.fromtimestamp(between, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f%z")
    assert balance("--as-of", as_of) == Decimal("150.00")
    too_far = cli("aggregate", "state", "account", account, "--version", "9")
    assert too_far.returncode == 1 and "has only 4 versions" in too_far.stderr


def test_cli_file_with_wait_summarises_by_reason(cli: Cli, tmp_path: Path) -> None:
    owner = str(uuid.uuid4())
    account = str(uuid.uuid4())
    lines = [
        {"type": "OpenAccount", "aggregate_id": account, "owner_id": owner, "currency": "EUR"},
        {"type": "DepositFunds", "aggregate_id": account, "amount": _money("10.00")},
        {"type": "WithdrawFunds", "aggregate_id": account, "amount": _money("11.00")},
        {"type": "WithdrawFunds", "aggregate_id": account, "amount": _money("12.00")},
        {"type": "CloseAccount", "aggregate_id": account},
    ]
    path = tmp_path / "cmds.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    out = cli("send", "--file", str(path), "--wait")
    assert out.returncode == 2, out.stderr
    assert "accepted 2; rejected 3" in out.stderr
    assert "insufficient_funds 2" in out.stderr
