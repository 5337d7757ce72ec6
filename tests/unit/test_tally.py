"""streams.tally.Counter (the count_outcomes body) over in-memory tables: batched dedup writes, the index
rebuilt from the table after an assignment, a replay counted once. streams.tally.InOrder on faust-streaming's own
acknowledgement bookkeeping: what Faust would commit never passes a record that was not counted (a jump, a
partition nobody committed, a revocation, a revoked partition's records)."""

from __future__ import annotations

import asyncio
import copy
import json
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any
from weakref import WeakSet

import pytest
from faust.transport.consumer import Consumer
from faust.types import TP
from faust.types.tuples import Message as FaustMessage
from hypothesis import given, settings
from hypothesis import strategies as st
from intervaltree import IntervalTree

from campaigns.codec import get_codec
from campaigns.core.tally import COPY_SPREAD_MS, DISORDER_MS, TOTALS, part_key
from streams.dedup import outcome_digest, pack_batch, unpack_batch
from streams.tally import Counter, TallyStats

READ_LOOP_SHA = "44a2500309e83c63"  # faust-streaming 0.15.3's Consumer._drain_messages

CAMPAIGN = "6f1c2b1e-8a2b-4c55-9a55-0d6a1f1c2b1e"
TOPIC = "delivery.outcomes.batched"


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


OCCURRED = datetime(2026, 11, 30, 6, 0, 30, tzinfo=UTC)
OCCURRED_MS = int(OCCURRED.timestamp() * 1000)
HOUR_MS = 3_600_000


def _outcome(outcome_id: str, status: str = "SENT", occurred_ms: int = OCCURRED_MS) -> bytes:
    return get_codec().encode("DeliveryOutcome", {
        "outcome_id": outcome_id, "message_id": outcome_id, "campaign_id": CAMPAIGN, "recipient_id": "1",
        "channel": "sms", "status": status, "attempt": 1, "latency_ms": 3.0, "failure_reason": None,
        "provider_message_id": None, "occurred_at": occurred_ms})


def _forwarded(partition: int, offset: int, outcomes: list[tuple[int, bytes]],
               source_partition: int | None = None, timestamps: list[int] | None = None) -> Event:
    """An OutcomeBatch at ``offset`` of the batched topic's ``partition``: ``outcomes`` as (source offset, value),
    the records' ``timestamps`` if given (else none: as an older forwarder wrote them)."""
    value = get_codec().encode("OutcomeBatch", {
        "source_partition": partition if source_partition is None else source_partition,
        "offsets": [o for o, _ in outcomes], "values": [v for _, v in outcomes], "timestamps": timestamps or []})
    return Event(Message(TOPIC, partition, offset), value)


def _event(partition: int, offset: int, outcome_id: str, status: str = "SENT") -> Event:
    """One outcome forwarded alone, its source offset the batch's own offset."""
    return _forwarded(partition, offset, [(offset, _outcome(outcome_id, status))])


def _counter(counted: FakeTable, parts: FakeTable, owned: set[TP] | None = None) -> Counter:
    return Counter(counted, parts, 60, get_codec(), TallyStats(),  # type: ignore[arg-type]
                   assigned=(lambda: owned) if owned is not None else None)


def _apply(counter: Counter, events: list[Event]) -> list[dict[str, Any]]:
    """The agent's body: every outcome of ``events`` backed by its recipient-log row (``sent`` after 1 attempt)."""
    outcomes = counter.decode_batch(events)  # type: ignore[arg-type]
    rows = dict.fromkeys(counter.log_keys(outcomes.values()), ("sent", 1))
    return counter.apply(events, outcomes, rows)  # type: ignore[arg-type]


def _sent(parts: FakeTable, partition: int) -> int:
    return int(parts[part_key(CAMPAIGN, TOTALS, partition)]["sent"])


def _sent_in_windows(parts: FakeTable, partition: int) -> int:
    """The sends counted in the partition's window parts (each outcome is in its window's and in the totals)."""
    return sum(int(part["sent"]) for key, part in parts.items()
               if key.endswith(f"|{partition}") and key != part_key(CAMPAIGN, TOTALS, partition))


def test_one_dedup_write_per_partition_per_batch_and_duplicates_dropped():
    counted, parts = FakeTable(), FakeTable()
    counter = _counter(counted, parts)
    sent = _apply(counter, [_event(0, i, f"o{i}") for i in range(5)] + [_event(1, 0, "p0"), _event(0, 5, "o1")])
    assert sorted(counted) == ["0|0", "1|0"] and len(unpack_batch(counted["0|0"], 0)[1]) == 5
    assert _sent(parts, 0) == 5 and _sent(parts, 1) == 1
    assert counter.stats.duplicates == 1
    window = int(datetime(2026, 11, 30, 6, 0, tzinfo=UTC).timestamp() * 1000)
    assert {(p["partition"], p["window_start_ms"]) for p in sent} == {(0, TOTALS), (1, TOTALS), (0, window),
                                                                      (1, window)}


