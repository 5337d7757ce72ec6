"""streams.tally.Counter (the count_outcomes body) over in-memory tables: batched dedup writes, the index
rebuilt from the table after an assignment, a replay counted once, revoked partitions left alone."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from faust.types import TP

from campaigns.codec import get_codec
from campaigns.core.tally import TOTALS, part_key
from streams.tally import Counter, TallyStats

CAMPAIGN = "6f1c2b1e-8a2b-4c55-9a55-0d6a1f1c2b1e"
TOPIC = "delivery.outcomes"


class FakeTable(dict[str, Any]):
    """What Counter uses of a Faust table: get, item assignment and ``data``."""

    @property
    def data(self) -> dict[str, Any]:
        return self


@dataclass
class Message:
    topic: str
    partition: int
    offset: int

    @property
    def tp(self) -> TP:
        return TP(self.topic, self.partition)


@dataclass
class Event:
    message: Message
    value: bytes


def _event(partition: int, offset: int, outcome_id: str, status: str = "SENT") -> Event:
    value = get_codec().encode("DeliveryOutcome", {
        "outcome_id": outcome_id, "message_id": outcome_id, "campaign_id": CAMPAIGN, "recipient_id": "1",
        "channel": "sms", "status": status, "attempt": 1, "latency_ms": 3.0, "failure_reason": None,
        "provider_message_id": None, "occurred_at": datetime(2026, 11, 30, 6, 0, 30, tzinfo=UTC)})
    return Event(Message(TOPIC, partition, offset), value)


def _counter(counted: FakeTable, parts: FakeTable, owned: set[TP] | None = None) -> Counter:
    return Counter(counted, parts, 60, get_codec(), TallyStats(),  # type: ignore[arg-type]
                   assigned=(lambda: owned) if owned is not None else None)


def _sent(parts: FakeTable, partition: int) -> int:
    return int(parts[part_key(CAMPAIGN, TOTALS, partition)]["sent"])


def test_one_dedup_write_per_partition_per_batch_and_duplicates_dropped():
    counted, parts = FakeTable(), FakeTable()
    counter = _counter(counted, parts)
    sent = counter.apply([_event(0, i, f"o{i}") for i in range(5)] + [_event(1, 0, "p0"), _event(0, 5, "o1")])
    assert sorted(counted) == ["0|0", "1|0"] and len(counted["0|0"]) == 5
    assert _sent(parts, 0) == 5 and _sent(parts, 1) == 1
    assert counter.stats.duplicates == 1
    window = int(datetime(2026, 11, 30, 6, 0, tzinfo=UTC).timestamp() * 1000)
    assert {(p["partition"], p["window_start_ms"]) for p in sent} == {(0, TOTALS), (1, TOTALS), (0, window),
                                                                      (1, window)}


def test_after_a_restart_the_index_comes_from_the_table_and_a_replay_counts_nothing():
    counted, parts = FakeTable(), FakeTable()
    _counter(counted, parts).apply([_event(0, i, f"o{i}") for i in range(10)])
    # A new process: the tables recovered, the index empty until the first batch.
    restarted = _counter(counted, parts)
    restarted.apply([_event(0, 10 + i, f"o{i}") for i in range(10)] + [_event(0, 20, "new")])
    assert _sent(parts, 0) == 11 and restarted.stats.duplicates == 10
    # Re-delivery of what is already counted (offsets at or below the parts' src): nothing changes.
    restarted.apply([_event(0, i, f"o{i}") for i in range(10)])
    assert _sent(parts, 0) == 11


def test_an_assignment_rebuilds_the_index_from_what_another_owner_wrote():
    counted, parts = FakeTable(), FakeTable()
    mine = _counter(counted, parts)
    mine.apply([_event(0, 0, "a")])
    _counter(counted, parts).apply([_event(0, 1, "b")])  # another owner of partition 0 meanwhile
    mine.generation += 1  # the partitions were assigned again
    mine.apply([_event(0, 2, "b")])  # b re-emitted: a duplicate
    assert _sent(parts, 0) == 2


def test_events_of_revoked_partitions_are_left_to_the_new_owner():
    counted, parts = FakeTable(), FakeTable()
    counter = _counter(counted, parts, owned={TP(TOPIC, 1)})
    counter.apply([_event(0, 0, "a"), _event(1, 0, "b")])
    assert counter.stats.revoked == 1 and sorted(counted) == ["1|0"]


class FakeFaustConsumer:
    """The parts of Faust's consumer that InOrder touches, with Faust's own bookkeeping of acks and gaps."""

    def __init__(self, committed: dict[TP, int], earliest: int = 0) -> None:
        from collections import defaultdict

        self._committed_offset: dict[TP, int] = dict(committed)
        self._gap: dict[TP, object] = {}
        self._acked: defaultdict[TP, list[int]] = defaultdict(list)
        self._acked_index: defaultdict[TP, set[int]] = defaultdict(set)
        self.seeks: list[tuple[TP, int]] = []
        self.earliest = earliest

    def ack(self, message: Message) -> None:  # as Consumer.ack: once per offset
        if message.offset not in self._acked_index[message.tp]:
            self._acked_index[message.tp].add(message.offset)
            self._acked[message.tp].append(message.offset)

    async def earliest_offsets(self, *tps: TP) -> dict[TP, int]:
        return dict.fromkeys(tps, self.earliest)

    async def seek(self, tp: TP, offset: int) -> None:
        self.seeks.append((tp, offset))


def _batch(guard, consumer, offsets, partition=0):
    import asyncio

    events = [Event(Message(TOPIC, partition, o), b"") for o in offsets]
    admitted = [e.message.offset for e in guard.admit(events)]
    asyncio.run(guard.rewind())
    for e in events:  # take_events acknowledges the whole batch after the agent's body
        consumer.ack(e.message)
    return admitted


def test_a_jump_after_a_seek_is_held_back_and_read_again_in_order():
    """faust-streaming#216: a record fetched before the seek to the committed offset (108) arrives first."""
    from streams.tally import InOrder

    tp = TP(TOPIC, 0)
    consumer = FakeFaustConsumer({tp: 108})
    consumer._gap[tp] = "108..206 taken for a gap"
    guard = InOrder(lambda: consumer, TallyStats())
    assert _batch(guard, consumer, [206, 207]) == []
    assert consumer.seeks == [(tp, 108)] and tp not in consumer._gap
    # The held records' acknowledgements are retracted before anything else is acknowledged: no commit past 108.
    assert _batch(guard, consumer, range(108, 150)) == list(range(108, 150))
    assert consumer._acked[tp] == list(range(108, 150))
    assert _batch(guard, consumer, range(150, 210)) == list(range(150, 210))
    assert sorted(consumer._acked[tp]) == list(range(108, 210))
    assert guard.expected[tp] == 210 and consumer.seeks == [(tp, 108)]


