"""Speed only: generated Avro readers and writers and one-call envelope validation.

This package is the codec's single door to code that exists for throughput and nothing else. Everything
here has a reference path that defines the behaviour: fastavro's ``schemaless_reader``/``schemaless_writer``
with Avro resolution and upcasting (:mod:`esflow.messaging.resolution`), and model-by-model pydantic
validation (:mod:`esflow.messaging.validation`). Each fast piece handles the plain case only and refuses
the rest (returns None, or raises inside and is caught), and the codec then takes the reference path,
which produces the result or the exact error it always did. ``Codec(..., compiled=False)`` takes the
reference path everywhere; ``tests/unit/test_codec_fast.py`` holds the two paths equal.

- :func:`compile_reader` / :func:`compile_writer`: a parsed schema turned once into straight-line Python
  that indexes bytes instead of interpreting the schema per value (shared walk in ``_scaffold``);
- :func:`envelope_validator`: one pydantic-core validator for the whole envelope;
- :class:`FastDecoder`: the reader and the validator of the newest version of one type, together.

Only :mod:`esflow.messaging.codec` imports this package (an import-linter contract keeps it so).
"""

from esflow.messaging.compiled.envelope import FastDecoder, envelope_validator
from esflow.messaging.compiled.reader import compile_reader
from esflow.messaging.compiled.writer import compile_writer

__all__ = ["FastDecoder", "compile_reader", "compile_writer", "envelope_validator"]
