"""Token checks of the API (api.auth): keys from PEM or JWKS, issuer, audience, expiry, skew, roles."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest

from api.auth import AuthConfigError, Authenticator, InvalidToken, Role
from esflow.settings import ApiSettings
from tests.support.tokens import AUDIENCE, ISSUER, TokenMaker, hs256, jwks, new_key, public_pem, unsigned

KEY = new_key()
OTHER = new_key()


def _settings(tmp_path: Path, **kw: object) -> ApiSettings:
    pem = tmp_path / "key.pem"
    pem.write_bytes(public_pem(KEY))
    base: dict[str, object] = {"jwt_issuer": ISSUER, "jwt_audience": AUDIENCE, "jwt_public_key_file": pem}
    base.update(kw)
    return ApiSettings(**base)  # type: ignore[arg-type]


def test_roles_and_customer_ids(tmp_path: Path) -> None:
    auth = Authenticator(_settings(tmp_path))
    tokens = TokenMaker(KEY)
    me = uuid.uuid4()
    customer = auth.authenticate(f"Bearer {tokens.customer(me)}")
    assert customer.role is Role.CUSTOMER and customer.customer_id == me
    assert customer.may_act_for(me) and not customer.may_act_for(uuid.uuid4())
    operator = auth.authenticate(f"bearer {tokens.operator()}")
    assert operator.is_operator and operator.may_act_for(uuid.uuid4())
    # One role as a plain string is read too.
    assert auth.authenticate(f"Bearer {tokens.token('operator')}").is_operator  # type: ignore[arg-type]
    assert auth.authenticate(None).role is Role.ANONYMOUS
    assert auth.authenticate("").role is Role.ANONYMOUS


def test_customer_id_from_another_claim(tmp_path: Path) -> None:
    auth = Authenticator(_settings(tmp_path, customer_claim="customer_id"))
    me = uuid.uuid4()
    token = TokenMaker(KEY).token(["customer"], sub="auth0|123", customer_id=str(me))
    assert auth.authenticate(f"Bearer {token}").customer_id == me


@pytest.mark.parametrize(
    "why",
    ["expired", "audience", "issuer", "key", "alg none", "hs256 with the public key", "not a uuid",
     "no role", "no exp", "scheme", "garbage"],
)  # fmt: skip
def test_refused(tmp_path: Path, why: str) -> None:
    auth = Authenticator(_settings(tmp_path))
    tokens = TokenMaker(KEY)
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": str(uuid.uuid4()), "roles": ["operator"],
              "iat": now, "exp": now + 600}  # fmt: skip
    header = {
        "expired": f"Bearer {tokens.operator(exp=now - 120)}",
        "audience": f"Bearer {tokens.operator(aud='elsewhere')}",
        "issuer": f"Bearer {tokens.operator(iss='elsewhere')}",
        "key": f"Bearer {TokenMaker(OTHER).operator()}",
        "alg none": f"Bearer {unsigned(claims)}",
        "hs256 with the public key": f"Bearer {hs256(claims, public_pem(KEY))}",
        "not a uuid": f"Bearer {tokens.token(['customer'], sub='alice')}",
        "no role": f"Bearer {tokens.token(['admin'])}",
        "no exp": f"Bearer {TokenMaker(KEY).token(['operator'], exp=None)}",
        "scheme": f"Basic {tokens.operator()}",
        "garbage": "Bearer abc.def.ghi",
    }[why]
    with pytest.raises(InvalidToken):
        auth.authenticate(header)


def test_clock_skew_is_allowed_up_to_the_leeway(tmp_path: Path) -> None:
    now = int(time.time())
    late = TokenMaker(KEY).operator(exp=now - 10)
    assert Authenticator(_settings(tmp_path, jwt_leeway_s=30)).authenticate(f"Bearer {late}").is_operator
    with pytest.raises(InvalidToken, match="expired"):
        Authenticator(_settings(tmp_path, jwt_leeway_s=0)).authenticate(f"Bearer {late}")
    early = TokenMaker(KEY).operator(nbf=now + 10)
    assert Authenticator(_settings(tmp_path, jwt_leeway_s=30)).authenticate(f"Bearer {early}").is_operator


def test_keys_from_a_jwks_document_by_kid(tmp_path: Path) -> None:
    doc = tmp_path / "jwks.json"
    doc.write_text(json.dumps(jwks(("a", KEY), ("b", OTHER))))
    auth = Authenticator(_settings(tmp_path, jwt_public_key_file=None, jwt_jwks_file=doc))
    assert auth.authenticate(f"Bearer {TokenMaker(OTHER, kid='b').operator()}").is_operator
    assert auth.authenticate(f"Bearer {TokenMaker(KEY, kid='a').operator()}").is_operator
    with pytest.raises(InvalidToken):  # signed by b's key, claiming to be a
        auth.authenticate(f"Bearer {TokenMaker(OTHER, kid='a').operator()}")
    with pytest.raises(InvalidToken):
        auth.authenticate(f"Bearer {TokenMaker(KEY, kid='zz').operator()}")


def test_exactly_one_key_source(tmp_path: Path) -> None:
    with pytest.raises(AuthConfigError, match="exactly one"):
        Authenticator(_settings(tmp_path, jwt_public_key_file=None))
    with pytest.raises(AuthConfigError, match="exactly one"):
        Authenticator(_settings(tmp_path, jwt_jwks_url="http://127.0.0.1:1/jwks"))
    with pytest.raises(AuthConfigError, match="cannot load"):
        Authenticator(_settings(tmp_path, jwt_public_key_file=tmp_path / "missing.pem"))
