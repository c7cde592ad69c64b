"""Given/when/then for pure aggregates: given past events, when a command, then events or a rejection."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from esflow.domain.aggregates import Aggregate, Decision, Rejection, execute
from esflow.domain.messages import Command, Event


@dataclass
class Scenario:
    aggregate: Aggregate[Any]
    history: tuple[Event, ...]

    def when(self, command: Command, expected_version: int | None = None) -> Outcome:
        state = self.aggregate.fold(self.history)
        return Outcome(execute(self.aggregate, state, len(self.history), command, expected_version), self)


@dataclass
class Outcome:
    decision: Decision
    scenario: Scenario

    def then(self, *events: Event) -> Any:
        assert not isinstance(self.decision, Rejection), f"rejected: {self.decision}"
        assert self.decision == events
        # Every accepted decision must fold: evolve knows every event decide emits.
        return self.scenario.aggregate.fold(events, self.scenario.aggregate.fold(self.scenario.history))

    def then_rejected(self, code: str, **details: Any) -> Rejection:
        assert isinstance(self.decision, Rejection), f"accepted: {self.decision}"
        assert self.decision.code == code, self.decision
        for k, v in details.items():
            assert self.decision.details.get(k) == v, self.decision
        return self.decision


def given(aggregate: Aggregate[Any], *history: Event) -> Scenario:
    return Scenario(aggregate, history)