def test_after_a_restart_the_index_comes_from_the_table_and_a_replay_counts_nothing():
    counted, parts = FakeTable(), FakeTable()
    _apply(_counter(counted, parts), [_event(0, i, f"o{i}") for i in range(10)])
    # A new process: the tables recovered, the index empty until the first batch.
    restarted = _counter(counted, parts)
    _apply(restarted, [_event(0, 10 + i, f"o{i}") for i in range(10)] + [_event(0, 20, "new")])
    assert _sent(parts, 0) == 11 and restarted.stats.duplicates == 10
    # Re-delivery of what is already counted (offsets at or below the parts' src): nothing changes.
    _apply(restarted, [_event(0, i, f"o{i}") for i in range(10)])
    assert _sent(parts, 0) == 11


def test_an_assignment_rebuilds_the_index_from_what_another_owner_wrote():
    counted, parts = FakeTable(), FakeTable()
    mine = _counter(counted, parts)
    _apply(mine, [_event(0, 0, "a")])
    _apply(_counter(counted, parts), [_event(0, 1, "b")])  # another owner of partition 0 meanwhile
    mine.generation += 1  # the partitions were assigned again
    _apply(mine, [_event(0, 2, "b")])  # b re-emitted: a duplicate
    assert _sent(parts, 0) == 2


def test_a_rebuild_hands_the_event_loop_back_and_starts_again_if_the_partitions_move_meanwhile(monkeypatch):
    """Millions of ids after an hour: the rebuild must not hold the loop (it runs the consumer's heartbeats)."""
    import streams.tally

    monkeypatch.setattr(streams.tally, "REINDEX_STEP", 25)
    counted, parts = FakeTable(), FakeTable()
    first = _counter(counted, parts)
    for i in range(50):  # 50 dedup entries of 10 ids each
        _apply(first, [_forwarded(0, i, [(i * 10 + j, _outcome(f"o{i}-{j}")) for j in range(10)])])
    restarted = _counter(counted, parts)
    another_owner = _counter(counted, parts)

    async def rebuild() -> int:
        turns = 0

        async def meanwhile() -> None:
            nonlocal turns
            while True:
                turns += 1
                if turns == 3:  # the partitions move, and another owner's write is recovered
                    _apply(another_owner, [_forwarded(0, 50, [(1000, _outcome("theirs"))])])
                    restarted.generation += 1
                await asyncio.sleep(0)

        task = asyncio.create_task(meanwhile())
        await restarted.reindex(TOPIC)
        task.cancel()
        return turns

    assert asyncio.run(rebuild()) >= 15  # 501 ids, a yield every third entry (30 ids): the loop ran in between
    assert restarted.indexed == restarted.generation and len(restarted.index) == 501 and "theirs" in restarted.index
    _apply(restarted, [_forwarded(0, 51, [(1001, _outcome("theirs")), (1002, _outcome("o3-3"))])])
    assert restarted.stats.duplicates == 2 and _sent(parts, 0) == 501


def test_outcomes_of_a_batch_count_at_their_source_offsets_and_a_batch_forwarded_again_counts_nothing():
    counted, parts = FakeTable(), FakeTable()
    counter = _counter(counted, parts)
    first = [(100 + i, _outcome(f"o{i}")) for i in range(6)]
    _apply(counter, [_forwarded(0, 0, first)])
    assert _sent(parts, 0) == 6 and parts[part_key(CAMPAIGN, TOTALS, 0)]["src"] == 105
    assert counted["0|100"] == pack_batch(OCCURRED_MS, [outcome_digest(f"o{i}") for i in range(6)],
                                          [100 + i for i in range(6)])  # each id at its source offset
    # The forwarder crashed before its commit and forwarded from source offset 103 again, then went on.
    again = [(100 + i, _outcome(f"o{i}")) for i in range(3, 9)]
    _apply(counter, [_forwarded(0, 1, again)])
    assert _sent(parts, 0) == 9 and counter.stats.duplicates == 0  # 103..105 skipped by src, 106..108 counted
    assert counter.stats.records == 12


def test_a_batch_not_of_its_own_partition_or_not_a_batch_is_skipped_and_a_bad_value_in_a_batch_alone():
    counter = _counter(FakeTable(), parts := FakeTable())
    misrouted = _forwarded(1, 0, [(0, _outcome("x"))], source_partition=0)
    garbage = Event(Message(TOPIC, 0, 0), b"\x00not a batch")
    mixed = _forwarded(0, 1, [(7, b"\xc3\x01junk"), (8, b""), (9, _outcome("good"))])
    _apply(counter, [misrouted, garbage, mixed])
    assert counter.stats.skipped == 4 and counter.stats.counted == 1 and _sent(parts, 0) == 1
    assert part_key(CAMPAIGN, TOTALS, 1) not in parts


