"""Who is calling: RS256 JWTs checked with PyJWT, turned into a :class:`Principal`.

Roles (docs/api.md): an **operator** may do everything; a **customer** reaches only their own orders and
accounts, and their id is the token's ``customer_claim`` (``sub`` by default), which must be a UUID; a
caller without a token is **anonymous** and gets the schema only. The roles are read from the
``roles_claim`` (a list of strings or one string); a token naming neither role is refused, so a token
minted for another application of the same issuer does not become a customer by accident.

Only RS256 is accepted: PyJWT refuses a token whose header names another algorithm (``none`` and
HS256 with the public key as the secret included) before it looks at the signature.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from uuid import UUID

import jwt
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey
from jwt.algorithms import RSAAlgorithm

from esflow.errors import EsflowError
from esflow.settings import ApiSettings

ALGORITHMS = ["RS256"]
REQUIRED_CLAIMS = ["exp", "iat", "iss", "aud", "sub"]


class Role(StrEnum):
    """What a caller may do."""

    ANONYMOUS = "anonymous"
    CUSTOMER = "customer"
    OPERATOR = "operator"


@dataclass(frozen=True)
class Principal:
    """The caller of one request."""

    role: Role
    subject: str | None = None
    customer_id: UUID | None = None

    @property
    def is_operator(self) -> bool:
        """True for an operator."""
        return self.role is Role.OPERATOR

    def may_act_for(self, customer_id: UUID) -> bool:
        """True when the caller may read or change what belongs to ``customer_id``."""
        return self.is_operator or (self.role is Role.CUSTOMER and self.customer_id == customer_id)


ANONYMOUS = Principal(Role.ANONYMOUS)


class InvalidToken(EsflowError):
    """A bearer token that is not accepted (the request is refused with HTTP 401)."""


class AuthConfigError(EsflowError):
    """The API's key settings are missing or unreadable."""


class Authenticator:
    """Checks bearer tokens against the configured issuer, audience and keys."""

    def __init__(self, settings: ApiSettings) -> None:
        self.settings = settings
        sources = [
            s
            for s in (settings.jwt_public_key_file, settings.jwt_jwks_file, settings.jwt_jwks_url)
            if s is not None
        ]
        if len(sources) != 1:
            raise AuthConfigError(
                "the API needs exactly one source of token keys",
                hint="set one of ESFLOW_API_JWT_PUBLIC_KEY_FILE, ESFLOW_API_JWT_JWKS_FILE, "
                "ESFLOW_API_JWT_JWKS_URL",
            )
        self._key: Any = None
        self._jwks: jwt.PyJWKSet | None = None
        self._jwks_client: jwt.PyJWKClient | None = None
        try:
            if settings.jwt_public_key_file is not None:
                self._key = _rsa_public_key(settings.jwt_public_key_file.read_bytes())
            elif settings.jwt_jwks_file is not None:
                self._jwks = jwt.PyJWKSet.from_dict(json.loads(settings.jwt_jwks_file.read_text()))
            elif settings.jwt_jwks_url is not None:
                # PyJWKClient caches the document and refetches it when a token names an unknown kid.
                self._jwks_client = jwt.PyJWKClient(settings.jwt_jwks_url, cache_keys=True, lifespan=300)
        except (OSError, ValueError, jwt.PyJWTError) as exc:
            raise AuthConfigError(f"cannot load the API's token keys: {exc}") from exc

    def _signing_key(self, token: str) -> Any:
        if self._key is not None:
            return self._key
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.PyJWTError as exc:
            raise InvalidToken(f"malformed token: {exc}") from exc
        if self._jwks_client is not None:
            try:
                return self._jwks_client.get_signing_key_from_jwt(token).key
            except jwt.PyJWTError as exc:
                raise InvalidToken(f"no key for this token: {exc}") from exc
        assert self._jwks is not None
        keys = [k for k in self._jwks.keys if kid is None or k.key_id == kid]
        if len(keys) != 1:
            raise InvalidToken(f"no single key in the JWKS document for kid {kid!r}")
        return keys[0].key

    def authenticate(self, authorization: str | None) -> Principal:
        """The principal of an ``Authorization`` header value (None: anonymous).

        Raises :class:`InvalidToken` for anything but a valid ``Bearer`` token of a known role.
        """
        if not authorization:
            return ANONYMOUS
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise InvalidToken("expected 'Authorization: Bearer <token>'")
        token = token.strip()
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self._signing_key(token),
                algorithms=ALGORITHMS,
                audience=self.settings.jwt_audience,
                issuer=self.settings.jwt_issuer,
                leeway=self.settings.jwt_leeway_s,
                options={"require": REQUIRED_CLAIMS},
            )
        except jwt.PyJWTError as exc:
            raise InvalidToken(f"token refused: {exc}") from exc
        return self._principal(claims)

    def _principal(self, claims: dict[str, Any]) -> Principal:
        raw = claims.get(self.settings.roles_claim, [])
        roles = {raw} if isinstance(raw, str) else set(raw) if isinstance(raw, list) else set()
        subject = str(claims["sub"])
        if Role.OPERATOR.value in roles:
            return Principal(Role.OPERATOR, subject)
        if Role.CUSTOMER.value in roles:
            try:
                customer = UUID(str(claims.get(self.settings.customer_claim)))
            except ValueError as exc:
                raise InvalidToken(
                    f"a customer token's {self.settings.customer_claim!r} claim must be a customer id (UUID)"
                ) from exc
            return Principal(Role.CUSTOMER, subject, customer)
        raise InvalidToken(
            f"the token's {self.settings.roles_claim!r} claim names neither 'operator' nor 'customer'"
        )


def _rsa_public_key(pem: bytes) -> RSAPublicKey:
    """The RSA public key in a PEM file (of a private key, its public half); any other key is refused."""
    key = RSAAlgorithm(RSAAlgorithm.SHA256).prepare_key(pem)
    return key.public_key() if isinstance(key, RSAPrivateKey) else key


__all__ = ["ANONYMOUS", "AuthConfigError", "Authenticator", "InvalidToken", "Principal", "Role"]
