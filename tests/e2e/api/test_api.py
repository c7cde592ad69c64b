"""Acceptance of the API (issue 14.3) over real HTTP against `esflow api run`, with the whole pipeline."""

from __future__ import annotations

import time
import uuid
from typing import Any, get_args

import httpx
import pytest
from pydantic import BaseModel

from esflow.client.commands import CREATION_COMMANDS
from esflow.domain.catalog import MESSAGE_TYPES, MessageSpec
from esflow.domain.values import Address, Money, OrderItem
from tests.e2e.api.conftest import Api
from tests.support.tokens import AUDIENCE, ISSUER, TokenMaker, hs256, new_key, unsigned

PLACE = """
mutation Place($input: PlaceOrderInput!) {
  placeOrder(input: $input) {
    __typename
    ... on CommandAccepted { commandId aggregateId version eventIds consistencyToken }
    ... on CommandRejected { reason code message fieldErrors { field message } }
    ... on CommandNotAnswered { message }
  }
}"""

ORDER = """
query Order($id: UUID!, $token: String) {
  order(id: $id, consistentWith: $token) { orderId number customerId status version itemCount }
}"""

CANCEL = """
mutation Cancel($id: UUID!, $token: String) {
  cancelOrder(aggregateId: $id, input: {reason: "not mine"}, consistentWith: $token) {
    __typename
    ... on CommandRejected { reason code message }
    ... on CommandAccepted { version }
  }
}"""


def _order_input(customer_id: uuid.UUID) -> dict[str, Any]:
    return {
        "customerId": str(customer_id),
        "items": [
            {
                "productId": str(uuid.uuid4()),
                "sku": "SKU-1",
                "quantity": 2,
                "unitPrice": {"amount": "12.50", "currency": "EUR"},
            }
        ],
        "shippingAddress": {
            "recipient": "Ada",
            "line1": "1 Main St",
            "city": "Berlin",
            "postalCode": "10115",
            "country": "DE",
        },
        "salesChannel": "WEB",
    }


def _place(api: Api, token: str, customer_id: uuid.UUID) -> dict[str, Any]:
    outcome = api.gql(PLACE, {"input": _order_input(customer_id)}, token)["placeOrder"]
    assert outcome["__typename"] == "CommandAccepted", outcome
    return outcome  # type: ignore[no-any-return]


def test_customer_places_an_order_and_reads_it_back_at_once(api: Api) -> None:
    me = uuid.uuid4()
    token = api.tokens.customer(me)
    placed = _place(api, token, me)
    assert placed["version"] == 1 and len(placed["eventIds"]) == 1 and placed["consistencyToken"]
    # Read-your-writes: with the token the answer includes the order, with no retry and no sleep.
    order = api.gql(ORDER, {"id": placed["aggregateId"], "token": placed["consistencyToken"]}, token)["order"]
    assert order["orderId"] == placed["aggregateId"]
    assert order["customerId"] == str(me) and order["status"] == "PLACED" and order["version"] == 1
    mine = api.gql(
        "query($t: String) { ordersOfCustomer(consistentWith: $t) { nodes { orderId } "
        "pageInfo { hasNextPage } } }",
        {"t": placed["consistencyToken"]},
        token,
    )["ordersOfCustomer"]
    assert [n["orderId"] for n in mine["nodes"]] == [placed["aggregateId"]]


def test_another_customer_is_denied_the_order_and_cannot_cancel_it(api: Api) -> None:
    owner, other = uuid.uuid4(), uuid.uuid4()
    placed = _place(api, api.tokens.customer(owner), owner)
    intruder = api.tokens.customer(other)
    response = api.post(ORDER, {"id": placed["aggregateId"], "token": placed["consistencyToken"]}, intruder)
    body = response.json()
    # Denied, not empty: an error with the FORBIDDEN code, not a null order.
    assert body["errors"][0]["extensions"]["code"] == "FORBIDDEN", body
    assert body["data"] is None or body["data"]["order"] is None
    cancel = api.gql(CANCEL, {"id": placed["aggregateId"], "token": placed["consistencyToken"]}, intruder)
    assert cancel["cancelOrder"]["__typename"] == "CommandRejected"
    assert cancel["cancelOrder"]["reason"] == "FORBIDDEN"
    # A customer cannot place an order in someone else's name either.
    foreign = api.gql(PLACE, {"input": _order_input(owner)}, intruder)["placeOrder"]
    assert foreign["reason"] == "FORBIDDEN" and foreign["fieldErrors"][0]["field"] == "input.customerId"
    # Nothing happened to the order; its owner may still cancel it.
    owner_token = api.tokens.customer(owner)
    order = api.gql(ORDER, {"id": placed["aggregateId"], "token": placed["consistencyToken"]}, owner_token)
    assert order["order"]["status"] == "PLACED"
    mine = api.gql(CANCEL, {"id": placed["aggregateId"], "token": placed["consistencyToken"]}, owner_token)
    assert mine["cancelOrder"] == {"__typename": "CommandAccepted", "version": 2}