class FaustBookkeeping:
    """The consumer state InOrder touches, run by faust-streaming's own ``Consumer.ack`` and ``Consumer._new_offset``
    (the offset Faust's next commit of a partition would be), so the tests check what Faust would commit."""

    ack = Consumer.ack
    _new_offset = Consumer._new_offset

    def __init__(self, committed: dict[TP, int], earliest: int = 0, *, known: bool = True) -> None:
        self.app = SimpleNamespace(topics=SimpleNamespace(acks_enabled_for=lambda topic: True))
        self.broker = dict(committed)  # the group's committed offsets
        # What the consumer knows of them: Faust fills it in after a rebalance (perform_seek), maybe not yet.
        self._committed_offset: defaultdict[TP, int | None] = defaultdict(lambda: None, committed if known else {})
        self._gap: defaultdict[TP, IntervalTree] = defaultdict(IntervalTree)
        self._acked: defaultdict[TP, list[int]] = defaultdict(list)
        self._acked_index: defaultdict[TP, set[int]] = defaultdict(set)
        self._unacked_messages: WeakSet[FaustMessage] = WeakSet()
        self._n_acked = 0
        self._waiting_for_ack = None
        self.seeks: list[tuple[TP, int]] = []
        self.earliest = earliest
        self.highwaters: dict[TP, int] = {}

    async def earliest_offsets(self, *tps: TP) -> dict[TP, int]:
        return dict.fromkeys(tps, self.earliest)

    def highwater(self, tp: TP) -> int | None:  # the log end offset, as the last fetch response said
        return self.highwaters.get(tp)

    async def seek_wait(self, partitions: dict[TP, int]) -> None:
        self.seeks.extend(partitions.items())

    async def perform_seek(self) -> None:  # as Consumer.perform_seek: learns (and seeks to) the committed offsets
        self._committed_offset.update(self.broker)
        self.seeks.extend(self.broker.items())

    def commit(self, tp: TP) -> int | None:
        """Faust's commit of ``tp``, as ``Consumer._filter_committable_offsets`` and ``_commit_offsets`` do it."""
        offset = self._new_offset(tp)
        committed = self._committed_offset[tp]
        if offset is not None and (committed is None or offset > committed):
            self._committed_offset[tp] = self.broker[tp] = offset
            return offset
        return None

    def revoke(self, tp: TP) -> None:
        """What ``Consumer.on_partitions_revoked`` forgets before the app waits for the buffered events."""
        for state in (self._gap, self._acked, self._acked_index, self._committed_offset):
            state.pop(tp, None)


def _message(partition: int, offset: int) -> FaustMessage:
    return FaustMessage(TOPIC, partition, offset, 0.0, 0, None, None, b"", None)


def _batch(guard, consumer, offsets, partition=0):
    """One take_events batch as count_outcomes runs it: resolve, admit, rewind, then Faust acknowledges every
    event of the batch."""
    events = [Event(_message(partition, o), b"") for o in offsets]  # type: ignore[arg-type]
    asyncio.run(guard.resolve(events))
    admitted = [e.message.offset for e in guard.admit(events)]
    asyncio.run(guard.rewind())
    for e in events:
        consumer.ack(e.message)
    return admitted


def _guard(consumer, owned=None):
    from streams.tally import InOrder

    return InOrder(lambda: consumer, TallyStats(), assigned=(lambda: owned) if owned is not None else None)


def test_a_jump_after_a_seek_is_held_back_and_read_again_in_order():
    """faust-streaming#216: a record fetched before the seek to the committed offset (108) arrives first."""
    tp = TP(TOPIC, 0)
    consumer = FaustBookkeeping({tp: 108})
    guard = _guard(consumer)
    assert _batch(guard, consumer, [206, 207]) == []
    assert consumer.seeks == [(tp, 108)]
    assert consumer._acked[tp] == [] and consumer.commit(tp) is None  # the held records were never acknowledged
    assert _batch(guard, consumer, range(108, 150)) == list(range(108, 150))
    assert consumer.commit(tp) == 150
    assert _batch(guard, consumer, range(150, 210)) == list(range(150, 210))
    assert consumer.commit(tp) == 210
    assert guard.expected[tp] == 210 and consumer.seeks == [(tp, 108)]


def test_a_partition_that_stalls_with_records_left_is_read_again_from_its_next_expected_offset():
    """Faust's read loop dropped the re-read records of a partition (its read offset set past them after a seek)
    and no later record shows the gap: after ``stall_s`` without progress the partition is sought back."""
    tp, other = TP(TOPIC, 0), TP(TOPIC, 1)
    consumer = FaustBookkeeping({tp: 700, other: 0})
    guard = _guard(consumer)
    assert _batch(guard, consumer, range(700, 738)) == list(range(700, 738))
    consumer.highwaters[tp] = 800  # 738..799 exist, none delivered
    asyncio.run(guard.unstick(100.0, stall_s=10.0))  # first look: progress noted, nothing sought
    asyncio.run(guard.unstick(105.0, stall_s=10.0))
    assert consumer.seeks == []
    asyncio.run(guard.unstick(110.0, stall_s=10.0))
    assert consumer.seeks == [(tp, 738)] and guard._stats.unstuck == 1
    assert _batch(guard, consumer, range(738, 800)) == list(range(738, 800))
    asyncio.run(guard.unstick(200.0, stall_s=10.0))  # moved since: no seek
    consumer.highwaters[tp] = 800
    asyncio.run(guard.unstick(300.0, stall_s=10.0))  # all counted (high watermark = next expected): no seek
    assert consumer.seeks == [(tp, 738)]