def test_in_order_records_and_redeliveries_pass_and_an_assignment_starts_from_the_committed_offset():
    from streams.tally import InOrder

    tp = TP(TOPIC, 1)
    consumer = FakeFaustConsumer({tp: 10})
    guard = InOrder(lambda: consumer, TallyStats())
    assert _batch(guard, consumer, [10, 11, 12], partition=1) == [10, 11, 12]
    assert _batch(guard, consumer, [11, 12, 13], partition=1) == [11, 12, 13]  # re-deliveries: the dedup's job
    guard.reset()
    consumer._committed_offset[tp] = 14
    assert _batch(guard, consumer, [14], partition=1) == [14]
    assert consumer.seeks == []


def test_records_deleted_before_they_were_counted_resume_at_the_earliest():
    from streams.tally import InOrder

    tp = TP(TOPIC, 2)
    consumer = FakeFaustConsumer({tp: 5}, earliest=50)
    guard = InOrder(lambda: consumer, TallyStats())
    assert _batch(guard, consumer, [50], partition=2) == []
    assert consumer.seeks == [(tp, 50)]
    assert _batch(guard, consumer, [50, 51], partition=2) == [50, 51]


def test_the_faust_internals_in_order_relies_on_are_still_there():
    """InOrder works on faust-streaming's private consumer state (pinned version): fail here if it moves."""
    import inspect

    from faust.transport.consumer import Consumer
    from faust.transport.drivers.aiokafka import Consumer as AIOKafkaConsumer

    source = inspect.getsource(Consumer)
    for name in ("self._gap =", "self._acked =", "self._acked_index =", "self._committed_offset =",
                 "await self._add_gap(tp, r_offset + 1, offset)"):
        assert name in source, name
    assert issubclass(AIOKafkaConsumer, Consumer)
    assert inspect.iscoroutinefunction(AIOKafkaConsumer.seek)
    assert inspect.iscoroutinefunction(AIOKafkaConsumer.earliest_offsets)
