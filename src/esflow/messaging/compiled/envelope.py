"""One pydantic-core validation for a whole envelope, and the decoder that pairs it with a reader.

Speed only; validating model by model (:mod:`esflow.messaging.validation`) is the reference.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from pydantic_core import CoreSchema, SchemaValidator

from esflow.domain.catalog import MessageSpec
from esflow.domain.messages import CommandEnvelope, Envelope, EventEnvelope
from esflow.messaging.upcasting import Record


def envelope_validator(spec: MessageSpec) -> Callable[[Any], Envelope] | None:
    """One pydantic-core validator from ``{"metadata": {...}, "event"|"command": {...}}`` to the envelope.

    Built from the models' own core schemas: the envelope's, with its ``SerializeAsAny[Event]`` field
    replaced by ``spec.model``'s schema, so every constraint, validator and default is the models' and the
    result is the same ``EventEnvelope``/``CommandEnvelope`` the three ``model_validate`` calls build, in
    one call into Rust. None when pydantic cannot build it (the codec then validates model by model).
    """
    envelope: type[EventEnvelope | CommandEnvelope]
    envelope, key = (EventEnvelope, "event") if spec.kind == "event" else (CommandEnvelope, "command")
    replaced: list[bool] = []

    def replace(schema: Any) -> Any:
        if isinstance(schema, list):
            return [replace(s) for s in schema]
        if not isinstance(schema, dict):
            return schema
        if schema.get("type") == "model" and schema.get("cls") is envelope:
            fields_schema = dict(schema["schema"])
            fields = dict(fields_schema["fields"])
            fields[key] = {**fields[key], "schema": spec.model.__pydantic_core_schema__}
            fields_schema["fields"] = fields
            replaced.append(True)
            return {**schema, "schema": fields_schema}
        return {k: replace(v) for k, v in schema.items()}

    try:
        schema = replace(envelope.__pydantic_core_schema__)
        if len(replaced) != 1:
            return None
        validator = SchemaValidator(cast(CoreSchema, schema))
    except Exception:  # an unusual model schema: keep the model-by-model path
        return None
    return cast(Callable[[Any], Envelope], validator.validate_python)


class FastDecoder:
    """The hot path for the newest version of one type: a compiled reader and one envelope validator.

    Either step may refuse (any exception, or bytes that are not the plain encoding); then it answers
    None and the codec takes the full path, which raises exactly the error it always raised. So the fast
    path only ever changes how fast a good message is decoded, never what any message decodes to.
    """

    __slots__ = ("payload_key", "read", "validate")

    def __init__(
        self,
        read: Callable[[bytes, int], Any],
        validate: Callable[[Any], Any] | None,
        payload_key: str,
    ) -> None:
        self.read = read
        self.validate = validate
        self.payload_key = payload_key

    def record(self, data: bytes, start: int) -> Record | None:
        """The record dict, or None to take the full path."""
        try:
            record: Record = self.read(data, start)
        except Exception:  # not the plain encoding: fastavro reads it (or names the problem)
            return None
        return record

    def envelope(self, data: bytes, start: int) -> Envelope | None:
        """The validated envelope, or None to take the full path."""
        if self.validate is None:  # no model for this version: the full path raises the usual error
            return None
        try:
            record = self.read(data, start)
            metadata = record.pop("metadata")
            envelope: Envelope = self.validate({"metadata": metadata, self.payload_key: record})
        except Exception:  # the full path reads and validates again, raising its usual typed error
            return None
        return envelope
