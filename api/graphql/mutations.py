"""The ``Mutation`` root, generated from the command catalogue: one mutation per command type.

``placeOrder(input: PlaceOrderInput!, aggregateId: UUID, ...)``, ``cancelOrder(aggregateId: UUID!,
input: CancelOrderInput!)``, ``confirmOrder(aggregateId: UUID!)``, ...: the input type is derived from
the command's pydantic model (strawberry's pydantic integration), so a new command or field in
:mod:`esflow.domain` becomes a mutation or an input field without code here. Each mutation validates
the command, sends it with :class:`~esflow.client.sender.AsyncCommandClient`, waits for its result and
returns a ``CommandOutcome``: ``CommandAccepted`` (new version, event ids, consistency token),
``CommandRejected`` (a reason code and a message; field errors for invalid input) or
``CommandNotAnswered`` (no result in time: retry with the same ``commandId``, which the processor
answers once). Command failures are data, never an HTTP 500 nor a GraphQL error.

Who may send what (docs/api.md): operators everything; customers ``placeOrder`` for themselves and the
changes a buyer makes to their own order (:data:`CUSTOMER_ORDER_COMMANDS`), which the API checks
against the orders read model before sending (``consistentWith`` makes an order just placed visible
to that check).
"""

from __future__ import annotations

import inspect
import logging
import time
from enum import Enum
from typing import Annotated, Any, cast
from uuid import UUID

import strawberry
from prometheus_client import Counter, Histogram
from pydantic import BaseModel, ValidationError
from strawberry.experimental.pydantic import input as input_from_model

from api.graphql.context import ApiError, Info, camel, field_path, problem_fields, require_login
from api.graphql.queries import ask
from esflow.client.commands import CREATION_COMMANDS, envelope
from esflow.domain import reasons
from esflow.domain.catalog import MESSAGE_TYPES, MessageSpec
from esflow.domain.messages import Command
from esflow.errors import ClientError, CommandValidationError, DeliveryFailed, ResultTimeout
from esflow.messaging import results as bad_input
from esflow.query.consistency import ConsistencyToken
from esflow.query.queries import OrderById

log = logging.getLogger("esflow.api")

