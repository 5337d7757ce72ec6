"""``KafkaProducer.mark`` / ``wait_for``: a flush of only the records produced before the mark.

librdkafka is replaced by a fake that holds every delivery report until the test releases it, in any order: what
a mark waits for is then decided by the reports, not by how fast a broker answers."""

from __future__ import annotations

from typing import Any

import pytest

from campaigns.errors import DeliveryFailed
from campaigns.settings import KafkaSettings
from producers.kafka import KafkaProducer


class _Message:
    def __init__(self, topic: str, key: bytes | None) -> None:
        self._topic, self.key = topic, key

    def topic(self) -> str:
        return self._topic


class _Error:
    def str(self) -> str:
        return "simulated failure"


class HeldReports:
    """A librdkafka producer whose delivery reports wait in ``held`` until :meth:`release`; ``poll`` serves the
    released ones."""

    def __init__(self) -> None:
        self.held: dict[bytes, Any] = {}  # key -> its report callback
        self.released: list[tuple[Any, Any]] = []

    def produce(self, topic: str, value: bytes, key: bytes, on_delivery: Any, headers: Any = None) -> None:
        self.held[key] = (on_delivery, _Message(topic, key))

    def release(self, *keys: str, error: bool = False) -> None:
        for key in keys:
            callback, message = self.held.pop(key.encode())
            self.released.append((callback, (_Error() if error else None, message)))

    def poll(self, timeout: float = 0.0) -> int:
        served, self.released = self.released, []
        for callback, (error, message) in served:
            callback(error, message)
        return len(served)

    def flush(self, timeout: float = 0.0) -> int:
        for key in list(self.held):
            self.release(key.decode())
        self.poll()
        return 0


@pytest.fixture
def producer() -> tuple[KafkaProducer, HeldReports]:
    kafka = KafkaProducer(KafkaSettings(bootstrap_servers="127.0.0.1:1"))  # never connects: replaced below
    fake = HeldReports()
    kafka._producer = fake  # type: ignore[assignment]
    return kafka, fake


def test_a_mark_is_reached_when_the_records_before_it_are_reported_whatever_comes_after(producer) -> None:
    kafka, fake = producer
    kafka.produce("t", "a1", b"v")
    kafka.produce("t", "a2", b"v")
    first = kafka.mark()
    kafka.produce("t", "b1", b"v")
    fake.release("b1", "a2")  # out of order across partitions
    with pytest.raises(DeliveryFailed, match="not acknowledged"):
        kafka.wait_for(first, timeout=0.05)  # a1 is still in flight
    fake.release("a1")
    kafka.wait_for(first)
    second = kafka.mark()
    kafka.produce("t", "c1", b"v")  # never reported: a later record does not hold up an earlier mark
    kafka.wait_for(second)
    assert set(fake.held) == {b"c1"}


def test_a_failed_delivery_is_raised_by_the_next_wait(producer) -> None:
    kafka, fake = producer
    kafka.produce("t", "a1", b"v")
    mark = kafka.mark()
    fake.release("a1", error=True)
    with pytest.raises(DeliveryFailed, match="simulated failure"):
        kafka.wait_for(mark)
    kafka.produce("t", "a2", b"v")
    fake.release("a2")
    kafka.wait_for(kafka.mark())  # reported once, then forgotten


def test_a_flush_after_marks_waits_for_everything_and_the_marks_start_over(producer) -> None:
    kafka, fake = producer
    kafka.produce("t", "a1", b"v")
    early = kafka.mark()
    kafka.produce("t", "b1", b"v")
    kafka.flush()
    assert not fake.held
    kafka.wait_for(early)  # long reached
    kafka.produce("t", "c1", b"v")
    late = kafka.mark()
    with pytest.raises(DeliveryFailed):
        kafka.wait_for(late, timeout=0.05)
    fake.release("c1")
    kafka.wait_for(late)
