"""The one dead-letter writer: what the senders put on ``campaign.messages.dlq`` and the command consumer on
``campaign.commands.rejected`` (both ``DeadLetter`` records).

Guarantees:

* **Deterministic id.** ``dead_letter_id`` is a uuid5 of the source coordinates (topic, partition, offset)
  and the reason, so a batch redone after a crash re-publishes the same dead letter with the same id and a
  reader can de-duplicate.
* **Always fits.** The original bytes are kept unless the record would exceed the producer's
  ``message.max.bytes`` (librdkafka's default 1,000,000): then the detail says so and the source
  coordinates point at them. ``detail`` is capped at :data:`DETAIL_MAX_CHARS`. A dead letter can therefore
  always be written, and the partition it came from keeps flowing.
* **Reasons are codes** (``undecodable``, ``invalid_record``, ``permanent_failure``, ...); the detail is for
  people and never replaces the code.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from confluent_kafka import Message

from campaigns.codec import Codec, get_codec
from producers.kafka import Delivery, Publisher

DEAD_LETTER_RECORD = "DeadLetter"
ORIGINAL_MAX_BYTES = 990_000
DETAIL_MAX_CHARS = 4_000
DEAD_LETTER_NAMESPACE = uuid.UUID("3f0b3a52-0c55-5a8e-9a43-3f6c1f0c2d11")
"""Namespace of ``dead_letter_id``: uuid5 of ``topic:partition:offset:reason``."""


def dead_letter_id(topic: str, partition: int, offset: int, reason: str) -> str:
    return str(uuid.uuid5(DEAD_LETTER_NAMESPACE, f"{topic}:{partition}:{offset}:{reason}"))


class DeadLetters:
    """Writes ``DeadLetter`` records for consumed messages to one topic, through the stage's producer."""

    def __init__(self, producer: Publisher, topic: str, clock: Callable[[], float],
                 codec: Codec | None = None) -> None:
        self._producer = producer
        self._topic = topic
        self._clock = clock  # epoch seconds
        self._codec = codec or get_codec()

    def write(
        self, msg: Message, reason: str, detail: str | None, *, message_id: str | None = None,
        campaign_id: str | None = None, recipient_id: str | None = None, channel: str | None = None,
        attempts: int = 0, key: bytes | None = None, headers: dict[str, str] | None = None,
    ) -> Delivery:
        """The dead letter of ``msg``; a tracked delivery (the caller flushes with its batch)."""
        original, detail = msg.value(), detail or ""
        if original is not None and len(original) > ORIGINAL_MAX_BYTES:
            detail = f"original value of {len(original)} bytes not copied (too large); {detail}"
            original = None
        record: dict[str, Any] = {
            "dead_letter_id": dead_letter_id(msg.topic(), msg.partition(), msg.offset(), reason),
            "message_id": message_id, "campaign_id": campaign_id, "recipient_id": recipient_id,
            "channel": channel, "source_topic": msg.topic(), "source_partition": msg.partition(),
            "source_offset": msg.offset(), "reason": reason, "detail": detail[:DETAIL_MAX_CHARS],
            "attempts": attempts, "failed_at": int(self._clock() * 1000), "original_value": original,
        }
        return self._producer.produce_tracked(
            self._topic, key if key is not None else msg.key(), self._codec.encode(DEAD_LETTER_RECORD, record),
            headers={"reason": reason, **(headers or {})},
        )
