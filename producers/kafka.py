"""The project's one Kafka producer (confluent-kafka) and its in-memory fake.

Guarantees of :class:`KafkaProducer`:

* One configuration (:func:`producer_config`): idempotent (``enable.idempotence=true``, ``acks=all``), so a
  broker-side retry never duplicates or reorders records of one partition and records produced in order with
  the same key land in order; lz4 batches; bounded ``delivery.timeout.ms``, so a broker that never answers
  becomes a failed delivery, not a hang.
* :meth:`~KafkaProducer.flush` returns only when every record produced since the previous flush is
  acknowledged, and raises :class:`~campaigns.errors.DeliveryFailed` if any was not. Callers flush *before*
  they commit the work the records stand for (a database checkpoint, a consumer offset), never per record.
* Two ways to produce: :meth:`~KafkaProducer.produce` for the hot path (no per-record bookkeeping), and
  :meth:`~KafkaProducer.produce_tracked`, which returns a :class:`Delivery` handle, for a caller that must
  know *which* records made it (the outbox relay marks exactly those).
* A full local queue makes ``produce`` serve delivery reports until there is room (never drops a record).
* Nothing is sent or connected at import; a producer is built where the process (or stage) starts. One
  producer belongs to one thread.

:class:`MemoryProducer` is the fake for unit tests: it keeps the encoded bytes it was given (so schema drift
still fails tests) and can be told to fail deliveries to given topics.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from campaigns.errors import DeliveryFailed, SinkError
from campaigns.settings import KafkaSettings

Headers = Mapping[str, bytes | str] | Sequence[tuple[str, bytes | str | None]]


@dataclass
class Delivery:
    """The fate of one tracked record, filled in by its delivery report (during poll/flush).

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


class Publisher(Protocol):
    """The port the stages and producers use: queue records, then wait for all of them (per-key order)."""

    def produce(self, topic: str, key: str | bytes | None, value: bytes, headers: Headers | None = None,
                partition: int | None = None) -> None: ...

    def produce_tracked(
        self, topic: str, key: str | bytes | None, value: bytes, headers: Headers | None = None
    ) -> Delivery: ...

    def poll(self, timeout: float = 0.0) -> None: ...

    def flush(self, timeout: float = 30.0) -> None: ...

    def close(self, timeout: float = 10.0) -> None: ...


def producer_config(kafka: KafkaSettings, **overrides: Any) -> dict[str, Any]:
    """librdkafka settings of every producer of the project (``overrides`` win)."""
    return kafka.as_librdkafka(
        **{
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "compression.type": "lz4",
            "batch.num.messages": 10_000,
            "queue.buffering.max.messages": 500_000,
            "delivery.timeout.ms": 30_000,
            **overrides,
        }
    )


def _key_bytes(key: str | bytes | None) -> bytes | None:
    return key.encode() if isinstance(key, str) else key


def _header_list(headers: Headers | None) -> list[tuple[str, bytes | None]] | None:
    if not headers:
        return None
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    return [(k, v.encode() if isinstance(v, str) else v) for k, v in pairs]


