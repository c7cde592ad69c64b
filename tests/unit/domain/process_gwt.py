"""Given/when/then for pure process managers: given past inputs, when one more, then actions and status."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

from esflow.domain.messages import Event
from esflow.domain.process import (
    Action,
    AnswerIn,
    EventIn,
    Input,
    ProcessDefinition,
    Reaction,
    Send,
    Status,
    TimerIn,
)

T0 = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)


def event_in(
    event: Event, aggregate_id: UUID, correlation_id: UUID | None = None, at: datetime = T0
) -> EventIn:
    """``event`` as the runtime hands it over, with fresh ids."""
    return EventIn(
        event=event,
        aggregate_type=event.aggregate_type,
        aggregate_id=aggregate_id,
        event_id=uuid4(),
        correlation_id=correlation_id or uuid4(),
        causation_id=uuid4(),
        occurred_at=at,
    )


def accepted(step: str) -> AnswerIn:
    """The accepted answer to ``step``."""
    return AnswerIn(step=step, outcome="accepted")


def rejected(step: str, reason: str) -> AnswerIn:
    """The final rejection of ``step``."""
    return AnswerIn(step=step, outcome="rejected", reason=reason, message=f"refused: {reason}")


def timer(name: str, at: datetime) -> TimerIn:
    """The timer ``name`` coming due."""
    return TimerIn(name=name, at=at)


@dataclass
class ProcessScenario:
    definition: ProcessDefinition[Any]
    history: tuple[Input, ...]
    now: datetime = T0

    def reaction(self) -> Reaction[Any] | None:
        """The reaction to the last input of the history (None before the start)."""
        if not self.history:
            return None
        first = self.history[0]
        assert isinstance(first, EventIn) and self.definition.starts(first) is not None, (
            "not a starting event"
        )
        reaction = self.definition.start(first, self.now)
        for message in self.history[1:]:
            reaction = self.definition.react(reaction.state, message, self.now)
        return reaction

    def when(self, message: Input, now: datetime | None = None) -> ProcessOutcome:
        before = self.reaction()
        at = self.now if now is None else now
        if before is None:
            assert isinstance(message, EventIn) and self.definition.starts(message) is not None
            return ProcessOutcome(self.definition.start(message, at))
        # The runtime stores the state as JSON between inputs: react on what it reads back.
        state = type(before.state).model_validate_json(before.state.model_dump_json())
        assert state == before.state
        return ProcessOutcome(self.definition.react(state, message, at))


@dataclass
class ProcessOutcome:
    reaction: Reaction[Any]
    sent: list[Send] = field(init=False)

    def __post_init__(self) -> None:
        self.sent = [a for a in self.reaction.actions if isinstance(a, Send)]

    def then(
        self,
        *actions: Action,
        status: Status,
        step: str | None = None,
        reason: str | None = None,
        final: bool = False,
    ) -> Reaction[Any]:
        """Exactly ``actions`` (in order), and the instance's status, step, reason and finality."""
        assert self.reaction.actions == actions, f"actions: {self.reaction.actions}"
        assert self.reaction.status == status, self.reaction
        if step is not None:
            assert self.reaction.step == step, self.reaction
        assert self.reaction.reason == reason, self.reaction.reason
        assert self.reaction.final is final, self.reaction
        return self.reaction

    def then_nothing(self, status: Status, reason: str | None = None, final: bool = False) -> Reaction[Any]:
        """No action, the instance unchanged in ``status``."""
        return self.then(status=status, reason=reason, final=final)


def given(definition: ProcessDefinition[Any], *history: Input, now: datetime = T0) -> ProcessScenario:
    """A process instance started by ``history[0]`` and fed the rest (or not started yet)."""
    return ProcessScenario(definition, history, now)


def later(seconds: float) -> datetime:
    """``seconds`` after the scenarios' clock."""
    return T0 + timedelta(seconds=seconds)