def test_a_stalled_partition_no_longer_owned_is_left_alone():
    tp = TP(TOPIC, 0)
    consumer = FaustBookkeeping({tp: 0})
    owned = {tp}
    guard = _guard(consumer, owned)
    _batch(guard, consumer, range(0, 5))
    consumer.highwaters[tp] = 50
    asyncio.run(guard.unstick(0.0, stall_s=1.0))
    owned.clear()  # revoked before the stall shows
    asyncio.run(guard.unstick(5.0, stall_s=1.0))
    assert consumer.seeks == []


def test_the_first_records_before_faust_learnt_the_committed_offset_are_read_again_from_it():
    """The stream may resume before Faust's seek to the committed offsets has told the consumer what they are:
    the committed offset is fetched first, and the partition counted from there (not from the first record, not
    from 0)."""
    tp = TP(TOPIC, 0)
    consumer = FaustBookkeeping({tp: 540}, known=False)
    guard = _guard(consumer)
    assert _batch(guard, consumer, range(540, 560)) == list(range(540, 560))
    assert consumer.commit(tp) == 560
    other = FaustBookkeeping({tp: 540}, known=False)
    guard = _guard(other)
    assert _batch(guard, other, range(545, 560)) == []  # 540..544 dropped by Faust: held, read again
    assert other.seeks[-1] == (tp, 540) and other.commit(tp) is None


def test_a_rebalance_during_the_rewind_leaves_the_held_records_to_the_next_one(caplog):
    """aiokafka refuses to fetch committed offsets or seek while it has no assignment: nothing is lost, the held
    records stay unacknowledged and the partition's next record starts the rewind again."""
    from aiokafka.errors import IllegalStateError

    tp = TP(TOPIC, 0)
    consumer = FaustBookkeeping({tp: 540}, known=False)

    async def rebalancing() -> None:
        raise IllegalStateError("No current assignment for partition")

    consumer.perform_seek = rebalancing  # type: ignore[method-assign]
    guard = _guard(consumer)
    assert _batch(guard, consumer, range(540, 560)) == []
    assert "holding their records" in caplog.text and consumer.commit(tp) is None and consumer.seeks == []
    del consumer.perform_seek  # the rebalance is over
    assert _batch(guard, consumer, range(560, 570)) == []  # 540..559 were held: read again from 540
    assert consumer.seeks[-1] == (tp, 540)
    assert _batch(guard, consumer, range(540, 570)) == list(range(540, 570))
    assert consumer.commit(tp) == 570


def test_a_jump_while_partitions_are_revoked_is_not_committed():
    """Faust forgets a revoked partition's committed offset before it commits the events still buffered: an
    acknowledgement of a held record would then be committed with nothing before it to stop it."""
    tp = TP(TOPIC, 0)
    consumer = FaustBookkeeping({tp: 100})
    guard = _guard(consumer)
    assert _batch(guard, consumer, range(100, 120)) == list(range(100, 120))
    consumer.revoke(tp)
    assert _batch(guard, consumer, [150, 151]) == []  # 120..149 dropped by Faust; 150 arrives
    assert consumer.commit(tp) is None


def test_in_order_records_and_redeliveries_pass_and_an_assignment_starts_from_the_committed_offset():
    tp = TP(TOPIC, 1)
    consumer = FaustBookkeeping({tp: 10})
    guard = _guard(consumer)
    assert _batch(guard, consumer, [10, 11, 12], partition=1) == [10, 11, 12]
    assert _batch(guard, consumer, [11, 12, 13], partition=1) == [11, 12, 13]  # re-deliveries: the dedup's job
    guard.reset()
    consumer._committed_offset[tp] = 14
    assert _batch(guard, consumer, [14], partition=1) == [14]
    assert consumer.seeks == [] and consumer.commit(tp) == 15


def test_a_partition_nobody_committed_starts_at_its_first_record_not_the_first_one_seen():
    """Records Faust dropped around a rebalance (seen: 0..548 on a partition without a committed offset) are
    read again from the start, not skipped."""
    tp = TP(TOPIC, 0)
    consumer = FaustBookkeeping({})
    guard = _guard(consumer)
    assert _batch(guard, consumer, range(549, 560)) == []
    assert consumer.seeks == [(tp, 0)] and consumer.commit(tp) is None
    assert _batch(guard, consumer, [*range(549, 560), *range(0, 5)]) == list(range(0, 5))  # stale ones first
    assert consumer.commit(tp) == 5 and consumer.seeks[-1] == (tp, 5)
    assert _batch(guard, consumer, range(5, 560)) == list(range(5, 560))
    assert consumer.commit(tp) == 560


def test_records_deleted_before_they_were_counted_resume_at_the_earliest(caplog):
    tp = TP(TOPIC, 2)
    consumer = FaustBookkeeping({tp: 5}, earliest=50)
    guard = _guard(consumer)
    assert _batch(guard, consumer, [50], partition=2) == []
    assert consumer.seeks == [(tp, 50)] and "deleted before they were counted" in caplog.text
    assert _batch(guard, consumer, [50, 51], partition=2) == [50, 51]
    # Nothing ever committed: starting at the earliest record is no loss, and no error.
    caplog.clear()
    fresh = FaustBookkeeping({}, earliest=50)
    guard = _guard(fresh)
    assert _batch(guard, fresh, [50, 51], partition=2) == [50, 51]
    assert fresh.seeks == [] and "deleted" not in caplog.text and fresh.commit(tp) == 52


