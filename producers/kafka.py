"""A small publishing port over an idempotent confluent-kafka Producer, and an in-memory fake.

Guarantees of :class:`KafkaPublisher`:

* Idempotent producer (``enable.idempotence=true``, ``acks=all``): a broker-side retry never duplicates
  or reorders records of one partition, so records produced in order with the same key land in order.
* :meth:`KafkaPublisher.flush` returns only when every record produced since the previous flush is
  acknowledged, and raises :class:`~campaigns.errors.SinkError` if any was not (failed delivery or still
  queued at the timeout). Each :meth:`~KafkaPublisher.produce` returns a :class:`Delivery` handle, so a
  caller that must know *which* records made it (the outbox relay) can look after the flush.
* Nothing is sent or connected at import; a publisher is built where the process starts.

:class:`MemoryPublisher` is the fake for unit tests: it keeps the encoded bytes it was given (so schema
drift still fails tests) and can be told to fail.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from campaigns.errors import SinkError
from campaigns.settings import KafkaSettings
from producers.batch import BatchProducer

Headers = Mapping[str, bytes | str]


@dataclass
class Delivery:
    """The fate of one produced record, filled in by the delivery report (during poll/flush).

    ``done`` False means no report yet; then ``error`` is None and ``offset`` is None.
    """

    topic: str
    key: bytes | None
    done: bool = False
    error: str | None = None
    partition: int | None = None
    offset: int | None = None

    @property
    def ok(self) -> bool:
        return self.done and self.error is None


class EventPublisher(Protocol):
    """The port: queue records, then wait for all of them. Implementations must keep per-key order."""

    def produce(
        self, topic: str, value: bytes, *, key: str | bytes | None = None, headers: Headers | None = None
    ) -> Delivery: ...

    def flush(self, timeout: float = 30.0) -> None: ...

    def close(self, timeout: float = 10.0) -> None: ...


def producer_config(kafka: KafkaSettings, **overrides: Any) -> dict[str, Any]:
    """librdkafka settings for an idempotent, ordered, low-latency producer (overridable)."""
    return kafka.as_librdkafka(
        **{
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "compression.type": "lz4",
            # Bounded: a broker that never answers turns into a failed delivery report, not a hang.
            "delivery.timeout.ms": 30_000,
            **overrides,
        }
    )


class KafkaPublisher:
    """:class:`EventPublisher` over one confluent-kafka ``Producer``. Safe to produce from one thread at
    a time; delivery reports are served by :meth:`flush` / :meth:`poll`."""

    def __init__(self, kafka: KafkaSettings, **overrides: Any) -> None:
        self._producer = Producer(producer_config(kafka, **overrides))
        self._pending: list[Delivery] = []
        self._lock = threading.Lock()

    def produce(
        self, topic: str, value: bytes, *, key: str | bytes | None = None, headers: Headers | None = None
    ) -> Delivery:
        """Queue one record; returns its :class:`Delivery` handle (filled in by a later flush)."""
        key_bytes = key.encode() if isinstance(key, str) else key
        delivery = Delivery(topic=topic, key=key_bytes)

        def report(error: KafkaError | None, message: Message) -> None:
            delivery.done = True
            if error is not None:
                delivery.error = error.str()
            else:
                delivery.partition = message.partition()
                delivery.offset = message.offset()

        header_list: list[tuple[str, str | bytes | None]] = [
            (k, v.encode() if isinstance(v, str) else v) for k, v in (headers or {}).items()
        ]
        while True:
            try:
                self._producer.produce(
                    topic, value, key_bytes, on_delivery=report, headers=header_list or None
                )
                break
            except BufferError:
                # The local queue is full: let librdkafka drain it (bounded by delivery.timeout.ms).
                self._producer.poll(0.05)
            except KafkaException as exc:
                raise SinkError(f"cannot produce to {topic}: {exc}") from exc
        with self._lock:
            self._pending.append(delivery)
        return delivery

    def poll(self, timeout: float = 0.0) -> None:
        """Serve delivery reports (call now and then during long batches)."""
        self._producer.poll(timeout)

    def flush(self, timeout: float = 30.0) -> None:
        """Wait for every record produced since the last flush; raise SinkError if any failed."""
        remaining = self._producer.flush(timeout)
        with self._lock:
            pending, self._pending = self._pending, []
        failed = [d for d in pending if d.done and d.error is not None]
        if remaining or any(not d.done for d in pending):
            raise SinkError(
                f"{remaining} records not acknowledged by Kafka within {timeout}s "
                f"({len(failed)} failed); is the broker reachable? they will be retried"
            )
        if failed:
            sample = "; ".join(f"{d.topic}: {d.error}" for d in failed[:3])
            raise SinkError(f"{len(failed)} of {len(pending)} records failed delivery: {sample}")

    def close(self, timeout: float = 10.0) -> None:
        """Deliver what is queued (bounded by ``timeout``); the publisher is not used afterwards."""
        self._producer.flush(timeout)


@dataclass
class MemoryPublisher:
    """A fake :class:`EventPublisher` that records ``(topic, key, value, headers)`` with the encoded bytes.

    ``fail_topics``: records to these topics fail their delivery (flush raises SinkError).
    """

    records: list[tuple[str, bytes | None, bytes, dict[str, bytes]]] = field(default_factory=list)
    fail_topics: set[str] = field(default_factory=set)
    _pending: list[Delivery] = field(default_factory=list)

    def produce(
        self, topic: str, value: bytes, *, key: str | bytes | None = None, headers: Headers | None = None
    ) -> Delivery:
        key_bytes = key.encode() if isinstance(key, str) else key
        delivery = Delivery(topic=topic, key=key_bytes)
        self._pending.append(delivery)
        if topic in self.fail_topics:
            delivery.done, delivery.error = True, "simulated delivery failure"
        else:
            hdrs = {k: v.encode() if isinstance(v, str) else v for k, v in (headers or {}).items()}
            delivery.done, delivery.partition, delivery.offset = True, 0, len(self.records)
            self.records.append((topic, key_bytes, value, hdrs))
        return delivery

    def flush(self, timeout: float = 30.0) -> None:
        pending, self._pending = self._pending, []
        failed = [d for d in pending if d.error is not None]
        if failed:
            raise SinkError(f"{len(failed)} of {len(pending)} records failed delivery: {failed[0].error}")

    def close(self, timeout: float = 10.0) -> None:
        self.flush(timeout)


class BatchProducerPublisher:
    """Adapts a :class:`~producers.batch.BatchProducer` (the hot-path producer, which reports failures
    per flush, not per record) to :class:`EventPublisher`. After a successful flush every handle is ok;
    after a failed one none is (the caller must treat the whole batch as not delivered)."""

    def __init__(self, producer: BatchProducer) -> None:
        self._producer = producer
        self._pending: list[Delivery] = []

    def produce(
        self, topic: str, value: bytes, *, key: str | bytes | None = None, headers: Headers | None = None
    ) -> Delivery:
        key_bytes = key.encode() if isinstance(key, str) else key
        header_list = [(k, v.encode() if isinstance(v, str) else v) for k, v in (headers or {}).items()]
        self._producer.produce(topic, key_bytes, value, headers=header_list or None)  # type: ignore[arg-type]
        delivery = Delivery(topic=topic, key=key_bytes)
        self._pending.append(delivery)
        return delivery

    def flush(self, timeout: float = 30.0) -> None:
        pending, self._pending = self._pending, []
        try:
            self._producer.flush(timeout)
        except SinkError:
            for delivery in pending:
                delivery.done, delivery.error = True, "batch not acknowledged"
            raise
        for delivery in pending:
            delivery.done = True

    def close(self, timeout: float = 10.0) -> None:
        self._producer.close(timeout)


def as_publisher(producer: EventPublisher | BatchProducer) -> EventPublisher:
    """``producer`` as an :class:`EventPublisher` (a BatchProducer is wrapped; anything else is returned)."""
    if isinstance(producer, BatchProducer):
        return BatchProducerPublisher(producer)
    return producer
