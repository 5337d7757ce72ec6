"""The stages' consumer configuration (``KafkaSettings.stage_consumer``) on a real broker: its fetch-size bounds,
which keep a worker's memory flat, never stall a partition whose next record is larger than they are."""

from __future__ import annotations

import time
import uuid

import pytest

from producers.kafka import KafkaProducer
from producers.topics import TopicSpec, ensure_topics
from streams.runtime import build_consumer

pytestmark = [pytest.mark.kafka]

LARGE = 900_000  # above max.partition.fetch.bytes (256 KB) and close to fetch.max.bytes (1 MB)


def test_a_record_larger_than_the_fetch_bounds_is_delivered_and_the_partition_goes_on(settings):
    conf = settings.kafka.stage_consumer("g")
    assert LARGE > conf["max.partition.fetch.bytes"]
    ensure_topics(settings.kafka, [TopicSpec("fetch.bounds", 1)])
    topic = settings.kafka.topic("fetch.bounds")
    values = [b"a" * 100, b"L" * LARGE, b"b" * 100, b"L" * LARGE, b"c" * 100]
    producer = KafkaProducer(settings.kafka)
    try:
        for i, value in enumerate(values):
            producer.produce(topic, str(i), value)
        producer.flush()
    finally:
        producer.close()
    consumer = build_consumer(settings.kafka, f"{settings.kafka.topic_prefix}fetch-{uuid.uuid4().hex[:6]}")
    got: list[bytes] = []
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + 60
        while len(got) < len(values) and time.monotonic() < deadline:
            for message in consumer.consume(10, timeout=0.5):
                assert message.error() is None, message.error()
                got.append(message.value())
    finally:
        consumer.close()
    assert [len(v) for v in got] == [len(v) for v in values]
    assert got == values