def test_events_of_revoked_partitions_are_left_to_the_new_owner_and_never_acknowledged():
    """A record of a partition no longer assigned is not counted here; were it acknowledged, its offset would stay
    in Faust's acknowledged offsets and, once the partition is back (committed below it by the other owner), join
    a run that Faust commits before the record is counted again."""
    tp0, tp1 = TP(TOPIC, 0), TP(TOPIC, 1)
    consumer = FaustBookkeeping({tp0: 100, tp1: 0})
    owned = {tp1}
    guard = _guard(consumer, owned)
    events = [Event(_message(0, o), b"") for o in range(120, 130)] + [Event(_message(1, 0), b"")]
    asyncio.run(guard.resolve(events))
    assert [e.message.tp for e in guard.admit(events)] == [tp1] and guard._stats.revoked == 10
    for e in events:
        consumer.ack(e.message)
    assert consumer._acked[tp0] == []
    # Partition 0 comes back, committed at 100 by its other owner: 100..119 counted, 120.. not yet.
    owned.add(tp0)
    guard.reset()
    assert _batch(guard, consumer, range(100, 120)) == list(range(100, 120))
    assert consumer.commit(tp0) == 120


def test_the_consumer_keeps_no_gaps():
    """Faust would count the offsets between its read offset and a later record as acknowledged; GaplessConsumer
    does not (here the gap a seek back to the committed offset 667 would leave: 668..700 were read already, and
    merging them duplicated their acknowledgements: commits then advanced one offset at a time)."""
    from streams.tally import GaplessConsumer

    tp = TP(TOPIC, 0)
    consumer = FaustBookkeeping({tp: 667})
    asyncio.run(GaplessConsumer._add_gap(consumer, tp, 668, 700))  # type: ignore[arg-type]
    assert not consumer._gap[tp]
    guard = _guard(consumer)
    assert _batch(guard, consumer, range(667, 720)) == list(range(667, 720))
    assert consumer.commit(tp) == 720
    # What Faust's own _add_gap would have done to the same acknowledgements:
    faust = FaustBookkeeping({tp: 667})
    _batch(_guard(faust), faust, range(667, 720))
    asyncio.run(Consumer._add_gap(faust, tp, 668, 700))  # type: ignore[arg-type]
    assert faust.commit(tp) == 669


def test_the_faust_internals_in_order_relies_on_are_still_there():
    """InOrder works on faust-streaming's private consumer state (pinned version): fail here if it moves."""
    import inspect

    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
    from faust.transport.drivers.aiokafka import Consumer as AIOKafkaConsumer

    source = inspect.getsource(Consumer)
    for name in ("self._gap =", "self._acked =", "self._acked_index =", "self._committed_offset =",
                 "self._unacked_messages =", "if not message.acked:", "await self._add_gap(tp, r_offset + 1, offset)",
                 "self._committed_offset.pop(tp, None)"):
        assert name in source, name
    assert issubclass(AIOKafkaConsumer, Consumer)
    for name in ("seek_wait", "perform_seek", "earliest_offsets"):
        assert inspect.iscoroutinefunction(getattr(AIOKafkaConsumer, name)), name
    # seek_wait seeks in aiokafka's thread and resets Faust's read offset (else re-read records are dropped).
    assert "self.consumer._read_offset[tp] = offset" in inspect.getsource(AIOKafkaConsumerThread._seek_wait)


def test_outcomes_no_log_row_backs_are_not_counted_and_do_not_take_a_real_outcome_s_id():
    """A forged FAILED outcome (no row, or a row that says otherwise) is skipped before the dedup: the real outcome
    with the same id, backed by its row, is counted when it comes."""
    counted, parts = FakeTable(), FakeTable()
    counter = _counter(counted, parts)
    forged = [_event(0, 0, "o1", status="FAILED"), _event(0, 1, "o2", status="FAILED")]
    outcomes = counter.decode_batch(forged)  # type: ignore[arg-type]
    rows = {(CAMPAIGN, 1): ("claimed", 0)}  # o1's row is in flight; o2 names the same recipient
    counter.apply(forged, outcomes, rows)  # type: ignore[arg-type]
    assert counter.stats.unbacked == 2 and counter.stats.counted == 0
    real = [_event(0, 2, "o1")]
    _apply(counter, real)
    assert counter.stats.counted == 1 and _sent(parts, 0) == 1
    assert int(parts[part_key(CAMPAIGN, TOTALS, 0)]["failed"]) == 0


def test_a_callback_that_need_not_wait_runs_inline():
    """The read loop's fast path: a callback that never waits finishes in the calling task, no task made."""
    from streams.tally import run_until_suspended

    seen: list[int] = []

    async def deliver(n: int) -> None:
        seen.append(n)

    async def main() -> None:
        tasks_before = len(asyncio.all_tasks())
        assert run_until_suspended(deliver(1)) is None
        assert seen == [1]
        assert len(asyncio.all_tasks()) == tasks_before

    asyncio.run(main())


