"""A real order fulfilment seen through the API: the process runtime and `process_instances` running too.

An operator registers a product, stocks it, opens and funds an account and places an order that names
it, all through GraphQL mutations; `esflow process run order_fulfilment` reserves, confirms, charges
and marks the order paid; `esflow projector run process_instances` shows the instance, and the
``processInstances`` and ``processes`` queries answer from it. A customer is refused both queries.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.api.conftest import Api, _start, _stop
from tests.e2e.api.test_api import PLACE, _order_input
from tests.support.wait import eventually

MUTATE = """
mutation($id: UUID, $input: {input}!) {{
  {field}({args}input: $input) {{
    __typename
    ... on CommandAccepted {{ aggregateId version }}
    ... on CommandRejected {{ reason message }}
  }}
}}"""

INSTANCES = """
query($id: UUID!) {
  processInstances(id: $id) { process instanceId status step reason attempts pendingCommands endedAt }
}"""


def _mutate(api: Api, token: str, field: str, data: dict[str, Any], aggregate_id: str | None = None) -> str:
    name = field[0].upper() + field[1:]
    args = "aggregateId: $id, " if aggregate_id else ""
    query = MUTATE.format(input=f"{name}Input", field=field, args=args).replace(
        "$id: UUID, ", "$id: UUID!, " if aggregate_id else ""
    )
    variables: dict[str, Any] = {"input": data}
    if aggregate_id:
        variables["id"] = aggregate_id
    outcome = api.gql(query, variables, token)[field]
    assert outcome["__typename"] == "CommandAccepted", outcome
    return str(outcome["aggregateId"])


@pytest.fixture
def fulfilment(api: Api, tmp_path: Any) -> Iterator[None]:
    """The order fulfilment process and the process_instances projector, beside the API's pipeline."""
    run = uuid.uuid4().hex[:6]
    env = dict(api.env, ESFLOW_PROCESS_GROUP_PREFIX=f"proc-{run}", ESFLOW_PROCESS_INSTANCE_ID=f"p-{run}")
    esflow = [sys.executable, "-m", "esflow"]
    logs = {name: tmp_path / f"{name}.log" for name in ("process", "projector")}
    procs = [
        _start([*esflow, "process", "run", "order_fulfilment"], env, logs["process"]),
        _start([*esflow, "projector", "run", "process_instances"], env, logs["projector"]),
    ]
    try:
        yield
    finally:
        for proc in procs:
            _stop(proc)
        for name, log in logs.items():
            print(f"--- {name}\n{log.read_text()[-2000:]}")


def test_an_order_fulfilment_runs_to_completion_and_the_api_shows_its_instance(
    api: Api, fulfilment: None
) -> None:
    operator = api.tokens.operator()
    customer = uuid.uuid4()
    product = _mutate(
        api, operator, "registerProduct",
        {"sku": f"P-{uuid.uuid4().hex[:6]}", "name": "Lamp", "category": "home",
         "price": {"amount": "12.50", "currency": "EUR"}},
    )  # fmt: skip
    _mutate(api, operator, "receiveStock", {"quantity": 10}, product)
    account = _mutate(api, operator, "openAccount", {"ownerId": str(customer), "currency": "EUR"})
    _mutate(api, operator, "depositFunds", {"amount": {"amount": "100.00", "currency": "EUR"}}, account)
    order_input = _order_input(customer)
    order_input["items"][0]["productId"] = product
    order_input["accountId"] = account
    placed = api.gql(PLACE, {"input": order_input}, operator)["placeOrder"]
    assert placed["__typename"] == "CommandAccepted", placed
    order_id = placed["aggregateId"]

    def completed() -> dict[str, Any] | None:
        found = api.gql(INSTANCES, {"id": order_id}, operator)["processInstances"]
        return found[0] if found and found[0]["status"] == "COMPLETED" else None

    instance = eventually(completed, timeout=120, interval=0.3, what="the fulfilment to complete")
    assert instance is not None
    assert instance["process"] == "order_fulfilment" and instance["instanceId"] == order_id
    assert instance["pendingCommands"] == 0 and instance["endedAt"] and instance["reason"] is None
    order = api.gql("query($id: UUID!) { order(id: $id) { status paidAmount } }", {"id": order_id}, operator)
    assert order["order"]["status"] == "PAID" and order["order"]["paidAmount"] == "25.00"

    page = api.gql(
        '{ processes(process: "order_fulfilment", statuses: [COMPLETED], first: 50) '
        "{ nodes { instanceId status } pageInfo { hasNextPage } } }",
        token=operator,
    )["processes"]
    assert {"instanceId": order_id, "status": "COMPLETED"} in page["nodes"]

    for query, variables in ((INSTANCES, {"id": order_id}), ("{ processes { nodes { instanceId } } }", None)):
        body = api.post(query, variables, api.tokens.customer(customer)).json()
        assert body["errors"][0]["extensions"]["code"] == "FORBIDDEN", body
    unknown = api.post('{ processes(process: "nope") { nodes { instanceId } } }', token=operator).json()
    assert unknown["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT", unknown
    assert "unknown process 'nope'" in unknown["errors"][0]["message"]
    assert subprocess.run([sys.executable, "-m", "esflow", "process", "show", order_id], env=api.env,
                          capture_output=True, text=True, timeout=60).returncode == 0  # fmt: skip
