"""The hot-path Kafka producer: confluent-kafka, idempotent, produce many then check them all at once.

Guarantee: :meth:`BatchProducer.flush` returns only when every record produced since the last flush was
acknowledged by the broker (acks=all, idempotence on, so no duplicates from producer retries), and raises
:class:`~campaigns.errors.SinkError` if any was not. Callers flush *before* they commit the work the
records stand for (a database checkpoint, a consumer offset), never per record.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from campaigns.errors import SinkError
from campaigns.settings import KafkaSettings

Headers = Sequence[tuple[str, bytes]] | None


class BatchProducer:
    def __init__(self, kafka: KafkaSettings, **overrides: Any) -> None:
        conf = kafka.as_librdkafka(
            **{
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 5,
                "batch.num.messages": 10_000,
                "queue.buffering.max.messages": 500_000,
                "compression.type": "lz4",
                **overrides,
            }
        )
        self._producer = Producer(conf)
        self._failures: list[str] = []
        self.produced = 0

    def _on_delivery(self, error: KafkaError | None, message: Message) -> None:
        if error is not None:
            self._failures.append(f"{message.topic()}: {error.str()}")

    def produce(self, topic: str, key: str | bytes, value: bytes, headers: Headers = None) -> None:
        while True:
            try:
                self._producer.produce(topic, value, key, on_delivery=self._on_delivery, headers=headers)
                break
            except BufferError:
                # The local queue is full: let librdkafka drain it (bounded by its own timeouts).
                self._producer.poll(0.05)
            except KafkaException as exc:
                raise SinkError(f"cannot produce to {topic}: {exc}") from exc
        self.produced += 1

    def poll(self) -> None:
        """Serve delivery callbacks without waiting (call now and then during long batches)."""
        self._producer.poll(0)

    def flush(self, timeout: float = 60.0) -> None:
        remaining = self._producer.flush(timeout)
        failures, self._failures = self._failures, []
        if remaining:
            raise SinkError(f"{remaining} records not acknowledged by Kafka within {timeout}s")
        if failures:
            raise SinkError(f"{len(failures)} records failed: {failures[:3]}")

    def close(self, timeout: float = 10.0) -> None:
        self._producer.flush(timeout)