def test_a_callback_that_waits_is_finished_by_its_awaiter_or_cancelled_by_a_suspension():
    """A callback that has to wait (a full queue, a suspended flow) goes on under Faust's wait_first: its rest,
    awaited in a task, completes with its value; when the suspension wins, cancelling the task cancels it."""
    from streams.tally import run_until_suspended

    async def deliver(gate: asyncio.Event, log: list[str]) -> str:
        log.append("started")
        try:
            await gate.wait()
        except asyncio.CancelledError:
            log.append("cancelled")
            raise
        log.append("finished")
        return "delivered"

    async def main() -> None:
        gate, log = asyncio.Event(), []
        rest = run_until_suspended(deliver(gate, log))
        assert rest is not None and log == ["started"]
        task = asyncio.ensure_future(rest)
        await asyncio.sleep(0)
        gate.set()
        assert await task == "delivered"
        assert log == ["started", "finished"]

        blocked, log2 = asyncio.Event(), []
        rest2 = run_until_suspended(deliver(blocked, log2))
        task2 = asyncio.ensure_future(rest2)
        await asyncio.sleep(0)
        task2.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task2
        assert log2 == ["started", "cancelled"]

    asyncio.run(main())


def test_the_read_loop_the_consumer_replaces_is_still_faust_s():
    """GaplessConsumer._drain_messages is faust-streaming 0.15.3's read loop with an inline fast path: fail here
    if the pinned version's loop changes (then the override must be compared with it again)."""
    import hashlib
    import inspect

    source = inspect.getsource(Consumer._drain_messages)
    assert "callback(message), self.suspend_flow.wait()" in source
    assert hashlib.sha256(source.encode()).hexdigest()[:16] == READ_LOOP_SHA


class _LoopConsumer:
    """What GaplessConsumer._drain_messages uses of Faust's consumer: one fetch of ``records``, then stop."""

    consumer_stopped_errors = ()

    def __init__(self, records: list[tuple[TP, Message]], read_offsets: dict[TP, int], acking: set[str]) -> None:
        self._records = records
        self._read_offset: defaultdict[TP, int | None] = defaultdict(lambda: None, read_offsets)
        self._stopped = asyncio.Event()
        self._commit_every = None
        self._n_acked = 0
        self.should_stop = False
        self.suspend_flow = asyncio.Event()
        self.diag = SimpleNamespace(set_flag=lambda flag: None, unset_flag=lambda flag: None)
        self.app = SimpleNamespace(topics=SimpleNamespace(acks_enabled_for=lambda topic: topic in acking))
        self.handed: list[tuple[str, int]] = []

    async def callback(self, message: Message) -> None:
        self.handed.append((message.topic, message.offset))

    async def getmany(self, timeout: float) -> Any:
        records, self._records = self._records, []
        for tp, message in records:
            yield tp, message
        self._stopped.set()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


def test_the_read_loop_hands_over_every_record_of_a_guarded_topic_and_drops_changelog_records_already_read():
    """A seek back that the read offset did not see (overwritten by the loop, from aiokafka's thread) must not
    make the loop drop the records it went back to: InOrder, not the read offset, orders the acknowledged topics.
    A changelog (no acknowledgements) keeps Faust's rule: a record below the read offset was read already."""
    from streams.tally import GaplessConsumer

    changelog = "campaigns-analytics-part_to_counts-changelog"
    source, log = TP(TOPIC, 0), TP(changelog, 0)
    records = [(source, Message(TOPIC, 0, offset)) for offset in (738, 739, 740)]
    records += [(log, Message(changelog, 0, offset)) for offset in (10, 11, 12)]
    consumer = _LoopConsumer(records, {source: 800, log: 12}, acking={TOPIC})
    fetcher = SimpleNamespace(_stopped=asyncio.Event())
    asyncio.run(GaplessConsumer._drain_messages(consumer, fetcher))  # type: ignore[arg-type]
    assert consumer.handed == [(TOPIC, 738), (TOPIC, 739), (TOPIC, 740), (changelog, 12)]
    assert consumer._read_offset[log] == 12


def test_the_app_feeds_no_monitor_but_keeps_it_for_faust_s_direct_calls():
    """The per-event sensor hooks are off (nothing reads the monitor's figures here); app.monitor still answers
    the calls Faust makes on it directly."""
    from campaigns.settings import KafkaSettings, Settings
    from streams.tally import build_app

    async def main() -> None:
        tally = build_app(Settings(kafka=KafkaSettings(bootstrap_servers="127.0.0.1:1", topic_prefix="unit.")))
        app = tally.app
        app.finalize()
        list(app.on_init_dependencies())
        assert app.monitor not in set(app.sensors)
        app.monitor.track_tp_end_offset(TP(TOPIC, 0), 10)
        assert app.sensors.on_stream_event_in(TP(TOPIC, 0), 0, None, None) == {}  # type: ignore[arg-type]

    asyncio.run(main())


