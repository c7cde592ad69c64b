"""The API's schema (no servers): generated mutations, reason codes, cost and depth limits."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from graphql import parse
from starlette.testclient import TestClient

from api.app import create_app
from api.graphql.limits import operation_costs
from api.graphql.mutations import CUSTOMER_ORDER_COMMANDS, REASON_CODES
from api.graphql.schema import build_schema
from esflow.client.commands import CREATION_COMMANDS
from esflow.domain.catalog import MESSAGE_TYPES
from esflow.domain.reasons import BUSINESS_REASONS
from esflow.settings import ApiSettings, Settings
from tests.support.tokens import AUDIENCE, ISSUER, TokenMaker, new_key, write_public_key

SCHEMA = build_schema(ApiSettings())
COMMANDS = sorted(n for n, s in MESSAGE_TYPES.items() if s.kind == "command")


def _camel(name: str) -> str:
    return name[0].lower() + name[1:]


def test_one_mutation_per_command_with_its_arguments() -> None:
    mutation = SCHEMA._schema.mutation_type
    assert mutation is not None
    assert sorted(mutation.fields) == sorted(_camel(c) for c in COMMANDS)
    for name in COMMANDS:
        field = mutation.fields[_camel(name)]
        has_fields = bool(MESSAGE_TYPES[name].model.model_fields)
        assert ("input" in field.args) == has_fields, name
        # Creation commands may leave the new aggregate's id to the API; every other names its aggregate.
        required = str(field.args["aggregateId"].type).endswith("!")
        assert required == (name not in CREATION_COMMANDS), name
        assert str(field.type) == "CommandOutcome!"
    assert set(COMMANDS) >= CUSTOMER_ORDER_COMMANDS


def test_rejection_reasons_cover_every_business_reason() -> None:
    assert set(REASON_CODES) >= BUSINESS_REASONS
    enum = SCHEMA._schema.get_type("RejectionReason")
    assert {v.lower() for v in enum.values} == set(REASON_CODES)  # type: ignore[union-attr]


def _cost(query: str, variables: dict[str, object] | None = None) -> dict[str, int]:
    costs = operation_costs(SCHEMA._schema, parse(query).definitions, variables or {}, max_page_size=100)
    return next(iter(costs.values()))


def test_cost_counts_pages_first_times() -> None:
    assert _cost("{ viewer { role } }") == {"viewer": 2}
    # 1 for the connection + 100 x (edges 1 + node 1 + number 1, nodes 1 + number 1).
    page = "{ orders(first: 100) { edges { node { number } } nodes { number } } }"
    assert _cost(page) == {"orders": 1 + 100 * 5}
    # Left out, `first` counts at its default (20); from a variable, at the variable's value.
    assert _cost("{ orders { nodes { number } } }") == {"orders": 1 + 20 * 2}
    assert _cost("query($n: Int!) { orders(first: $n) { nodes { number } } }", {"n": 7}) == {"orders": 15}
    # A variable without a value (invalid anyway) counts at the page limit.
    assert _cost("query($n: Int!) { orders(first: $n) { nodes { number } } }") == {"orders": 201}
    # Fragments are counted where they are spread; introspection is free.
    fragment = (
        "fragment F on OrderSummary { number status } { a: orders(first: 3) { nodes { ...F } } __typename }"
    )
    assert _cost(fragment) == {"a": 1 + 3 * 3}


@pytest.fixture
def client(tmp_path: Path) -> TestClient:
    key = new_key()
    settings = Settings(
        api=ApiSettings(
            jwt_public_key_file=write_public_key(key, tmp_path / "k.pem"), jwt_issuer=ISSUER,
            jwt_audience=AUDIENCE, max_depth=2, max_complexity=100, max_body_bytes=2048,
        )
    )  # fmt: skip
    app = create_app(settings)
    app.state.tokens = TokenMaker(key)
    return TestClient(app)


def test_limits_are_enforced_before_any_resolver_runs(client: TestClient) -> None:
    # No Kafka or Postgres here: each request must be refused before it would need them.
    token = client.app.state.tokens.operator()  # type: ignore[attr-defined]
    auth = {"Authorization": f"Bearer {token}"}
    with client:
        deep = client.post(
            "/graphql", json={"query": "{ orders { edges { node { number } } } }"}, headers=auth
        )
        assert "exceeds maximum operation depth of 2" in deep.json()["errors"][0]["message"]
        costly = client.post(
            "/graphql", json={"query": "{ orders(first: 99) { nodes { number } } }"}, headers=auth
        )
        error = costly.json()["errors"][0]
        assert error["extensions"]["code"] == "QUERY_TOO_COMPLEX" and error["extensions"]["fields"] == {
            "orders": 199
        }
        big = client.post("/graphql", content=b"{" + b" " * 3000 + b"}", headers=auth)
        assert big.status_code == 413
        bad = client.post(
            "/graphql", json={"query": "{ viewer { role } }"}, headers={"Authorization": "Bearer x"}
        )
        assert bad.status_code == 401
        anonymous = client.post(
            "/graphql",
            json={
                "query": "query($i: UUID!) { order(id: $i) { number } }",
                "variables": {"i": str(uuid.uuid4())},
            },
        )
        assert anonymous.json()["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
        schema = client.post("/graphql", json={"query": "{ __schema { queryType { name } } }"})
        assert schema.json() == {"data": {"__schema": {"queryType": {"name": "Query"}}}}


def test_cost_follows_the_variables_of_a_document_whose_validation_is_cached(client: TestClient) -> None:
    # Anonymous: a request within the cost limit stops at the resolver (UNAUTHENTICATED), before any server.
    query = "query($n: Int!) { orders(first: $n) { nodes { number } } }"
    with client:
        codes = [
            client.post("/graphql", json={"query": query, "variables": {"n": n}}).json()["errors"][0][
                "extensions"
            ]["code"]
            for n in (99, 10, 99, 10)
        ]
    assert codes == ["QUERY_TOO_COMPLEX", "UNAUTHENTICATED", "QUERY_TOO_COMPLEX", "UNAUTHENTICATED"]
