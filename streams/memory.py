"""An in-memory consumer: the fake of :class:`streams.runtime.ConsumerPort` for unit tests of stage logic.

It behaves like one member of a consumer group that owns every partition of the topics it subscribes to:
records come back in offset order per partition, ``seek`` moves a position, paused partitions give nothing,
``commit`` stores offsets (and can be told to fail), ``close`` is recorded. Records are real confluent-kafka
``Message`` objects, so the stages read them exactly as they read the broker's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, TopicPartition

Partition = tuple[str, int]


@dataclass
class MemoryConsumer:
    """Records per (topic, partition); ``commit_fails`` makes commits raise like a lost partition would."""

    log: dict[Partition, list[Message]] = field(default_factory=dict)
    positions: dict[Partition, int] = field(default_factory=dict)
    committed: dict[Partition, int] = field(default_factory=dict)
    paused: set[Partition] = field(default_factory=set)
    subscribed: list[str] = field(default_factory=list)
    commit_fails: bool = False
    closed: bool = False
    commits: int = 0
    on_assign: Callable[..., Any] | None = None
    on_revoke: Callable[..., Any] | None = None

    def add(self, topic: str, value: bytes | None, *, key: bytes | None = None, partition: int = 0,
            timestamp_ms: int = 0, headers: list[tuple[str, bytes | None]] | None = None) -> Message:
        """Append a record to ``topic[partition]`` and return it (with its offset)."""
        records = self.log.setdefault((topic, partition), [])
        msg = Message(topic=topic, partition=partition, offset=len(records), key=key, value=value,
                      headers=headers, timestamp=(1, timestamp_ms))  # 1: TIMESTAMP_CREATE_TIME
        records.append(msg)
        return msg

    # --- ConsumerPort -----------------------------------------------------------------------------

    def subscribe(self, topics: list[str], on_assign: Any = None, on_revoke: Any = None) -> None:
        self._open()
        self.subscribed = list(topics)
        self.on_assign, self.on_revoke = on_assign, on_revoke
        assigned = [TopicPartition(t, p) for (t, p) in sorted(self.log) if t in topics]
        for tp in assigned:
            self.positions.setdefault((tp.topic, tp.partition), self.committed.get((tp.topic, tp.partition), 0))
        if on_assign is not None:
            on_assign(self, assigned)

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[Message]:
        """Up to ``num_messages`` records, partition by partition, each in offset order (never waits)."""
        self._open()
        out: list[Message] = []
        for key in sorted(self.log):
            if key[0] not in self.subscribed or key in self.paused:
                continue
            records = self.log[key]
            position = self.positions.setdefault(key, self.committed.get(key, 0))
            take = records[position:position + num_messages - len(out)]
            out += take
            self.positions[key] = position + len(take)
            if len(out) >= num_messages:
                break
        return out

    def poll(self, timeout: float = -1) -> Message | None:
        batch = self.consume(1, timeout)
        return batch[0] if batch else None

    def commit(self, message: Any = None, offsets: Any = None, asynchronous: bool = True) -> Any:
        self._open()
        if self.commit_fails:
            raise KafkaException(KafkaError(KafkaError.ILLEGAL_GENERATION, "simulated: partition moved"))
        for tp in offsets or []:
            self.committed[(tp.topic, tp.partition)] = tp.offset
        self.commits += 1
        return offsets

    def seek(self, partition: TopicPartition) -> None:
        self.positions[(partition.topic, partition.partition)] = partition.offset

    def pause(self, partitions: list[TopicPartition]) -> None:
        self.paused |= {(tp.topic, tp.partition) for tp in partitions}

    def resume(self, partitions: list[TopicPartition]) -> None:
        self.paused -= {(tp.topic, tp.partition) for tp in partitions}

    def position(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        return [TopicPartition(tp.topic, tp.partition, self.positions.get((tp.topic, tp.partition), -1001))
                for tp in partitions]

    def close(self) -> None:
        self.closed = True

    def _open(self) -> None:
        if self.closed:
            raise RuntimeError("the consumer is closed")  # as confluent-kafka: a closed consumer is unusable