@pytest.mark.parametrize(("key", "value"), [(b"42", b"\x00\x01avro"), (None, None), (b"", b"")])
def test_the_source_schema_gives_the_events_faust_s_raw_serializer_gives(key, value):
    """RawSchema skips Faust's serializer registry per record: the event's key and value are what Faust's
    ``raw`` serializer would have made of the same record (bytes as they are, None and empty kept)."""
    import faust

    from campaigns.settings import KafkaSettings, Settings
    from streams.tally import RawSchema, build_app

    async def main() -> list[tuple[Any, Any]]:
        app = build_app(Settings(kafka=KafkaSettings(bootstrap_servers="127.0.0.1:1", topic_prefix="unit."))).app
        app.finalize()
        message = FaustMessage(TOPIC, 0, 5, 0.0, None, None, key, value, None)
        events = []
        for schema in (RawSchema(key_serializer="raw", value_serializer="raw"),
                       faust.Schema(key_serializer="raw", value_serializer="raw")):
            event = await schema.compile(app)(message)
            events.append((event.key, event.value))
        return events

    ours, fausts = asyncio.run(main())
    assert ours == fausts == (key, value)


# --- allowed lateness: late outcomes are not counted, and the dedup forgets what no copy can count any more ---


class Stream:
    """One source partition read through a Counter the way count_outcomes reads it: one OutcomeBatch event per
    record (its batched offset = its source offset), Faust committing after the batches it is told to."""

    def __init__(self, counted: FakeTable, parts: FakeTable, allowed_lateness_s: float = 3600.0) -> None:
        self.commit = 0  # Faust's committed offset of the batched partition: every batch below it is settled
        self.counter = Counter(counted, parts, 60, get_codec(), TallyStats(),  # type: ignore[arg-type]
                               allowed_lateness_s=allowed_lateness_s, committed=lambda partition: self.commit,
                               clock=lambda: OCCURRED_MS / 1000)

    def read(self, offset: int, outcome_id: str, occurred_ms: int, stamped_ms: int, commit: bool = True) -> None:
        event = _forwarded(0, offset, [(offset, _outcome(outcome_id, occurred_ms=occurred_ms))],
                           timestamps=[stamped_ms])
        _apply(self.counter, [event])
        if commit:
            self.commit = offset + 1


def test_an_outcome_stamped_more_than_the_allowed_lateness_after_it_occurred_is_not_counted():
    counted, parts = FakeTable(), FakeTable()
    stream = Stream(counted, parts)
    stream.read(0, "on time", OCCURRED_MS, OCCURRED_MS + HOUR_MS)  # exactly the allowed lateness: counted
    stream.read(1, "late", OCCURRED_MS, OCCURRED_MS + HOUR_MS + 1)
    assert _sent(parts, 0) == 1 and stream.counter.stats.late == 1 and "late" not in stream.counter.index
    # Batches without timestamps (an older forwarder) judge nothing late.
    _apply(stream.counter, [_forwarded(0, 2, [(2, _outcome("no stamp", occurred_ms=0))])])
    assert _sent(parts, 0) == 2


def test_the_dedup_forgets_a_batch_once_committed_records_are_past_its_outcomes_lateness_and_both_slacks():
    counted, parts = FakeTable(), FakeTable()
    stream = Stream(counted, parts)
    stream.read(0, "a", OCCURRED_MS, OCCURRED_MS)
    horizon = OCCURRED_MS + HOUR_MS + DISORDER_MS + COPY_SPREAD_MS
    stream.read(1, "b", horizon, horizon)  # stamped exactly at a's horizon: a is still remembered
    assert "0|0" in counted and "a" in stream.counter.index
    # A copy of a re-emitted just within the allowed lateness is a duplicate, and moves its parts' src.
    stream.read(2, "a", OCCURRED_MS, OCCURRED_MS + HOUR_MS)
    assert stream.counter.stats.duplicates == 1 and _sent(parts, 0) == 2
    assert parts[part_key(CAMPAIGN, TOTALS, 0)]["src"] == 2
    stream.read(3, "c", horizon + 1, horizon + 1)
    assert "0|0" in counted  # c is not committed yet while its own batch is counted
    stream.read(4, "d", horizon + 1, horizon + 1)
    assert "0|0" not in counted and "a" not in stream.counter.index and stream.counter.stats.forgotten == 1
    assert "0|1" in counted and "b" in stream.counter.index
    # Any copy of a still to come is late: a is never counted twice.
    stream.read(5, "a", OCCURRED_MS, horizon + 2)
    assert stream.counter.stats.late == 1 and _sent(parts, 0) == 4


def test_nothing_is_forgotten_on_the_strength_of_records_not_yet_committed():
    """The records after the committed offset may be read again after a crash, and a duplicate among them must
    still find its id: only committed records' timestamps let the dedup forget."""
    counted, parts = FakeTable(), FakeTable()
    stream = Stream(counted, parts)
    stream.read(0, "a", OCCURRED_MS, OCCURRED_MS)
    committed_parts = copy.deepcopy(parts)
    far = OCCURRED_MS + 10 * HOUR_MS
    stream.read(1, "a", OCCURRED_MS, OCCURRED_MS + 60_000, commit=False)  # a copy of a, not committed
    stream.read(2, "later", far, far, commit=False)
    assert "0|0" in counted and "a" in stream.counter.index
    # The app crashes: the parts' changelog writes since the commit are lost, the dedup's survived.
    parts.clear()
    parts.update(committed_parts)
    restarted = Stream(counted, parts)
    restarted.commit = 1
    restarted.read(1, "a", OCCURRED_MS, OCCURRED_MS + 60_000)
    restarted.read(2, "later", far, far)
    assert _sent(parts, 0) == 2 and restarted.counter.stats.duplicates == 1
    restarted.read(3, "after", far, far)  # now committed past "later": a is forgotten
    assert "0|0" not in counted


