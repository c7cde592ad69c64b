"""How the processor reads Kafka errors around a broker loss: what is fencing, what is worth a retry.

Seen on a 3-node cluster (tests/e2e/test_cluster_chaos.py): after the transaction coordinator was
SIGKILLed, the new coordinator answered the abort with INVALID_TXN_STATE, which librdkafka makes fatal;
the processor took it for fencing and exited; in another the abort came back _FENCED because the
coordinator had aborted the timed-out transaction with an epoch bump, though no other instance existed.
So the producer is replaced after a fatal error, and only an instance fenced again and again stops. In a
third run the processor blocked for good inside send_offsets_to_transaction, past its own timeout.
"""

from __future__ import annotations

import threading
import time

import pytest
from confluent_kafka import KafkaError, KafkaException

from esflow.errors import ProcessorError, ProcessorFenced
from esflow.messaging.codec import Codec
from esflow.settings import KafkaSettings, ProcessorSettings, TopicSettings
from processors import kafka_errors
from processors.kafka_errors import offset_fetch_retriable, producer_fenced, send_offsets
from processors.loop import RENEWALS_MAX
from processors.processor import Processor


@pytest.mark.parametrize(
    "code", [KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH]
)
def test_fencing_codes_are_told_apart(code: int) -> None:
    assert producer_fenced(KafkaError(code, fatal=True))


@pytest.mark.parametrize(
    "code", [KafkaError.INVALID_TXN_STATE, KafkaError._TIMED_OUT, KafkaError.UNKNOWN_PRODUCER_ID]
)
def test_other_fatal_errors_are_not_fencing(code: int) -> None:
    assert not producer_fenced(KafkaError(code, fatal=True))


@pytest.mark.parametrize(
    "code",
    [
        KafkaError.NOT_COORDINATOR,
        KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
        KafkaError.COORDINATOR_NOT_AVAILABLE,
        KafkaError.UNSTABLE_OFFSET_COMMIT,
        KafkaError._WAIT_COORD,
        KafkaError._TRANSPORT,
        KafkaError._TIMED_OUT,
    ],
)
def test_a_moving_coordinator_is_worth_another_offset_fetch(code: int) -> None:
    assert offset_fetch_retriable(KafkaError(code))


@pytest.mark.parametrize(
    "code", [KafkaError.GROUP_AUTHORIZATION_FAILED, KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._INVALID_ARG]
)
def test_a_refusal_is_not_retried(code: int) -> None:
    assert not offset_fetch_retriable(KafkaError(code))


class _BlockedProducer:
    """Stands in for librdkafka's producer where its send_offsets_to_transaction never returns."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def send_offsets_to_transaction(self, offsets: object, group: object, timeout: float) -> None:
        self.release.wait(30)


def test_a_blocked_send_offsets_becomes_a_fatal_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # librdkafka 2.16 can block in send_offsets_to_transaction past its timeout for good (the group
    # coordinator's node was killed): the loop must get an error it acts on instead of hanging.
    monkeypatch.setattr(kafka_errors, "SEND_OFFSETS_TIMEOUT_S", 0.2)
    monkeypatch.setattr(kafka_errors, "SEND_OFFSETS_GRACE_S", 0.3)
    blocked = _BlockedProducer()
    started = time.monotonic()
    try:
        with pytest.raises(KafkaException) as caught:
            send_offsets(blocked, [], None)  # type: ignore[arg-type]
    finally:
        blocked.release.set()
    err = caught.value.args[0]
    assert err.fatal() and not producer_fenced(err)
    assert time.monotonic() - started < 5


def _unstarted(monkeypatch: pytest.MonkeyPatch) -> tuple[Processor, list[object]]:
    proc = Processor(KafkaSettings(), TopicSettings(), ProcessorSettings(), Codec.from_settings())
    made: list[object] = []

    def new_producer() -> object:
        made.append(object())  # what init_transactions would return; no broker is involved here
        return made[-1]

    monkeypatch.setattr(proc, "_new_producer", new_producer)
    return proc, made


@pytest.mark.parametrize(
    ("code", "stops_with"),
    [(KafkaError._FENCED, ProcessorFenced), (KafkaError.INVALID_TXN_STATE, ProcessorError)],
)
def test_the_producer_is_replaced_until_it_keeps_failing(
    monkeypatch: pytest.MonkeyPatch, code: int, stops_with: type[Exception]
) -> None:
    proc, made = _unstarted(monkeypatch)
    err = KafkaError(code, fatal=True)
    for _ in range(RENEWALS_MAX):
        proc._renew_producer(err, KafkaException(err))
    assert len(made) == RENEWALS_MAX and proc._producer is made[-1]
    with pytest.raises(ProcessorError) as stopped:
        proc._renew_producer(err, KafkaException(err))
    assert type(stopped.value) is stops_with  # ProcessorFenced is a ProcessorError: compare exactly
    assert len(made) == RENEWALS_MAX
