"""streams.outcome_batches: the analytics' forwarder on the stage runtime, over the in-memory consumer and producer.
Every record of a source partition reaches the partition of the same number, unchanged and with its offset and
timestamp, in order; a flush holds at most one OutcomeBatch per partition; a failed delivery commits nothing."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from campaigns.codec import get_codec
from campaigns.errors import DeliveryFailed
from producers.kafka import MemoryProducer
from streams.memory import MemoryConsumer
from streams.outcome_batches import MAX_VALUE_BYTES, OutcomeForwarder, chunks, partitions_refused
from streams.runtime import StageRuntime

SOURCE, BATCHED = "delivery.outcomes", "delivery.outcomes.batched"


class FlushCountingProducer(MemoryProducer):
    """Records, per flush, how many OutcomeBatch records of each partition it held."""

    def __init__(self) -> None:
        super().__init__()
        self.per_flush: list[dict[int, int]] = []
        self._since = 0

    def flush(self, timeout: float = 30.0) -> None:
        held: dict[int, int] = {}
        for i in range(self._since, len(self.records)):
            held[self.partitions[i]] = held.get(self.partitions[i], 0) + 1
        self.per_flush.append(held)
        self._since = len(self.records)
        super().flush(timeout)


def _forwarder(consumer: MemoryConsumer, producer: MemoryProducer, batch_size: int = 1000) -> StageRuntime:
    runtime = StageRuntime(name="forwarder", consumer=consumer, producer=producer,
                           stage=OutcomeForwarder(producer, BATCHED, get_codec()), batch_size=batch_size)
    runtime.subscribe([SOURCE])
    return runtime


def _forwarded(producer: MemoryProducer, with_timestamps: bool = False) -> dict[int, list[tuple[Any, ...]]]:
    """Per partition written to: the (source offset, value[, timestamp]) of its OutcomeBatch records, in order."""
    out: dict[int, list[tuple[Any, ...]]] = {}
    for i, (topic, key, value, _headers) in enumerate(producer.records):
        assert topic == BATCHED and key is None
        batch = get_codec().decode(value, "OutcomeBatch")
        assert batch["source_partition"] == producer.partitions[i]
        columns = [batch["offsets"], batch["values"]] + ([batch["timestamps"]] if with_timestamps else [])
        out.setdefault(producer.partitions[i], []).extend(zip(*columns, strict=True))
    return out


@given(st.lists(st.tuples(st.integers(0, 3), st.binary(max_size=40), st.integers(0, 2**42)), max_size=60),
       st.integers(1, 25))
def test_every_record_reaches_the_partition_of_its_number_in_order_with_its_offset(records, batch_size):
    consumer, producer = MemoryConsumer(), FlushCountingProducer()
    for partition, value, timestamp in records:
        consumer.add(SOURCE, value, partition=partition, timestamp_ms=timestamp)
    runtime = _forwarder(consumer, producer, batch_size)
    while runtime.run_once():
        pass
    expected: dict[int, list[tuple[int, bytes, int]]] = {}
    for partition, value, timestamp in records:
        expected.setdefault(partition, []).append((len(expected.get(partition, [])), value, timestamp))
    assert _forwarded(producer, with_timestamps=True) == expected
    assert all(n == 1 for held in producer.per_flush for n in held.values())
    assert consumer.committed == {(SOURCE, p): len(v) for p, v in expected.items()}


def test_a_partition_s_values_over_the_batch_limit_go_in_several_records_one_per_flush():
    consumer, producer = MemoryConsumer(), FlushCountingProducer()
    big = b"x" * (200 * 1024)
    for _ in range(5):
        consumer.add(SOURCE, big, partition=0)
    consumer.add(SOURCE, b"small", partition=1)
    _forwarder(consumer, producer).run_once()
    assert [len(v) for v in (_forwarded(producer)[0],)] == [5]
    assert producer.per_flush == [{0: 1, 1: 1}, {0: 1}, {0: 1}]  # 2 + 2 + 1 values of 200 KB
    assert chunks([1, 2, 3], [b"ab", b"cd", b"e"], [10, 20, 30], max_bytes=4) == [
        ([1, 2], [b"ab", b"cd"], [10, 20]), ([3], [b"e"], [30])]
    assert chunks([7], [b"too large alone"], [70], max_bytes=4) == [([7], [b"too large alone"], [70])]


def test_a_record_without_a_value_or_too_large_is_forwarded_empty_at_its_offset():
    consumer, producer = MemoryConsumer(), MemoryProducer()
    consumer.add(SOURCE, None)
    consumer.add(SOURCE, b"y" * (MAX_VALUE_BYTES + 1))
    consumer.add(SOURCE, b"ok")
    runtime = _forwarder(consumer, producer)
    runtime.run_once()
    assert _forwarded(producer) == {0: [(0, b""), (1, b""), (2, b"ok")]}
    assert runtime.stage.emptied == 2  # type: ignore[attr-defined]


def test_a_failed_delivery_commits_nothing_and_the_batch_is_forwarded_again():
    consumer, producer = MemoryConsumer(), MemoryProducer(fail_topics={BATCHED})
    for i in range(3):
        consumer.add(SOURCE, b"v%d" % i, partition=i % 2)
    runtime = _forwarder(consumer, producer)
    with pytest.raises(DeliveryFailed):
        runtime.run_once()
    assert consumer.committed == {}
    producer.fail_topics.clear()
    runtime.run_once()  # rewound by the runtime: the same records again
    assert _forwarded(producer) == {0: [(0, b"v0"), (1, b"v2")], 1: [(0, b"v1")]}


def test_the_batched_topic_needs_at_least_the_source_s_partitions():
    assert partitions_refused(SOURCE, 12, BATCHED, 12) is None
    assert partitions_refused(SOURCE, 12, BATCHED, 24) is None
    refused = partitions_refused(SOURCE, 24, BATCHED, 12)
    assert refused is not None and "give delivery.outcomes.batched 24 partitions" in refused
