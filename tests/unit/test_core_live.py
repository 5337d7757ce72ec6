"""Summing OutcomeCounts deltas into live states, and the live-view snapshot."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from campaigns.core.live import COUNTERS, SourceRecord, empty_state, fold, snapshot


def _counts(**values: Any) -> dict[str, Any]:
    return {"campaign_id": "c1", **values}


def test_fold_sums_counters_and_latency() -> None:
    state = fold(None, [
        SourceRecord(0, 10, _counts(sent=3, failed=1, latency_count=4, latency_sum_ms=40.0, latency_max_ms=25.0)),
        SourceRecord(0, 11, _counts(sent=2, delivered=5, latency_count=2, latency_sum_ms=10.0, latency_max_ms=7.0)),
    ])
    assert state is not None
    assert (state["sent"], state["failed"], state["delivered"]) == (5, 1, 5)
    assert (state["latency_count"], state["latency_sum_ms"], state["latency_max_ms"]) == (6, 50.0, 25.0)
    assert state["records"] == 2
    assert state["src"] == [0, 11]


def test_records_at_or_below_the_watermark_are_skipped() -> None:
    first = fold(None, [SourceRecord(2, 5, _counts(sent=1)), SourceRecord(2, 6, _counts(sent=1))])
    assert first is not None
    # A crash re-delivers offsets 5..7: only 7 is new.
    again = fold(first, [SourceRecord(2, o, _counts(sent=1)) for o in (5, 6, 7)])
    assert again is not None
    assert (again["sent"], again["records"], again["src"]) == (3, 3, [2, 7])
    assert fold(again, [SourceRecord(2, 6, _counts(sent=1))]) is None


def test_a_record_from_another_partition_is_new() -> None:
    state = fold(None, [SourceRecord(1, 100, _counts(sent=1))])
    moved = fold(state, [SourceRecord(4, 3, _counts(sent=1))])
    assert moved is not None
    assert (moved["sent"], moved["src"]) == (2, [4, 3])


def test_fold_does_not_mutate_its_input() -> None:
    state = fold(None, [SourceRecord(0, 0, _counts(sent=1))])
    assert state is not None
    copy = dict(state)
    fold(state, [SourceRecord(0, 1, _counts(sent=1))])
    assert state == copy


@given(st.lists(st.integers(0, 1000), min_size=1, max_size=30), st.integers(1, 29))
def test_folding_in_batches_equals_folding_once_even_with_redelivery(sents: list[int], cut: int) -> None:
    records = [SourceRecord(0, i, _counts(sent=n)) for i, n in enumerate(sents)]
    whole = fold(None, records)
    cut = min(cut, len(records))
    part = fold(None, records[:cut]) or empty_state()
    # The second batch starts before the cut (a re-delivery of what was already folded).
    rest = fold(part, records[max(0, cut - 3):])
    assert (rest or part) == whole


def test_snapshot_windows_and_rates() -> None:
    window_s = 60
    current_start = 1_740_830_400_000  # 2025-03-01T12:00:00Z
    totals = fold(None, [SourceRecord(0, 0, _counts(sent=900, failed=30))])
    current = fold(None, [SourceRecord(0, 1, _counts(sent=150, latency_count=150, latency_sum_ms=300.0,
                                                      latency_max_ms=9.5))])
    previous = fold(None, [SourceRecord(0, 2, _counts(sent=600, failed=6))])
    out = snapshot("c1", totals, current, previous, window_s=window_s, current_start_ms=current_start,
                   at_ms=current_start + 30_000)
    assert out["totals"]["sent"] == 900 and out["totals"]["failed"] == 30
    assert out["current_window"]["start"] == "2025-03-01T12:00:00Z"
    assert out["current_window"]["end"] == "2025-03-01T12:01:00Z"
    assert out["previous_window"]["start"] == "2025-03-01T11:59:00Z"
    assert out["current_window"]["latency_mean_ms"] == 2.0
    assert out["current_window"]["latency_max_ms"] == 9.5
    assert out["previous_window"]["latency_mean_ms"] is None
    assert out["sends_per_s"] == 10.0  # 600 sent over the last complete 60 s window
    assert out["current_sends_per_s"] == 5.0  # 150 in the 30 s elapsed
    assert out["at"] == "2025-03-01T12:00:30Z"


def test_snapshot_of_an_unknown_campaign_is_all_zero() -> None:
    out = snapshot("nobody", None, None, None, window_s=10, current_start_ms=0, at_ms=0)
    assert all(out["totals"][name] == 0 for name in COUNTERS)
    assert out["sends_per_s"] == 0 and out["current_sends_per_s"] == 0
