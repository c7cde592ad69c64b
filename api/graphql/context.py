"""What every resolver gets (the caller, the buses, the settings) and the errors it may raise.

Errors a client can act on are :class:`ApiError` instances: GraphQL errors whose ``extensions.code`` says
what went wrong (``UNAUTHENTICATED``, ``FORBIDDEN``, ``BAD_USER_INPUT``, ``CONSISTENCY_TIMEOUT``, ...)
and, for bad input, ``extensions.fields`` names each offending argument. Anything else is masked
(``INTERNAL_SERVER_ERROR``) and logged; the HTTP status stays 200, as GraphQL over HTTP expects.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import strawberry
from graphql import GraphQLError
from pydantic import ValidationError

from api.auth import Principal, Role
from esflow.client.sender import AsyncCommandClient
from esflow.errors import ClientError
from esflow.query.bus import QueryBus
from esflow.query.consistency import ConsistencyToken
from esflow.settings import Settings


@dataclass
class Context:
    """Per request: who calls, and the shared services."""

    principal: Principal
    settings: Settings
    bus: QueryBus
    commands: AsyncCommandClient


Info = strawberry.Info[Context, None]


class ApiError(GraphQLError):
    """An error the caller can act on; ``code`` goes to ``extensions.code``."""

    def __init__(self, message: str, code: str, **extensions: Any) -> None:
        super().__init__(message, extensions={"code": code, **extensions})


def camel(name: str) -> str:
    """``unit_price`` -> ``unitPrice``: pydantic's field names as the schema spells them."""
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def field_path(loc: Sequence[Any], prefix: str = "") -> str:
    """A pydantic error location as a GraphQL argument path: ``input.items.0.unitPrice``."""
    parts = [camel(str(p)) if isinstance(p, str) else str(p) for p in loc]
    return ".".join(([prefix] if prefix else []) + parts) or prefix or "(input)"


def invalid_input(exc: ValidationError, prefix: str = "") -> ApiError:
    """A pydantic validation error as ``BAD_USER_INPUT``, naming every offending field."""
    fields = [{"field": field_path(e["loc"], prefix), "message": e["msg"]} for e in exc.errors()]
    text = "; ".join(f"{f['field']}: {f['message']}" for f in fields)
    return ApiError(f"invalid input: {text}", "BAD_USER_INPUT", fields=fields)


_PROBLEM = re.compile(r"^(?P<field>[A-Za-z0-9_.()]+): (?P<message>.*)$")


def problem_fields(problems: Sequence[str], prefix: str = "input") -> list[tuple[str, str]]:
    """``"items.0.unit_price: msg"`` problems (esflow's validation errors) as (GraphQL path, message)."""
    out = []
    for text in problems:
        m = _PROBLEM.match(text)
        if m is None:
            out.append((prefix, text))
            continue
        loc = m["field"].split(".")
        # Metadata fields are arguments of the mutation itself, not of its input.
        top = loc[0] in {"aggregate_id", "expected_version", "command_id"}
        out.append((field_path(loc, "" if top else prefix), m["message"]))
    return out


def require_login(info: Info) -> Principal:
    """The caller, unless anonymous (anonymous callers may read the schema only)."""
    principal = info.context.principal
    if principal.role is Role.ANONYMOUS:
        raise ApiError(
            "authentication required: send 'Authorization: Bearer <token>' (anonymous callers may only "
            "read the schema)",
            "UNAUTHENTICATED",
        )
    return principal


def require_operator(info: Info) -> Principal:
    """The caller, who must be an operator."""
    principal = require_login(info)
    if not principal.is_operator:
        raise ApiError(f"{info.field_name} is for operators only", "FORBIDDEN")
    return principal


def require_customer_access(info: Info, customer_id: UUID, what: str) -> None:
    """Refuse (``FORBIDDEN``) unless the caller may see what belongs to ``customer_id``."""
    principal = require_login(info)
    if not principal.may_act_for(customer_id):
        raise ApiError(f"{what} belongs to another customer", "FORBIDDEN")


def own_customer(info: Info, given: UUID | None, argument: str) -> UUID:
    """The customer id to read for: ``given``, or the caller's own when omitted (customers only)."""
    principal = require_login(info)
    if given is None:
        if principal.customer_id is None:
            raise ApiError(f"{argument} is required for operators", "BAD_USER_INPUT", fields=[argument])
        return principal.customer_id
    if not principal.may_act_for(given):
        raise ApiError(f"{argument}: a customer may only read their own data", "FORBIDDEN")
    return given


def parse_token(text: str | None) -> ConsistencyToken | None:
    """The ``consistentWith`` argument as a token (``BAD_USER_INPUT`` naming it when malformed)."""
    if not text:
        return None
    try:
        return ConsistencyToken.parse(text)
    except (ClientError, ValueError) as exc:
        raise ApiError(
            f"consistentWith: not a consistency token ({exc})", "BAD_USER_INPUT", fields=["consistentWith"]
        ) from exc


__all__ = [
    "ApiError",
    "Context",
    "Info",
    "camel",
    "field_path",
    "invalid_input",
    "own_customer",
    "parse_token",
    "problem_fields",
    "require_customer_access",
    "require_login",
    "require_operator",
]