class KafkaProducer:
    """:class:`Publisher` over one confluent-kafka ``Producer``; see the module guarantees."""

    def __init__(self, kafka: KafkaSettings, **overrides: Any) -> None:
        self._producer = Producer(producer_config(kafka, **overrides))
        self._failures: list[str] = []  # hot-path records whose delivery failed since the last flush
        self._tracked: list[Delivery] = []
        self.produced = 0

    def _on_delivery(self, error: KafkaError | None, message: Message) -> None:
        if error is not None:
            self._failures.append(f"{message.topic()}: {error.str()}")

    def produce(self, topic: str, key: str | bytes | None, value: bytes, headers: Headers | None = None,
                partition: int | None = None) -> None:
        """Queue one record (the hot path): its failure, if any, is reported by the next :meth:`flush`.
        ``partition``: written there, not where the key's hash puts it."""
        self._produce(topic, _key_bytes(key), value, _header_list(headers), self._on_delivery, partition)

    def produce_tracked(
        self, topic: str, key: str | bytes | None, value: bytes, headers: Headers | None = None
    ) -> Delivery:
        """Queue one record and return its :class:`Delivery` handle (filled in by a later poll/flush)."""
        delivery = Delivery(topic=topic, key=_key_bytes(key))

        def report(error: KafkaError | None, message: Message) -> None:
            delivery.done = True
            if error is not None:
                delivery.error = error.str()
            else:
                delivery.partition = message.partition()
                delivery.offset = message.offset()

        self._produce(topic, delivery.key, value, _header_list(headers), report)
        self._tracked.append(delivery)
        return delivery

    def _produce(self, topic: str, key: bytes | None, value: bytes, headers: Any, report: Any,
                 partition: int | None = None) -> None:
        where = {} if partition is None else {"partition": partition}
        while True:
            try:
                self._producer.produce(topic, value, key, on_delivery=report, headers=headers, **where)
                break
            except BufferError:  # the local queue is full: let librdkafka drain it (bounded by its timeouts)
                self._producer.poll(0.05)
            except KafkaException as exc:
                raise SinkError(f"cannot produce to {topic}: {exc}") from exc
        self.produced += 1

    def poll(self, timeout: float = 0.0) -> None:
        """Serve delivery reports (call now and then during long batches)."""
        self._producer.poll(timeout)

    def flush(self, timeout: float = 30.0) -> None:
        """Wait for every record produced since the last flush; :class:`DeliveryFailed` if any was not
        acknowledged (failed, or still queued at the timeout)."""
        remaining = self._producer.flush(timeout)
        failures, self._failures = self._failures, []
        tracked, self._tracked = self._tracked, []
        failures += [f"{d.topic}: {d.error}" for d in tracked if d.done and d.error is not None]
        if remaining or any(not d.done for d in tracked):
            raise DeliveryFailed(f"{remaining} records not acknowledged by Kafka within {timeout}s "
                                 f"({len(failures)} failed); is the broker reachable? they will be retried")
        if failures:
            raise DeliveryFailed(f"{len(failures)} records failed delivery: {'; '.join(failures[:3])}")

    def close(self, timeout: float = 10.0) -> None:
        """Deliver what is queued (bounded by ``timeout``); the producer is not used afterwards."""
        self._producer.flush(timeout)


@dataclass
class MemoryProducer:
    """A fake :class:`Publisher` that records ``(topic, key, value, headers)`` with the encoded bytes.

    ``fail_topics``: records to these topics fail their delivery (flush raises DeliveryFailed).
    """

    records: list[tuple[str, bytes | None, bytes, dict[str, bytes | None]]] = field(default_factory=list)
    fail_topics: set[str] = field(default_factory=set)
    partitions: dict[int, int] = field(default_factory=dict)  # index in ``records`` -> the partition asked for
    _pending: list[Delivery] = field(default_factory=list)

    def produce(self, topic: str, key: str | bytes | None, value: bytes, headers: Headers | None = None,
                partition: int | None = None) -> None:
        self.produce_tracked(topic, key, value, headers)
        if partition is not None and topic not in self.fail_topics:
            self.partitions[len(self.records) - 1] = partition

    def produce_tracked(
        self, topic: str, key: str | bytes | None, value: bytes, headers: Headers | None = None
    ) -> Delivery:
        delivery = Delivery(topic=topic, key=_key_bytes(key))
        self._pending.append(delivery)
        if topic in self.fail_topics:
            delivery.done, delivery.error = True, "simulated delivery failure"
        else:
            delivery.done, delivery.partition, delivery.offset = True, 0, len(self.records)
            self.records.append((topic, delivery.key, value, dict(_header_list(headers) or [])))
        return delivery

    def poll(self, timeout: float = 0.0) -> None:
        pass

    def flush(self, timeout: float = 30.0) -> None:
        pending, self._pending = self._pending, []
        failed = [d for d in pending if d.error is not None]
        if failed:
            raise DeliveryFailed(f"{len(failed)} of {len(pending)} records failed delivery: {failed[0].error}")

    def close(self, timeout: float = 10.0) -> None:
        self.flush(timeout)
