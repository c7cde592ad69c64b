"""The registry of message types: type name -> model class, kind, aggregate and newest version."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from esflow.domain import account, order, product, transfer
from esflow.domain.messages import AggregateType, Command, Event, Message, MessageKind


@dataclass(frozen=True)
class MessageSpec:
    """What the rest of esflow needs to know about one message type."""

    name: str
    kind: MessageKind
    aggregate_type: AggregateType
    version: int
    model: type[Message]


def _collect() -> dict[str, MessageSpec]:
    specs: dict[str, MessageSpec] = {}
    for module in (product, order, account, transfer):
        for obj in vars(module).values():
            if (
                isinstance(obj, type)
                and issubclass(obj, Message)
                and obj not in (Message, Command, Event)
                and obj.__module__ == module.__name__
            ):
                name = obj.type_name()
                if name in specs:  # pragma: no cover - guarded by a test
                    raise RuntimeError(f"message type {name} is defined twice")
                specs[name] = MessageSpec(name, obj.kind, obj.aggregate_type, obj.schema_version, obj)
    return specs


MESSAGE_TYPES: Mapping[str, MessageSpec] = MappingProxyType(_collect())
"""Every command and event of the reference domain, by type name."""


def spec_for(name: str) -> MessageSpec | None:
    """The spec of ``name``, or None when esflow has no such message type."""
    return MESSAGE_TYPES.get(name)


def events_of(aggregate_type: AggregateType) -> list[MessageSpec]:
    """The event types one aggregate emits."""
    return [s for s in MESSAGE_TYPES.values() if s.kind == "event" and s.aggregate_type == aggregate_type]


def commands_of(aggregate_type: AggregateType) -> list[MessageSpec]:
    """The command types one aggregate accepts."""
    return [s for s in MESSAGE_TYPES.values() if s.kind == "command" and s.aggregate_type == aggregate_type]
