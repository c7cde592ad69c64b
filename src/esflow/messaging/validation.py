"""Record dicts to message models: the reference validation, model by model.

The compiled path validates the whole envelope in one pydantic-core call
(:func:`esflow.messaging.compiled.envelope_validator`); this is what it must agree with, and what names
the problem when a record does not fit.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from pydantic import ValidationError

from esflow.domain.catalog import MessageSpec
from esflow.domain.messages import (
    CommandEnvelope,
    CommandMetadata,
    Envelope,
    EventEnvelope,
    EventMetadata,
)
from esflow.errors import DecodeError, SchemaValidationError, UnknownSchemaError
from esflow.messaging.resolution import DecodedRecord

Kind = Literal["event", "command"]


def to_envelope(decoded: DecodedRecord, messages: Mapping[str, MessageSpec]) -> Envelope:
    """The envelope of a newest-version record, validated against its models (``messages``)."""
    schema = decoded.schema
    spec = messages.get(schema.name)
    if spec is None or spec.version != schema.version:
        raise UnknownSchemaError(f"{schema.label} has no message model in this esflow")
    record = dict(decoded.record)
    metadata = record.pop("metadata", None)
    try:
        if spec.kind == "event":
            return EventEnvelope(
                metadata=EventMetadata.model_validate(metadata),
                event=spec.model.model_validate(record),
            )
        return CommandEnvelope(
            metadata=CommandMetadata.model_validate(metadata),
            command=spec.model.model_validate(record),
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "<record>"
        raise SchemaValidationError(
            f"{schema.label} record violates the model at {where}: {first['msg']}"
            + (f" ({exc.error_count()} errors)" if exc.error_count() > 1 else "")
        ) from exc


def check_kind(envelope: Envelope, kind: Kind | None) -> None:
    """Raise :class:`DecodeError` unless ``envelope`` is of ``kind`` (None accepts either)."""
    if kind == "event" and not isinstance(envelope, EventEnvelope):
        raise DecodeError(f"expected an event, got the command {envelope.command.type_name()}")
    if kind == "command" and not isinstance(envelope, CommandEnvelope):
        raise DecodeError(f"expected a command, got the event {envelope.event.type_name()}")
