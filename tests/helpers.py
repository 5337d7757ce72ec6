"""Small test helpers: bounded waits, topic creation and draining on the real broker; a recording finisher."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from confluent_kafka import Consumer, KafkaError
from confluent_kafka.admin import AdminClient, NewTopic

T = TypeVar("T")


def wait_for(condition: Callable[[], T], *, timeout: float, interval: float = 0.05, what: str = "condition") -> T:
    """Poll ``condition`` until it returns something truthy; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} (last value: {result!r})")
        time.sleep(interval)


def create_topics(bootstrap: str, names: list[str], partitions: int = 3) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([NewTopic(n, partitions, 1) for n in names], operation_timeout=30)
    for future in futures.values():
        future.result(timeout=30)


def consume_all(bootstrap: str, topic: str, *, expected: int, timeout: float, group: str | None = None) -> list:
    """Read ``expected`` records from ``topic`` (from the beginning) within ``timeout`` seconds."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group or f"drain-{topic}-{time.monotonic_ns()}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    records = []
    deadline = time.monotonic() + timeout
    try:
        while len(records) < expected and time.monotonic() < deadline:
            for msg in consumer.consume(500, timeout=0.2):
                if msg.error():
                    if msg.error().code() == KafkaError._PARTITION_EOF:
                        continue
                    raise AssertionError(f"consume error on {topic}: {msg.error()}")
                records.append(msg)
    finally:
        consumer.close()
    return records


def consume_to_end(bootstrap: str, topic: str, *, timeout: float = 60) -> list:
    """Every record currently in ``topic``: reads each partition up to its high watermark (no guessing)."""
    from confluent_kafka import TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"end-{time.monotonic_ns()}",
                         "enable.auto.commit": False})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        ends = {}
        for p in partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            if high > low:
                ends[p] = high
        consumer.assign([TopicPartition(topic, p, 0) for p in ends])
        records = []
        deadline = time.monotonic() + timeout
        while ends and time.monotonic() < deadline:
            for msg in consumer.consume(1000, timeout=0.5):
                if msg.error():
                    continue
                records.append(msg)
                if msg.offset() + 1 >= ends.get(msg.partition(), 0):
                    ends.pop(msg.partition(), None)
        if ends:
            raise AssertionError(f"timed out reading {topic} to its end; partitions left: {sorted(ends)}")
        return records
    finally:
        consumer.close()


@dataclass
class RecordingFinisher:
    """The service's ``finish_campaign`` as the stages call it (complete, fail), recorded; always succeeds."""

    finished: list[tuple[str, Any]] = field(default_factory=list)

    def finish_campaign(self, campaign_id: Any, action: Any, detail: Any) -> bool:
        self.finished.append((str(campaign_id), action))
        return True
