from __future__ import annotations

import psycopg
import pytest
import sqlalchemy as sa
from confluent_kafka import KafkaError, KafkaException

from esflow.errors import (
    BrokerUnavailable,
    DatabaseError,
    DatabaseUnavailable,
    EsflowError,
    KafkaOperationError,
    StackError,
    translate,
    translated,
)


def test_one_line_carries_the_hint() -> None:
    assert StackError("it broke", hint="do this").one_line() == "it broke (do this)"
    assert StackError("it broke").one_line() == "it broke"


def test_kafka_transport_errors_mean_unavailable() -> None:
    exc = KafkaException(KafkaError(KafkaError._TRANSPORT, "connection refused"))
    out = translate(exc, context="listing topics")
    assert isinstance(out, BrokerUnavailable)
    assert out.message.startswith("listing topics: Kafka is not reachable")


def test_other_kafka_errors_keep_their_text() -> None:
    exc = KafkaException(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED, "denied"))
    out = translate(exc)
    assert isinstance(out, KafkaOperationError)
    assert "denied" in out.message


def test_database_outage_and_other_errors() -> None:
    outage = sa.exc.OperationalError("SELECT 1", {}, psycopg.OperationalError("connection refused"))
    assert isinstance(translate(outage), DatabaseUnavailable)
    bad = sa.exc.IntegrityError("INSERT", {}, psycopg.errors.UniqueViolation("duplicate key"))
    out = translate(bad, context="saving rows")
    assert isinstance(out, DatabaseError)
    assert out.message == "saving rows: duplicate key"


def test_esflow_errors_pass_through_and_unknown_errors_are_wrapped() -> None:
    original = StackError("x")
    assert translate(original) is original
    wrapped = translate(ValueError("odd"))
    assert type(wrapped) is EsflowError
    assert wrapped.message == "ValueError: odd"


def test_translated_block_converts_driver_errors_and_passes_esflow_errors() -> None:
    own = StackError("ours")
    with pytest.raises(StackError) as caught, translated("doing it"):
        raise own
    assert caught.value is own and caught.value.__cause__ is None
    outage = sa.exc.OperationalError("SELECT 1", {}, psycopg.OperationalError("connection refused"))
    with (
        pytest.raises(DatabaseUnavailable, match=r"^doing it: PostgreSQL is not reachable") as db,
        translated("doing it"),
    ):
        raise outage
    assert db.value.__cause__ is outage