def test_bad_tokens_are_refused(api: Api) -> None:
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": str(uuid.uuid4()), "roles": ["operator"], "iat": now}
    stranger = TokenMaker(new_key())
    bad = {
        "expired": api.tokens.operator(iat=now - 3600, exp=now - 600),
        "wrong audience": api.tokens.operator(aud="some-other-api"),
        "wrong issuer": api.tokens.operator(iss="someone-else"),
        "wrong key": stranger.operator(),
        "alg none": unsigned({**claims, "exp": now + 600}),
        # The public key used as an HMAC secret: the classic algorithm-confusion attack.
        "HS256 keyed with the public key": hs256(
            {**claims, "exp": now + 600}, (api.key_dir / "api-key.pem").read_bytes()
        ),
        "no role": api.tokens.token([]),
        "garbage": "not-a-jwt",
    }
    for name, token in bad.items():
        response = api.post("{ viewer { role } }", token=token)
        assert response.status_code == 401, (name, response.text)
        assert response.json()["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED", name
        assert response.headers["www-authenticate"].startswith("Bearer"), name
    # The same request with a good token passes, so the refusals above are the tokens' doing.
    ok = api.post("{ viewer { role } }", token=api.tokens.operator())
    assert ok.status_code == 200 and ok.json()["data"]["viewer"]["role"] == "operator"


def test_anonymous_callers_get_the_schema_only(api: Api) -> None:
    schema = api.gql("{ __schema { mutationType { fields { name } } } }")
    names = {f["name"] for f in schema["__schema"]["mutationType"]["fields"]}
    assert {"placeOrder", "cancelOrder", "openAccount", "registerProduct"} <= names
    body = api.post(ORDER, {"id": str(uuid.uuid4())}).json()
    assert body["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
    body = api.post(PLACE, {"input": _order_input(uuid.uuid4())}).json()
    assert body["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"


def test_limits_refuse_deep_costly_large_and_oversized_requests(api: Api) -> None:
    token = api.tokens.operator()
    me = {"c": str(uuid.uuid4())}
    deep = api.post("query($c: UUID) { ordersOfCustomer(customerId: $c) { edges { node { number } } } }",
                    me, token)  # fmt: skip
    errors = deep.json()["errors"]
    assert deep.status_code == 200 and "exceeds maximum operation depth of 2" in errors[0]["message"]
    # The same data at the allowed depth is served.
    assert api.gql("query($c: UUID) { ordersOfCustomer(customerId: $c) { nodes { number } } }", me, token)
    too_big_page = api.post(
        "query($c: UUID) { ordersOfCustomer(customerId: $c, first: 101) { nodes { number } } }", me, token
    ).json()
    assert too_big_page["errors"][0]["extensions"] == {"code": "BAD_USER_INPUT", "fields": ["first"]}
    aliases = " ".join(f"a{i}: ordersOfCustomer(customerId: $c, first: 100) {{ nodes {{ number }} }}"
                       for i in range(30))  # fmt: skip
    costly = api.post(f"query($c: UUID) {{ {aliases} }}", me, token).json()
    assert costly["errors"][0]["extensions"]["code"] == "QUERY_TOO_COMPLEX", costly
    assert "a0" in costly["errors"][0]["extensions"]["fields"]
    huge = httpx.post(
        f"{api.url}/graphql", content=b" " * 70_000, headers={"content-type": "application/json"}
    )
    assert huge.status_code == 413


def _value(name: str, annotation: Any) -> Any:
    """A valid GraphQL input value for a command field (by name; unknown names fail the test)."""
    args = [a for a in get_args(annotation) if a is not type(None)]
    inner = args[0] if args else annotation
    if isinstance(inner, type) and issubclass(inner, BaseModel):
        return _model_input(inner)
    if name == "items":
        return [_model_input(OrderItem)]
    fixed: dict[str, Any] = {
        "sales_channel": "WEB",
        "currency": "EUR",
        "quantity": 1,
    }
    if name in fixed:
        return fixed[name]
    if name.endswith("_id"):
        return str(uuid.uuid4())
    if name in {
        "payment_ref",
        "carrier",
        "tracking_number",
        "reason",
        "reference",
        "sku",
        "name",
        "category",
    }:
        return f"{name}-1"
    raise AssertionError(f"no sample value for command field {name!r}: extend _value")


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p.title() for p in rest)


def _model_input(model: type[BaseModel]) -> dict[str, Any]:
    samples = {Money: {"amount": "5.00", "currency": "EUR"}}
    if model in samples:
        return samples[model]
    if model is Address:
        return {"recipient": "R", "line1": "L", "city": "C", "postalCode": "1", "country": "DE"}
    return {_camel(n): _value(n, f.annotation) for n, f in model.model_fields.items()}


def _mutation(spec: MessageSpec) -> str:
    name = spec.name[0].lower() + spec.name[1:]
    has_input = bool(spec.model.model_fields)
    var_decl = f"($id: UUID{'' if spec.name in CREATION_COMMANDS else '!'}"
    var_decl += f", $input: {spec.name}Input!)" if has_input else ")"
    args = "aggregateId: $id" + (", input: $input" if has_input else "")
    return (
        f"mutation{var_decl} {{ {name}({args}) {{ __typename "
        "... on CommandRejected { reason code message commandId } "
        "... on CommandAccepted { version } ... on CommandNotAnswered { message } } }"
    )


def test_every_mutation_rejection_arrives_typed(api: Api) -> None:
    token = api.tokens.operator()
    commands = sorted((s for s in MESSAGE_TYPES.values() if s.kind == "command"), key=lambda s: s.name)
    assert len(commands) >= 20
    seen: dict[str, str] = {}
    for spec in commands:
        variables: dict[str, Any] = {"id": str(uuid.uuid4())}
        if spec.model.model_fields:
            variables["input"] = _model_input(spec.model)
        field = spec.name[0].lower() + spec.name[1:]
        if spec.name in CREATION_COMMANDS:
            # The first creates the aggregate; the same creation again is refused by the aggregate.
            first = api.gql(_mutation(spec), variables, token)[field]
            assert first["__typename"] == "CommandAccepted", (spec.name, first)
        outcome = api.gql(_mutation(spec), variables, token)[field]
        assert outcome["__typename"] == "CommandRejected", (spec.name, outcome)
        assert outcome["reason"] == outcome["code"].upper() and outcome["message"], (spec.name, outcome)
        assert uuid.UUID(outcome["commandId"])
        seen[spec.name] = outcome["code"]
    # Changes to aggregates that do not exist are not_found; creations repeated are already_exists.
    assert {c for n, c in seen.items() if n not in CREATION_COMMANDS} == {"not_found"}, seen
    assert {c for n, c in seen.items() if n in CREATION_COMMANDS} == {"already_exists"}, seen
    # Input the command model refuses is a typed rejection too, naming the field by its GraphQL path.
    bad = _order_input(uuid.uuid4())
    bad["items"][0]["unitPrice"]["currency"] = "euro"
    invalid = api.gql(PLACE, {"input": bad}, token)["placeOrder"]
    assert invalid["reason"] == "INVALID_INPUT"
    assert [f["field"] for f in invalid["fieldErrors"]] == ["input.items.0.unitPrice.currency"]


def test_health_readiness_and_metrics(api: Api) -> None:
    assert httpx.get(f"{api.url}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{api.url}/readyz", timeout=30).json()
    assert ready["ready"] is True and set(ready["checks"]) == {"postgres", "kafka+processor"}
    metrics = httpx.get(f"{api.url}/metrics").text
    assert "esflow_api_requests_total" in metrics and "esflow_query_asks_total" in metrics


@pytest.mark.parametrize("method", ["GET", "PUT"])
def test_graphql_takes_post_only(api: Api, method: str) -> None:
    assert httpx.request(method, f"{api.url}/graphql").status_code == 405
