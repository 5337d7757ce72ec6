"""campaigns.core.tally: exactly-once counting into parts under re-delivery, lost table writes and replays."""

from __future__ import annotations

import random
from dataclasses import replace

from hypothesis import given
from hypothesis import strategies as st

from campaigns.core.tally import (
    COPY_SPREAD_MS,
    DISORDER_MS,
    TOTALS,
    Outcome,
    classify,
    dedup_expired,
    empty_part,
    fold,
    late,
    newer,
    part_key,
    sum_parts,
)


def _outcome(offset: int, oid: str | None = None, status: str = "SENT", partition: int = 0,
             latency: float | None = 10.0) -> Outcome:
    return Outcome(oid or f"o{offset}", "c1", status, 1, latency, 60_000, partition, offset)


class Tables:
    """The two partition-local tables of ``count_outcomes`` as dicts, applying a batch like the agent."""

    def __init__(self) -> None:
        self.counted: dict[str, list[int]] = {}
        self.parts: dict[str, dict[str, object]] = {}

    def apply(self, batch: list[Outcome], *, lose_counted: bool = False, lose_parts: bool = False) -> None:
        counted, parts = dict(self.counted), dict(self.parts)
        by_key: dict[str, list[Outcome]] = {}
        for o in batch:
            at = counted.get(o.outcome_id)
            if not classify(at, o):
                continue
            counted.setdefault(o.outcome_id, [o.partition, o.offset])
            by_key.setdefault(part_key(o.campaign_id, TOTALS, o.partition), []).append(o)
        for key, outcomes in by_key.items():
            state = fold(parts.get(key), outcomes)
            if state is not None:
                parts[key] = state
        if not lose_counted:
            self.counted = counted
        if not lose_parts:
            self.parts = parts


def test_fold_counts_each_status_and_latency():
    part = fold(None, [_outcome(0), _outcome(1, status="FAILED", latency=None), _outcome(2, status="RETRYING")])
    assert part is not None
    assert (part["sent"], part["failed"], part["retried"], part["latency_count"], part["src"]) == (1, 1, 1, 2, 2)
    assert fold(part, [_outcome(1), _outcome(2)]) is None  # at or below src: already in


def test_receipts_add_their_attempt_count():
    receipt = Outcome("r1", "c1", "DELIVERED", 3, None, 0, 0, 5)
    assert fold(empty_part(), [receipt])["delivered"] == 3  # type: ignore[index]


def test_a_duplicate_id_at_another_offset_is_not_counted():
    assert classify(None, _outcome(5))
    assert classify([0, 5], _outcome(5))  # the record that counted it, re-delivered
    assert not classify([0, 5], _outcome(9, oid="o5"))  # a re-emission or a replay


def test_any_crash_point_and_any_replay_count_each_outcome_once():
    rng = random.Random(7)
    records = [_outcome(i, oid=f"id{rng.randrange(150)}") for i in range(300)]
    expected = len({o.outcome_id for o in records})
    for _ in range(200):
        tables, committed = Tables(), 0
        while committed < len(records):
            end = min(len(records), committed + rng.randrange(1, 40))
            crash = rng.random() < 0.4
            tables.apply(records[committed:end], lose_counted=crash and rng.random() < 0.5,
                         lose_parts=crash and rng.random() < 0.5)
            if not crash:  # offsets committed only after a batch's writes were flushed
                committed = end
        replay = [_outcome(300 + i, oid=o.outcome_id) for i, o in enumerate(records)]
        tables.apply(replay)
        assert tables.parts[part_key("c1", TOTALS, 0)]["sent"] == expected


def test_newer_and_sum_parts():
    a, b = fold(None, [_outcome(0), _outcome(1)]), fold(None, [_outcome(4, partition=1, latency=30.0)])
    assert a is not None and b is not None
    assert newer(None, a) and not newer(a, a) and newer(fold(None, [_outcome(0)]), a)
    total = sum_parts([a, b])
    assert (total["sent"], total["latency_count"]) == (3, 3)
    assert (total["latency_sum_ms"], total["latency_max_ms"]) == (50.0, 30.0)
    assert "src" not in total


def test_a_duplicate_counts_nothing_but_moves_src_past_itself():
    part = fold(None, [_outcome(1), _outcome(2, oid="o1"), _outcome(3)], duplicates={2})
    assert part is not None and part["sent"] == 2 and part["src"] == 3
    only_duplicate = fold(part, [_outcome(4, oid="o1")], duplicates={4})
    assert only_duplicate is not None and only_duplicate["sent"] == 2 and only_duplicate["src"] == 4
    assert fold(only_duplicate, [_outcome(4, oid="o1")]) is None  # read again: skipped by src, whatever the dedup


def test_late_is_the_record_timestamp_minus_occurred_at_beyond_the_allowed_lateness():
    on_time = replace(_outcome(1), occurred_ms=1_000, timestamp_ms=61_000)
    assert not late(on_time, 60_000) and late(replace(on_time, timestamp_ms=61_001), 60_000)
    assert not late(replace(on_time, timestamp_ms=-1), 0)  # no timestamp: never judged late


@given(occurred=st.integers(0, 2**41), lateness=st.integers(1, 2**32), gap=st.integers(0, 2**33),
       spread=st.integers(0, COPY_SPREAD_MS), disorder=st.integers(0, DISORDER_MS))
def test_a_copy_that_is_not_late_always_comes_while_its_id_is_remembered(occurred, lateness, gap, spread, disorder):
    """The dedup forgets ids of outcomes that occurred by ``occurred`` once records are stamped ``stream``; a copy of
    one (occurred up to the spread later) stamped so that it is not late, appended after records stamped up to
    ``disorder`` later than itself, finds them not yet forgotten."""
    copy = replace(_outcome(1), occurred_ms=occurred + spread, timestamp_ms=occurred + spread + gap)
    stream = copy.timestamp_ms + disorder  # the latest timestamp among the records before the copy
    if not late(copy, lateness):
        assert not dedup_expired(occurred, stream, lateness)
