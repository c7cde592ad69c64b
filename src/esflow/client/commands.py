"""Building command envelopes from Python objects or JSON, validated before anything is sent.

JSON shape (the CLI's ``--json`` and each line of ``--file``): the command's own fields plus optional
metadata keys ``aggregate_id``, ``expected_version``, ``command_id``, ``correlation_id``,
``causation_id`` and, in files, ``type``. Creation commands (the first command of an aggregate) may
omit ``aggregate_id``: a new id is generated.
"""

from __future__ import annotations

import difflib
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from pydantic import ValidationError

from esflow.domain.catalog import MESSAGE_TYPES, MessageSpec
from esflow.domain.messages import Command, CommandEnvelope, CommandMetadata
from esflow.errors import CommandValidationError, UnknownCommandType

METADATA_KEYS = frozenset(
    {"type", "aggregate_id", "expected_version", "command_id", "correlation_id", "causation_id"}
)

# The commands that bring an aggregate into existence; they may arrive without an aggregate id.
CREATION_COMMANDS = frozenset({"RegisterProduct", "PlaceOrder", "OpenAccount", "RequestTransfer"})


def command_spec(type_name: str) -> MessageSpec:
    """The contract's spec of a command type, or :class:`UnknownCommandType` with a suggestion."""
    spec = MESSAGE_TYPES.get(type_name)
    if spec is not None and spec.kind == "command":
        return spec
    commands = sorted(n for n, s in MESSAGE_TYPES.items() if s.kind == "command")
    close = difflib.get_close_matches(type_name, commands, n=1)
    hint = f"did you mean {close[0]}?" if close else "known commands: " + ", ".join(commands)
    what = "an event, not a command" if spec is not None else "not a command type"
    raise UnknownCommandType(f"{type_name!r} is {what}", hint=hint)


def _problems(exc: ValidationError, prefix: str = "") -> list[str]:
    out = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(root)"
        out.append(f"{prefix}{loc}: {err['msg']}")
    return out


def _uuid_field(raw: Mapping[str, Any], key: str, problems: list[str]) -> UUID | None:
    value = raw.get(key)
    if value is None:
        return None
    try:
        return value if isinstance(value, UUID) else UUID(str(value))
    except ValueError:
        problems.append(f"{key}: not a UUID ({value!r})")
        return None


def envelope(
    command: Command,
    aggregate_id: UUID | None = None,
    *,
    expected_version: int | None = None,
    command_id: UUID | None = None,
    correlation_id: UUID | None = None,
    causation_id: UUID | None = None,
) -> CommandEnvelope:
    """Wrap a command in its metadata; ids default to new UUIDs, the correlation id to the command id."""
    if aggregate_id is None:
        if command.type_name() not in CREATION_COMMANDS:
            raise CommandValidationError(
                f"{command.type_name()} needs an aggregate_id", ["aggregate_id: required for this command"]
            )
        aggregate_id = uuid.uuid4()
    cid = command_id or uuid.uuid4()
    try:
        metadata = CommandMetadata(
            command_id=cid,
            aggregate_type=command.aggregate_type,
            aggregate_id=aggregate_id,
            correlation_id=correlation_id or cid,
            causation_id=causation_id,
            expected_version=expected_version,
            issued_at=datetime.now(UTC),
        )
    except ValidationError as exc:
        raise CommandValidationError(
            f"invalid metadata for {command.type_name()}", _problems(exc)
        ) from exc  # fmt: skip
    return CommandEnvelope(metadata=metadata, command=command)


def from_json(type_name: str | None, raw: Mapping[str, Any]) -> CommandEnvelope:
    """Validate a JSON object as a command; every invalid field is reported at once."""
    name = raw.get("type") if isinstance(raw.get("type"), str) else type_name
    if not name:
        raise CommandValidationError("no command type given", ["type: required (argument or 'type' key)"])
    spec = command_spec(str(name))
    problems: list[str] = []
    aggregate_id = _uuid_field(raw, "aggregate_id", problems)
    command_id = _uuid_field(raw, "command_id", problems)
    correlation_id = _uuid_field(raw, "correlation_id", problems)
    causation_id = _uuid_field(raw, "causation_id", problems)
    expected = raw.get("expected_version")
    if expected is not None and (not isinstance(expected, int) or isinstance(expected, bool) or expected < 0):
        problems.append(f"expected_version: must be a non-negative integer ({expected!r})")
        expected = None
    payload = {k: v for k, v in raw.items() if k not in METADATA_KEYS}
    command: Command | None = None
    try:
        command = spec.model.model_validate(payload)  # type: ignore[assignment]
    except ValidationError as exc:
        problems.extend(_problems(exc))
    if aggregate_id is None and "aggregate_id" not in raw and spec.name not in CREATION_COMMANDS:
        problems.append("aggregate_id: required for this command")
    if problems or command is None:
        raise CommandValidationError(f"invalid {spec.name}: " + "; ".join(problems), problems)
    return envelope(
        command,
        aggregate_id,
        expected_version=expected,
        command_id=command_id,
        correlation_id=correlation_id,
        causation_id=causation_id,
    )
