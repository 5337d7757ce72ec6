"""``KafkaProducer.mark`` / ``wait_for`` on a real broker: once a mark is reached, the records produced before it
are in the topic, while the producer went on producing after it."""

from __future__ import annotations

import pytest

from producers.kafka import KafkaProducer
from producers.topics import TopicSpec, ensure_topics
from tests.helpers import consume_to_end

pytestmark = [pytest.mark.kafka]


def test_the_records_before_a_reached_mark_are_on_the_broker(settings):
    ensure_topics(settings.kafka, [TopicSpec("marks", 6)])
    topic = settings.kafka.topic("marks")
    producer = KafkaProducer(settings.kafka)
    try:
        before = [f"before-{i}" for i in range(500)]
        for key in before:
            producer.produce(topic, key, key.encode())
        mark = producer.mark()
        for i in range(500):
            producer.produce(topic, f"after-{i}", b"after")
        producer.wait_for(mark)
        on_broker = {m.key().decode() for m in consume_to_end(settings.kafka.bootstrap_servers, topic)}
        assert set(before) <= on_broker
        producer.flush()
        assert len(consume_to_end(settings.kafka.bootstrap_servers, topic)) == 1000
    finally:
        producer.close()
