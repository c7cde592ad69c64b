"""What every aggregate is: a pure ``decide`` and ``evolve`` over a frozen state, plus ``Rejection``.

An aggregate never sees Kafka, ids or clocks. ``decide(state, command)`` answers with the event payloads
to append, or a :class:`Rejection` naming a machine-readable reason; ``evolve(state, event)`` folds one
event into the state. ``state`` is ``None`` until the aggregate's first event. The processor wraps the
payloads in envelopes, numbers them, and keeps the version; optimistic concurrency (``expected_version``)
is checked here, in :func:`execute`, so it is tested with the rest of the rules.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Generic, TypeVar

from pydantic import BaseModel, Field, field_validator

from esflow.domain.messages import AggregateType, Command, Event
from esflow.domain.reasons import (
    ALREADY_EXISTS,
    BUSINESS_REASONS,
    CURRENCY_MISMATCH,
    INVALID_STATE,
    NOT_FOUND,
    UNKNOWN_COMMAND,
    VERSION_CONFLICT,
)
from esflow.domain.values import Frozen, Money

S = TypeVar("S", bound=BaseModel)

Detail = str | int | None


class Rejection(Frozen):
    """Why a command was refused: a stable ``code`` for machines, a ``message`` for people."""

    code: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    message: str
    details: Mapping[str, Detail] = Field(default_factory=dict)

    @field_validator("code")
    @classmethod
    def _registered(cls, code: str) -> str:
        # A code is part of the contract: one that is not in the registry is also not in the docs.
        if code not in BUSINESS_REASONS:
            raise ValueError(f"{code!r} is not a reason code of esflow.domain.reasons")
        return code


Decision = tuple[Event, ...] | Rejection
"""What ``decide`` returns: the events to append (possibly none) or the reason for refusing."""


def reject(code: str, message: str, **details: Detail) -> Rejection:
    """Shorthand used by the ``decide`` functions."""
    return Rejection(code=code, message=message, details=details)


def not_found(aggregate_type: str) -> Rejection:
    """The command needs an aggregate that has no events yet."""
    return reject(NOT_FOUND, f"the {aggregate_type} does not exist")


def already_exists(aggregate_type: str) -> Rejection:
    """A creation command for an aggregate that already has events."""
    return reject(ALREADY_EXISTS, f"the {aggregate_type} already exists")


def invalid_state(aggregate_type: str, command: Command, status: str) -> Rejection:
    """An illegal state transition: ``command`` is not allowed in ``status``."""
    return reject(
        INVALID_STATE,
        f"{command.type_name()} is not allowed while the {aggregate_type} is {status}",
        status=status,
        command=command.type_name(),
    )


def currency_mismatch(expected: str, got: str) -> Rejection:
    """An amount in another currency than the aggregate's."""
    return reject(
        CURRENCY_MISMATCH, f"expected an amount in {expected}, got {got}", expected=expected, got=got
    )


def positive(money: Money) -> bool:
    """True when the amount is strictly positive."""
    return money.amount > Decimal(0)


@dataclass(frozen=True)
class Aggregate(Generic[S]):
    """One aggregate type: its state model and its two pure functions."""

    aggregate_type: AggregateType
    state_type: type[S]
    decide: Callable[[S | None, Command], Decision]
    evolve: Callable[[S | None, Event], S]

    def fold(self, events: Sequence[Event], state: S | None = None) -> S | None:
        """The state after ``events``, starting from ``state``."""
        for event in events:
            state = self.evolve(state, event)
        return state


def execute(
    aggregate: Aggregate[S], state: S | None, version: int, command: Command, expected_version: int | None
) -> Decision:
    """Check the command's aggregate type and ``expected_version``, then ``decide``.

    ``version`` counts the aggregate's events so far (0 before the first). A command that names another
    version is refused with ``version_conflict`` and the actual version, before any business rule runs.
    """
    if command.aggregate_type != aggregate.aggregate_type:
        return reject(
            UNKNOWN_COMMAND,
            f"{command.type_name()} is not a {aggregate.aggregate_type} command",
            command=command.type_name(),
        )
    if expected_version is not None and expected_version != version:
        return reject(
            VERSION_CONFLICT,
            f"expected version {expected_version}, the {aggregate.aggregate_type} is at version {version}",
            expected_version=expected_version,
            actual_version=version,
        )
    return aggregate.decide(state, command)
