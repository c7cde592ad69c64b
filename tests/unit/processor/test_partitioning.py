"""The one partitioner (librdkafka's murmur2, as ``murmur2_random`` uses it) agrees with Java's."""

from __future__ import annotations

import pytest

from esflow.messaging.kafka import partition_for

# Kafka's own vectors (clients/src/test/java/org/apache/kafka/common/utils/UtilsTest.java, testMurmur2):
# Java's signed 32-bit murmur2 of each key; its default partitioner takes toPositive(hash) % n.
KAFKA_VECTORS = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}


@pytest.mark.parametrize(("key", "expected"), KAFKA_VECTORS.items())
@pytest.mark.parametrize("partitions", [1, 2, 6, 7, 64, 1000])
def test_partition_is_javas_positive_hash_modulo(key: bytes, expected: int, partitions: int) -> None:
    assert partition_for(key, partitions) == (expected & 0x7FFFFFFF) % partitions
