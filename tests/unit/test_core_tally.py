"""campaigns.core.tally: exactly-once counting into parts under re-delivery, lost table writes and replays."""

from __future__ import annotations

import random

from campaigns.core.tally import TOTALS, Outcome, classify, empty_part, fold, newer, part_key, sum_parts


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