def test_a_copy_forwarded_again_after_its_id_was_forgotten_counts_nothing():
    """The forwarder crashed and forwards old records again, after the analytics committed them and forgot their
    ids: each is at or below its parts' src, duplicates included (they moved it), so nothing counts twice."""
    counted, parts = FakeTable(), FakeTable()
    stream = Stream(counted, parts)
    stream.read(0, "a", OCCURRED_MS, OCCURRED_MS)
    stream.read(1, "a", OCCURRED_MS, OCCURRED_MS + 1000)  # a duplicate (a re-emission)
    far = OCCURRED_MS + 10 * HOUR_MS
    stream.read(2, "x", far, far)
    stream.read(3, "y", far, far)
    assert "a" not in stream.counter.index
    again = _forwarded(0, 4, [(0, _outcome("a")), (1, _outcome("a"))], timestamps=[OCCURRED_MS, OCCURRED_MS + 1000])
    _apply(stream.counter, [again])
    assert _sent(parts, 0) == 3 and _sent_in_windows(parts, 0) == 3


def test_dedup_values_written_before_allowed_lateness_are_read_and_forgotten_an_allowed_lateness_after_start():
    counted, parts = FakeTable(), FakeTable()
    counted["0|0"] = json.dumps([["old", 0]]).encode()  # the format before allowed lateness: no time
    stream = Stream(counted, parts)  # its clock says OCCURRED_MS: the old ids count as occurring then
    stream.read(1, "old", OCCURRED_MS, OCCURRED_MS)
    assert stream.counter.stats.duplicates == 1
    horizon = OCCURRED_MS + HOUR_MS + DISORDER_MS + COPY_SPREAD_MS
    stream.read(2, "new", horizon + 1, horizon + 1)
    stream.read(3, "newer", horizon + 1, horizon + 1)
    assert "0|0" not in counted and "old" not in stream.counter.index


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_every_outcome_counts_once_through_re_emissions_crashes_and_forwarder_redos_while_the_dedup_forgets(data):
    """A partition's outcomes, some re-emitted later (a copy with the row's time: late or not, as the gap says),
    read with commits at random points; at random points the app crashes (the parts' writes since the last commit
    lost, the dedup's lost or kept) and restarts from the commit, or the forwarder forwards records already
    committed again. With a short allowed lateness the dedup forgets as it goes. Each outcome counts once."""
    lateness_ms = 10_000
    horizon = lateness_ms + DISORDER_MS + COPY_SPREAD_MS
    source: list[tuple[str, int, int]] = []  # (outcome id, occurred_ms, stamped_ms) at each source offset
    now = OCCURRED_MS
    for i in range(data.draw(st.integers(1, 16))):
        now += data.draw(st.sampled_from([0, 1_000, lateness_ms, horizon // 2, horizon + 1]))
        source.append((f"o{i}", now, now))
        if source and data.draw(st.booleans()):  # a re-emission of an earlier outcome, stamped now
            outcome_id, occurred, _ = data.draw(st.sampled_from(source))
            source.append((outcome_id, occurred, now))
    counted, parts = FakeTable(), FakeTable()
    commit = 0  # the next batched offset to read after a restart (every event below it is committed)
    next_batched = 0
    log: list[tuple[int, int]] = []  # (batched offset, source offset) as forwarded, in order
    saved = (copy.deepcopy(counted), copy.deepcopy(parts))

    def counter() -> Counter:
        return Counter(counted, parts, 60, get_codec(), TallyStats(),  # type: ignore[arg-type]
                       allowed_lateness_s=lateness_ms / 1000, committed=lambda partition: commit,
                       clock=lambda: OCCURRED_MS / 1000)

    def read(c: Counter, batched: int, offset: int) -> None:
        outcome_id, occurred, stamped = source[offset]
        _apply(c, [_forwarded(0, batched, [(offset, _outcome(outcome_id, occurred_ms=occurred))],
                              timestamps=[stamped])])

    current = counter()
    position = 0  # the next source offset the forwarder forwards
    while position < len(source):
        log.append((next_batched, position))
        read(current, next_batched, position)
        next_batched += 1
        position += 1
        action = data.draw(st.sampled_from(["go on", "commit", "crash", "redo"]))
        if action == "commit":
            commit = next_batched
            saved = (copy.deepcopy(counted), copy.deepcopy(parts))
        elif action == "crash":
            lost_dedup = data.draw(st.booleans())
            parts.clear()
            parts.update(copy.deepcopy(saved[1]))
            if lost_dedup:
                counted.clear()
                counted.update(copy.deepcopy(saved[0]))
            current = counter()
            for batched, offset in [entry for entry in log if entry[0] >= commit]:
                read(current, batched, offset)  # Faust reads the uncommitted events again
        elif action == "redo":  # the forwarder restarts from an earlier source offset of its own
            position = data.draw(st.integers(0, position))
    distinct = len({outcome_id for outcome_id, _, _ in source})
    assert _sent(parts, 0) == distinct and _sent_in_windows(parts, 0) == distinct
