"""The API serves the console page to anyone (it holds no data) and its state to operators only."""

from __future__ import annotations

import uuid
from pathlib import Path

from starlette.testclient import TestClient

from api.app import create_app
from esflow.settings import ApiSettings, Settings
from tests.support.tokens import AUDIENCE, ISSUER, TokenMaker, new_key, public_pem, unsigned

KEY = new_key()


def _client(tmp_path: Path) -> TestClient:
    pem = tmp_path / "key.pem"
    pem.write_bytes(public_pem(KEY))
    api = ApiSettings(jwt_issuer=ISSUER, jwt_audience=AUDIENCE, jwt_public_key_file=pem)
    # Without `with`, the lifespan (the bus's Postgres pool, the Kafka client) never starts: the gate
    # answers before the console would collect anything.
    return TestClient(create_app(Settings(api=api)))


def test_the_page_is_served_without_a_token(tmp_path: Path) -> None:
    page = _client(tmp_path).get("/console/")
    assert page.status_code == 200
    assert 'id="signin"' in page.text


def test_the_state_is_refused_to_anonymous_customers_and_bad_tokens(tmp_path: Path) -> None:
    client = _client(tmp_path)
    tokens = TokenMaker(KEY)

    anonymous = client.get("/console/state")
    assert anonymous.status_code == 401
    assert anonymous.json()["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"

    customer = client.get(
        "/console/state", headers={"Authorization": f"Bearer {tokens.customer(uuid.uuid4())}"}
    )
    assert customer.status_code == 403
    assert customer.json()["errors"][0]["message"] == "the console is for operators"

    forged = unsigned({"iss": ISSUER, "aud": AUDIENCE, "sub": "x", "roles": ["operator"]})
    assert client.get("/console/state", headers={"Authorization": f"Bearer {forged}"}).status_code == 401
    other_key = TokenMaker(new_key()).operator()
    assert client.get("/console/state", headers={"Authorization": f"Bearer {other_key}"}).status_code == 401
