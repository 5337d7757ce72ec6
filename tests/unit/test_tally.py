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
