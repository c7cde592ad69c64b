"""What every process manager is: a pure reaction to events, answers and timers.

A process manager coordinates several aggregates over time (reserve stock, then charge, then confirm;
undo what was done when a later step fails). Like an aggregate it is pure: it never sees Kafka, Avro,
ids it did not receive, or a clock it was not handed. A runtime (the ``processors/`` deployable) feeds
it one :data:`Input` at a time and carries out the :data:`Action` s it returns.

The contract between a definition and its runtime:

- **Instances.** :meth:`ProcessDefinition.starts` names the instance an event starts (deterministic, e.g.
  the order id), :meth:`ProcessDefinition.correlate` the instance an event advances. An event that
  correlates to no existing instance is dropped; an event that starts an instance which already exists
  is handed to :meth:`~ProcessDefinition.react` instead (a re-read input must not start a second one).
- **Sends.** :class:`Send` names a *step*, unique within one instance. The runtime derives the command id
  as ``uuid5(instance_id, f"{process}/{step}/{attempt}")`` (see :func:`command_id`), sets
  ``correlation_id`` to the instance id and ``causation_id`` to the id of the input that caused the send,
  and later hands the final answer back as an :class:`AnswerIn` with the same ``step``.
- **Retries** belong to the runtime (:class:`RetryPolicy`): :meth:`~ProcessDefinition.react` only sees
  *final* answers, so a definition's compensation logic never counts attempts.
- **Timers** are durable: the runtime keeps :class:`SetTimer` s in the instance's state, fires each once
  as a :class:`TimerIn` at or after its time (after a restart too), and forgets it on
  :class:`CancelTimer` or when it fires. Setting a timer whose name is already set moves it.
- **Time.** ``now`` is the runtime's clock when it handles the input; definitions never read a clock.
- **Reactions.** Every call returns a :class:`Reaction`: the new state, the actions, the instance's
  :data:`Status`, a label of its current step for people, and, when it fails or compensates, why.
  ``final`` tells the runtime that no later input can change the instance.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from datetime import datetime
from typing import ClassVar, Generic, Literal, TypeVar
from uuid import UUID, uuid5

from pydantic import BaseModel, Field, SerializeAsAny

from esflow.domain.messages import Command, Event, EventEnvelope
from esflow.domain.values import Frozen, UtcDatetime

S = TypeVar("S", bound=BaseModel)

TIMEOUT = "timeout"
"""The reason of a final answer that never came: the command may or may not have run."""

StepName = str
"""A step's name: unique within one instance, part of the derived command id (e.g. ``reserve/<id>``)."""


class Send(Frozen):
    """Send ``command`` to the aggregate ``aggregate_id`` (its type is the command's) as step ``step``."""

    step: StepName = Field(min_length=1)
    aggregate_id: UUID
    command: SerializeAsAny[Command]


class SetTimer(Frozen):
    """Deliver :class:`TimerIn` ``name`` at ``at`` (or as soon after as the runtime runs)."""

    name: str = Field(min_length=1)
    at: UtcDatetime


class CancelTimer(Frozen):
    """Forget the timer ``name``; cancelling a timer that is not set is harmless."""

    name: str = Field(min_length=1)


Action = Send | SetTimer | CancelTimer
"""What a reaction asks the runtime to do, in order."""

Status = Literal["running", "completed", "compensating", "compensated", "failed"]
"""Where an instance is.

``running``: on its way to its goal. ``completed``: the goal is reached. ``compensating``: a step failed
(or a deadline passed) and the instance is undoing what it did. ``compensated``: everything it did is
undone (or never happened). ``failed``: it could neither finish nor undo, and a person must look at it
(``reason`` says why).
"""

ENDED_STATUSES: frozenset[Status] = frozenset({"completed", "compensated", "failed"})
"""The statuses in which an instance no longer waits for an answer or a timer."""


class EventIn(Frozen):
    """An event the process subscribes to, with the metadata of its envelope."""

    event: SerializeAsAny[Event]
    aggregate_type: str
    aggregate_id: UUID
    event_id: UUID
    correlation_id: UUID
    causation_id: UUID
    occurred_at: UtcDatetime

    @classmethod
    def from_envelope(cls, envelope: EventEnvelope) -> EventIn:
        """The input a decoded event envelope makes."""
        meta = envelope.metadata
        return cls(
            event=envelope.event,
            aggregate_type=meta.aggregate_type,
            aggregate_id=meta.aggregate_id,
            event_id=meta.event_id,
            correlation_id=meta.correlation_id,
            causation_id=meta.causation_id,
            occurred_at=meta.occurred_at,
        )


