"""RSA keys and JWTs made at test time (cryptography + PyJWT) for the API tests."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

ISSUER = "esflow-tests"
AUDIENCE = "esflow-api-tests"


def new_key() -> rsa.RSAPrivateKey:
    """A fresh 2048-bit RSA key."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_pem(key: rsa.RSAPrivateKey) -> bytes:
    """The key's public half as PEM."""
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def jwks(*keys: tuple[str, rsa.RSAPrivateKey]) -> dict[str, Any]:
    """A JWKS document of the keys' public halves, by kid."""
    out = []
    for kid, key in keys:
        jwk = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
        out.append({**jwk, "kid": kid, "alg": "RS256", "use": "sig"})
    return {"keys": out}


@dataclass
class TokenMaker:
    """Signs tokens with ``key`` for the tests' issuer and audience (every claim overridable)."""

    key: rsa.RSAPrivateKey
    kid: str | None = None

    def token(self, roles: list[str], sub: str | None = None, **claims: Any) -> str:
        now = int(time.time())
        body: dict[str, Any] = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": sub or str(uuid.uuid4()),
            "iat": now,
            "exp": now + 600,
            "roles": roles,
        }
        body.update(claims)
        body = {k: v for k, v in body.items() if v is not None}  # a claim passed as None is left out
        headers = {"kid": self.kid} if self.kid else None
        return jwt.encode(body, self.key, algorithm="RS256", headers=headers)

    def customer(self, customer_id: uuid.UUID, **claims: Any) -> str:
        return self.token(["customer"], sub=str(customer_id), **claims)

    def operator(self, **claims: Any) -> str:
        return self.token(["operator"], sub="ops-1", **claims)


def unsigned(claims: dict[str, Any]) -> str:
    """A token with ``alg: none`` (no signature), as an attacker would send it."""
    return jwt.encode(claims, None, algorithm="none")  # type: ignore[arg-type]


def hs256(claims: dict[str, Any], secret: bytes) -> str:
    """A token signed with HMAC-SHA256 under ``secret``, built by hand (PyJWT refuses a PEM as secret)."""

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).decode().rstrip("=")

    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps(claims).encode())
    signature = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(signature)}"


def write_public_key(key: rsa.RSAPrivateKey, where: Path) -> Path:
    """Write the key's public PEM to ``where``; returns the path."""
    where.write_bytes(public_pem(key))
    return where
