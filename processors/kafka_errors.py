"""How the transactional loop reads librdkafka's errors, and the one call it must bound itself.

Kept apart from :mod:`processors.loop` (the commit protocol) because these are facts about librdkafka
and Kafka, each learnt from a failure on a real cluster (tests/e2e/test_cluster_chaos.py): which fatal
errors mean fencing, which offset-fetch errors pass, and that ``send_offsets_to_transaction`` can block
past its own timeout.
"""

from __future__ import annotations

import threading
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer, TopicPartition

SEND_OFFSETS_TIMEOUT_S = 30.0
"""The timeout handed to ``send_offsets_to_transaction``."""
SEND_OFFSETS_GRACE_S = 15.0
"""How long past that timeout the call may still block before the producer is replaced."""


# Fatal producer errors that say another producer with our transactional.id took over (or, as seen after a
# coordinator aborted our timed-out transaction, that the epoch was bumped without one).
_FENCED = frozenset({KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH})


def producer_fenced(err: KafkaError) -> bool:
    """True if a fatal producer error means another instance took over (see _FENCED)."""
    return err.code() in _FENCED


# Errors of an offset fetch that the next attempt can get past: the group coordinator moved or is loading
# the group, the request timed out, or a transaction still holds the offsets (KIP-447).
_OFFSET_FETCH_RETRIABLE = frozenset(
    {
        KafkaError.NOT_COORDINATOR,
        KafkaError.COORDINATOR_NOT_AVAILABLE,
        KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
        KafkaError.UNSTABLE_OFFSET_COMMIT,
        KafkaError.REQUEST_TIMED_OUT,
        KafkaError._WAIT_COORD,
        KafkaError._TRANSPORT,
        KafkaError._TIMED_OUT,
    }
)


def offset_fetch_retriable(err: KafkaError) -> bool:
    """True if reading committed offsets failed with ``err`` only for now (see _OFFSET_FETCH_RETRIABLE)."""
    return err.code() in _OFFSET_FETCH_RETRIABLE or err.retriable()


def send_offsets(producer: Producer, offsets: list[TopicPartition], group: Any) -> None:
    """``send_offsets_to_transaction``, given up on (as a fatal error) if it outlives its own timeout.

    librdkafka 2.16 can block here for good: the TxnOffsetCommit goes through its coordinator-request
    state machine (rdkafka_coord.c), which sets a timeout it never checks and, when the cached group
    coordinator's node was killed, waits for a broker state change that does not come (cf. the open
    confluentinc/librdkafka#3847). On a 3-node cluster that was the processor answering nothing after
    a broker kill. The call therefore runs in a thread; if it is still blocked, the producer is left to
    that thread (destroying it mid-call is unsafe) and the fatal error makes the loop replace it
    (``TransactionalLoop._abort``).
    """
    failure: list[KafkaException] = []

    def call() -> None:
        try:
            producer.send_offsets_to_transaction(offsets, group, SEND_OFFSETS_TIMEOUT_S)
        except KafkaException as exc:
            failure.append(exc)

    worker = threading.Thread(target=call, name="esflow-send-offsets", daemon=True)
    worker.start()
    worker.join(SEND_OFFSETS_TIMEOUT_S + SEND_OFFSETS_GRACE_S)
    if worker.is_alive():
        raise KafkaException(
            KafkaError(
                KafkaError._TIMED_OUT,
                f"send_offsets_to_transaction still blocked after "
                f"{SEND_OFFSETS_TIMEOUT_S + SEND_OFFSETS_GRACE_S:.0f} s",
                fatal=True,
            )
        )
    if failure:
        raise failure[0]