class AnswerIn(Frozen):
    """The final answer to the command of step ``step``.

    Final: the runtime already re-sent retryable rejections and unanswered commands as its
    :class:`RetryPolicy` says. ``reason`` is the rejection's reason code (a business code, a bad-input code
    of a dead-letter report, or :data:`TIMEOUT` when no answer ever came); ``None`` when accepted.
    """

    step: StepName
    outcome: Literal["accepted", "rejected"]
    reason: str | None = None
    message: str | None = None

    @property
    def accepted(self) -> bool:
        """Whether the command was accepted."""
        return self.outcome == "accepted"


class TimerIn(Frozen):
    """The timer ``name``, set for ``at``, has come due."""

    name: str
    at: UtcDatetime


Input = EventIn | AnswerIn | TimerIn
"""Everything :meth:`ProcessDefinition.react` receives."""


class Reaction(Frozen, Generic[S]):
    """What a definition answers to one input.

    ``step`` labels what the instance is doing now (``reserving``, ``charging``…), for the read model and
    for people. ``reason`` says why it compensates or failed. ``final`` is true when no later input can
    change the instance: the runtime may then stop routing inputs to it and drop its state.
    """

    state: S
    actions: tuple[Action, ...] = ()
    status: Status
    step: str
    reason: str | None = None
    final: bool = False


class RetryPolicy(Frozen):
    """How the runtime retries a step's command before handing :meth:`~ProcessDefinition.react` an answer.

    - A rejection whose reason is in ``retryable`` is re-sent with ``attempt + 1`` (so a new command id:
      the rejected one sits in the aggregate's idempotency window and would be answered the same again),
      after ``first_delay_s * 2 ** (attempt - 1)`` seconds, capped at ``max_delay_s``.
    - No answer within ``answer_timeout_s`` is re-sent with the *same* attempt (the same command id): the
      first may have been executed, and the processor's idempotency answers a duplicate without running
      it twice. It counts as an attempt.
    - After ``max_attempts`` the last rejection (or ``timeout``) is the final answer.
    """

    retryable: frozenset[str] = frozenset({"version_conflict", TIMEOUT})
    first_delay_s: float = Field(default=0.2, gt=0)
    max_delay_s: float = Field(default=10.0, gt=0)
    answer_timeout_s: float = Field(default=30.0, gt=0)
    max_attempts: int = Field(default=5, ge=1)

    def delay_s(self, attempt: int) -> float:
        """The wait before sending attempt ``attempt + 1`` after attempt ``attempt`` (1-based) failed."""
        return float(min(self.max_delay_s, self.first_delay_s * 2 ** max(0, attempt - 1)))


def command_id(process: str, instance_id: UUID, step: StepName, attempt: int = 1) -> UUID:
    """The command id of attempt ``attempt`` of ``step`` in one instance of ``process``.

    A pure function of its arguments, so a re-send after a crash carries the id the processor has seen.
    """
    return uuid5(instance_id, f"{process}/{step}/{attempt}")


class ProcessDefinition(ABC, Generic[S]):
    """One kind of process: which events start and advance it, and how it reacts.

    Subclasses set ``name`` (lower-case, stable: it is part of every command id the process sends and
    of its state's key), ``state_type`` (a frozen pydantic model the runtime stores as JSON) and
    optionally ``retry``.
    """

    name: ClassVar[str]
    state_type: ClassVar[type[BaseModel]]
    retry: ClassVar[RetryPolicy] = RetryPolicy()

    @abstractmethod
    def subscribes(self) -> frozenset[str]:
        """The aggregate types whose events the process reads (its answers come whatever this says)."""

    @abstractmethod
    def starts(self, event: EventIn) -> UUID | None:
        """The id of the instance ``event`` starts, or None when it starts none; deterministic."""

    @abstractmethod
    def correlate(self, event: EventIn) -> UUID | None:
        """The id of the instance ``event`` may advance, or None; deterministic."""

    @abstractmethod
    def start(self, event: EventIn, now: datetime) -> Reaction[S]:
        """The first reaction of the instance ``starts(event)`` names."""

    @abstractmethod
    def react(self, state: S, message: Input, now: datetime) -> Reaction[S]:
        """The reaction of an existing instance in ``state`` to ``message``.

        A message the instance does not expect (an unrelated event, a timer it no longer needs) returns
        the state unchanged with no actions.
        """
