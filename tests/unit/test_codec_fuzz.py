"""Fuzzing the decoder: whatever the bytes, it returns an envelope or raises esflow's typed errors."""

from __future__ import annotations

import uuid
from pathlib import Path

from confluent_kafka.schema_registry import SchemaRegistryClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from esflow.domain.messages import CommandEnvelope, EventEnvelope
from esflow.errors import CodecError
from esflow.messaging.codec import Codec
from esflow.messaging.framing import SINGLE_OBJECT_MAGIC
from esflow.messaging.registry import ConfluentFraming
from esflow.messaging.samples import sample_record
from esflow.messaging.schemas import SchemaCatalog

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "schemas"
CATALOG = SchemaCatalog.load(SCHEMA_DIR)
CODEC = Codec(CATALOG)
VALID = [CODEC.encode_record(sv.name, sample_record(sv), version=sv.version) for sv in CATALOG]
FINGERPRINTS = [sv.fingerprint for sv in CATALOG]

# 10k cases, no deadline (CI machines stall), no example database written into the repository.
settings.register_profile(
    "esflow-fuzz",
    max_examples=10_000,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A valid message with a few bytes flipped, dropped or inserted."""
    data = bytearray(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "drop", "insert", "truncate"]))
        i = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[i] ^= draw(st.integers(1, 255))
        elif op == "drop" and data:
            del data[i]
        elif op == "insert":
            data.insert(i, draw(st.integers(0, 255)))
        elif op == "truncate":
            del data[i:]
    return bytes(data)


def known_header_random_body() -> st.SearchStrategy[bytes]:
    return st.builds(
        lambda fp, body: SINGLE_OBJECT_MAGIC + fp + body,
        st.sampled_from(FINGERPRINTS),
        st.binary(max_size=600),
    )


fuzz_input = st.one_of(st.binary(max_size=64), known_header_random_body(), mutated())


@settings(settings.get_profile("esflow-fuzz"))
@given(fuzz_input)
def test_single_object_decoder_raises_only_typed_errors(data: bytes) -> None:
    try:
        envelope = CODEC.decode(data, topic="fuzz", partition=0, offset=42)
    except CodecError as exc:
        assert exc.offset == 42 and "offset=42" in str(exc)
        return
    assert isinstance(envelope, EventEnvelope | CommandEnvelope)


REGISTRY = SchemaRegistryClient.new_client({"url": f"mock://{uuid.uuid4()}"})
SR_CODEC = Codec(CATALOG, framing=ConfluentFraming(REGISTRY, CATALOG, auto_register=True))
SR_VALID = [
    SR_CODEC.encode_record(
        sv.name, sample_record(sv), version=sv.version, topic=f"{sv.kind}s.{sv.aggregate_type}"
    )
    for sv in CATALOG
]


@st.composite
def sr_input(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SR_VALID)))
    i = draw(st.integers(0, len(data) - 1))
    data[i] ^= draw(st.integers(1, 255))
    return bytes(data[: draw(st.integers(0, len(data)))])


@settings(settings.get_profile("esflow-fuzz"), max_examples=2_000)
@given(st.one_of(st.binary(max_size=64), sr_input()))
def test_registry_decoder_raises_only_typed_errors(data: bytes) -> None:
    try:
        SR_CODEC.decode(data, topic="fuzz", partition=1, offset=7)
    except CodecError as exc:
        assert exc.partition == 1
