"""How the processor reads Kafka errors around a broker loss: what is fencing, what is worth a retry.

Seen on a 3-node cluster (tests/e2e/test_cluster_chaos.py): after the transaction coordinator was
SIGKILLed, the new coordinator answered the abort with INVALID_TXN_STATE, which librdkafka makes fatal;
the processor took it for fencing and exited. Only fencing codes may stop it. In another run the
processor blocked for good inside send_offsets_to_transaction, past the timeout it had passed.
"""

from __future__ import annotations

import threading
import time

import pytest
from confluent_kafka import KafkaError, KafkaException

from processors import processor
from processors.processor import Processor, offset_fetch_retriable, producer_fenced


@pytest.mark.parametrize(
    "code", [KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH]
)
def test_fencing_codes_stop_the_instance(code: int) -> None:
    assert producer_fenced(KafkaError(code, fatal=True))


@pytest.mark.parametrize(
    "code", [KafkaError.INVALID_TXN_STATE, KafkaError._TIMED_OUT, KafkaError.UNKNOWN_PRODUCER_ID]
)
def test_other_fatal_errors_are_not_fencing(code: int) -> None:
    # A fresh producer's init_transactions settles these; stopping would leave the partitions unserved.
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
    monkeypatch.setattr(processor, "SEND_OFFSETS_TIMEOUT_S", 0.2)
    monkeypatch.setattr(processor, "SEND_OFFSETS_GRACE_S", 0.3)
    blocked = _BlockedProducer()
    started = time.monotonic()
    try:
        with pytest.raises(KafkaException) as caught:
            Processor._send_offsets(blocked, [], None)  # type: ignore[arg-type]
    finally:
        blocked.release.set()
    err = caught.value.args[0]
    assert err.fatal() and not producer_fenced(err)
    assert time.monotonic() - started < 5