MUTATIONS = Counter(
    "esflow_api_mutations_total",
    "Mutations by command type and outcome (accepted, rejected reason, not_answered).",
    ["command", "outcome"],
)
MUTATION_SECONDS = Histogram(
    "esflow_api_mutation_seconds",
    "Time from request to result of a mutation (validation, send, processor, result).",
    ["command"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)

FORBIDDEN = "forbidden"
INVALID_INPUT = "invalid_input"
OTHER = "other"
CUSTOMER_ORDER_COMMANDS = frozenset(
    {"AddOrderItem", "RemoveOrderItem", "UpdateShippingAddress", "ConfirmOrder", "CancelOrder"}
)
"""The order commands a customer may send for their own order (paying, shipping, refunds are back office)."""

_BAD_INPUT_CODES = (
    bad_input.UNDECODABLE, bad_input.UNKNOWN_COMMAND_TYPE, bad_input.INVALID_COMMAND,
    bad_input.WRONG_TOPIC, bad_input.WRONG_KEY, bad_input.WRONG_PARTITION, bad_input.PROCESSING_ERROR,
)  # fmt: skip
REASON_CODES = tuple(sorted({*reasons.BUSINESS_REASONS, *_BAD_INPUT_CODES, FORBIDDEN, INVALID_INPUT, OTHER}))

_REASONS: Any = Enum("RejectionReason", {code.upper(): code for code in REASON_CODES})  # type: ignore[misc]
RejectionReason: Any = strawberry.enum(
    _REASONS,
    description="Why a command was refused: the aggregate's reason codes (docs/domain.md), the "
    "processor's bad-input codes, FORBIDDEN (not the caller's to send), INVALID_INPUT (see fieldErrors), "
    "OTHER (a code newer than this API; see `code`).",
)


@strawberry.type(description="The command was applied: its events are in the log.")
class CommandAccepted:
    """An accepted command."""

    command_id: UUID
    aggregate_id: UUID
    version: int = strawberry.field(description="The aggregate's version after the command.")
    event_ids: list[UUID]
    consistency_token: str = strawberry.field(
        description="Pass as `consistentWith` to a query to read this write."
    )


@strawberry.type(description="One invalid input field.")
class FieldError:
    """A field and what is wrong with it."""

    field: str = strawberry.field(description="Argument path, e.g. input.items.0.unitPrice.currency.")
    message: str


@strawberry.type(description="A key/value detail of a rejection.")
class RejectionDetail:
    """A detail the aggregate gave with its reason."""

    key: str
    value: str | None


@strawberry.type(description="The command was refused; nothing was written.")
class CommandRejected:
    """A refused command."""

    command_id: UUID | None
    aggregate_id: UUID | None
    reason: RejectionReason
    code: str = strawberry.field(description="The reason code as sent by its source.")
    message: str
    field_errors: list[FieldError]
    details: list[RejectionDetail]


@strawberry.type(description="No result arrived in time; the command may still be applied.")
class CommandNotAnswered:
    """Sending again with the same commandId is safe: the processor answers a command id once."""

    command_id: UUID
    aggregate_id: UUID
    delivered: bool = strawberry.field(description="Whether Kafka acknowledged the command.")
    message: str


CommandOutcome = Annotated[
    CommandAccepted | CommandRejected | CommandNotAnswered,
    strawberry.union("CommandOutcome", description="What became of a command."),
]


def _reason(code: str | None) -> Any:
    code = code or OTHER
    return RejectionReason[code.upper()] if code in REASON_CODES else RejectionReason.OTHER


def rejected(
    code: str,
    message: str,
    *,
    command_id: UUID | None = None,
    aggregate_id: UUID | None = None,
    fields: list[tuple[str, str]] = (),  # type: ignore[assignment]
    details: dict[str, Any] | None = None,
) -> CommandRejected:
    """A ``CommandRejected`` (reason from ``code``)."""
    return CommandRejected(
        command_id=command_id,
        aggregate_id=aggregate_id,
        reason=_reason(code),
        code=code,
        message=message,
        field_errors=[FieldError(field=f, message=m) for f, m in fields],
        details=[
            RejectionDetail(key=k, value=None if v is None else str(v)) for k, v in (details or {}).items()
        ],
    )


def _input_type(model: type[BaseModel], seen: dict[type[BaseModel], Any]) -> Any:
    """The GraphQL input type of a model, nested models first (strawberry needs them registered)."""
    if model in seen:
        return seen[model]
    for field in model.model_fields.values():
        for arg in (field.annotation, *getattr(field.annotation, "__args__", ())):
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                _input_type(arg, seen)
            for inner in getattr(arg, "__args__", ()):
                if isinstance(inner, type) and issubclass(inner, BaseModel):
                    _input_type(inner, seen)
    name = f"{model.__name__}Input"
    cls = type(name, (), {"__doc__": model.__doc__})
    seen[model] = input_from_model(model=model, all_fields=True, name=name, description=model.__doc__)(cls)
    return seen[model]


async def _authorise(info: Info, spec: MessageSpec, command: Command, aggregate_id: UUID | None,
                     consistent_with: str | None) -> CommandRejected | None:  # fmt: skip
    """None when the caller may send ``command``; else the FORBIDDEN (or NOT_FOUND) rejection."""
    principal = require_login(info)
    if principal.is_operator:
        return None
    if spec.name == "PlaceOrder":
        if getattr(command, "customer_id", None) == principal.customer_id:
            return None
        return rejected(
            FORBIDDEN, "a customer may only place orders for themselves (input.customerId)",
            aggregate_id=aggregate_id, fields=[("input.customerId", "must be your own customer id")],
        )  # fmt: skip
    if spec.name in CUSTOMER_ORDER_COMMANDS and aggregate_id is not None:
        order = await ask(info, OrderById(order_id=aggregate_id), consistent_with)
        if order is None:
            return rejected(
                reasons.NOT_FOUND,
                f"order {aggregate_id} is not visible (pass the consistencyToken of placeOrder as "
                "consistentWith to change an order just placed)",
                aggregate_id=aggregate_id,
            )
        if order.customer_id == principal.customer_id:
            return None
        return rejected(FORBIDDEN, f"order {aggregate_id} belongs to another customer",
                        aggregate_id=aggregate_id)  # fmt: skip
    return rejected(FORBIDDEN, f"{spec.name} is for operators only", aggregate_id=aggregate_id)


async def send(
    info: Info,
    spec: MessageSpec,
    input: Any,
    aggregate_id: UUID | None,
    expected_version: int | None,
    command_id: UUID | None,
    consistent_with: str | None,
) -> CommandAccepted | CommandRejected | CommandNotAnswered:
    """Validate, authorise, send and wait: the outcome of one mutation."""
    started = time.perf_counter()
    outcome = await _send(info, spec, input, aggregate_id, expected_version, command_id, consistent_with)
    label = (
        "accepted" if isinstance(outcome, CommandAccepted)
        else outcome.code if isinstance(outcome, CommandRejected) else "not_answered"
    )  # fmt: skip
    MUTATIONS.labels(spec.name, label).inc()
    MUTATION_SECONDS.labels(spec.name).observe(time.perf_counter() - started)
    return outcome


async def _send(
    info: Info,
    spec: MessageSpec,
    input: Any,
    aggregate_id: UUID | None,
    expected_version: int | None,
    command_id: UUID | None,
    consistent_with: str | None,
) -> CommandAccepted | CommandRejected | CommandNotAnswered:
    try:
        # Validated as one document (not input type by input type), so an error's location is the full
        # path from the mutation's argument: input.shippingAddress.country, not country.
        raw = strawberry.asdict(input) if input is not None else {}
        command = cast(Command, spec.model.model_validate(raw))
    except ValidationError as exc:
        fields = [(field_path(e["loc"], "input"), e["msg"]) for e in exc.errors()]
        text = "; ".join(f"{f}: {m}" for f, m in fields)
        return rejected(
            INVALID_INPUT, f"invalid {spec.name}: {text}", aggregate_id=aggregate_id, fields=fields
        )
    denied = await _authorise(info, spec, command, aggregate_id, consistent_with)
    if denied is not None:
        return denied
    try:
        env = envelope(command, aggregate_id, expected_version=expected_version, command_id=command_id)
    except CommandValidationError as exc:
        return rejected(
            INVALID_INPUT, str(exc), aggregate_id=aggregate_id, fields=problem_fields(exc.problems)
        )
    meta = env.metadata
    ctx = info.context
    try:
        result = await ctx.commands.send_and_wait(env, timeout=ctx.settings.api.command_timeout_s)
    except ResultTimeout as exc:
        return CommandNotAnswered(command_id=meta.command_id, aggregate_id=meta.aggregate_id, delivered=True,
                                  message=exc.one_line())  # fmt: skip
    except DeliveryFailed as exc:
        return CommandNotAnswered(command_id=meta.command_id, aggregate_id=meta.aggregate_id, delivered=False,
                                  message=exc.one_line())  # fmt: skip
    except ClientError as exc:
        log.exception("sending %s %s failed", spec.name, meta.command_id)
        raise ApiError(exc.one_line(), "UNAVAILABLE") from exc
    if result.status == "accepted":
        return CommandAccepted(
            command_id=meta.command_id,
            aggregate_id=meta.aggregate_id,
            version=result.version or 0,
            event_ids=[e.event_id for e in result.events],
            consistency_token=str(ConsistencyToken.from_result(result)),
        )
    return rejected(
        result.reason or OTHER, result.message or result.reason or "rejected",
        command_id=meta.command_id, aggregate_id=meta.aggregate_id, details=dict(result.details),
    )  # fmt: skip


def _resolver(spec: MessageSpec, input_type: Any) -> Any:
    """An async resolver whose signature strawberry reads as the mutation's arguments."""

    async def resolve(info: Info, **kwargs: Any) -> Any:
        return await send(
            info, spec, kwargs.get("input"), kwargs.get("aggregate_id"), kwargs.get("expected_version"),
            kwargs.get("command_id"), kwargs.get("consistent_with"),
        )  # fmt: skip

    creation = spec.name in CREATION_COMMANDS
    P = inspect.Parameter  # noqa: N806 - the class, abbreviated
    params = [P("info", P.POSITIONAL_OR_KEYWORD, annotation=Info)]
    if input_type is not None:
        params.append(P("input", P.KEYWORD_ONLY, annotation=input_type))
    params += [
        P("aggregate_id", P.KEYWORD_ONLY, annotation=UUID | None if creation else UUID,
          default=None if creation else P.empty),
        P("expected_version", P.KEYWORD_ONLY, annotation=int | None, default=None),
        P("command_id", P.KEYWORD_ONLY, annotation=UUID | None, default=None),
        P("consistent_with", P.KEYWORD_ONLY, annotation=str | None, default=None),
    ]  # fmt: skip
    resolve.__signature__ = inspect.Signature(params, return_annotation=CommandOutcome)  # type: ignore[attr-defined]
    resolve.__annotations__ = {p.name: p.annotation for p in params} | {"return": CommandOutcome}
    resolve.__name__ = camel(_snake(spec.name))
    return resolve


def _snake(name: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name).lstrip("_")


def build_mutation() -> type:
    """The Mutation root type with one field per command of the catalogue."""
    seen: dict[type[BaseModel], Any] = {}
    fields: dict[str, Any] = {}
    for spec in sorted((s for s in MESSAGE_TYPES.values() if s.kind == "command"), key=lambda s: s.name):
        input_type = _input_type(spec.model, seen) if spec.model.model_fields else None
        doc = (spec.model.__doc__ or spec.name).strip()
        fields[_snake(spec.name)] = strawberry.mutation(
            resolver=_resolver(spec, input_type),
            description=f"{doc} Sends {spec.name} to the {spec.aggregate_type} aggregate and waits for its "
            "result.",
        )
    cls = type("Mutation", (), {"__doc__": "Commands: one mutation per command type.", **fields})
    return strawberry.type(cls)


__all__ = [
    "CUSTOMER_ORDER_COMMANDS",
    "REASON_CODES",
    "CommandAccepted",
    "CommandNotAnswered",
    "CommandOutcome",
    "CommandRejected",
    "FieldError",
    "RejectionReason",
    "build_mutation",
    "rejected",
]
