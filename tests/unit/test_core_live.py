"""Keeping the newest campaign.analytics row per window (field-wise maximum), and the live-view snapshot."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from campaigns.core.live import COUNTERS, GROWING, merge, snapshot


def _row(**values: Any) -> dict[str, Any]:
    return {"campaign_id": "c1", "window_start": None, "window_end": None, **values}


def test_merge_keeps_the_newest_row() -> None:
    older = _row(sent=3, failed=1, latency_count=4, latency_sum_ms=40.0, latency_max_ms=25.0, updated_at=1_000)
    newer = _row(sent=5, failed=1, delivered=5, latency_count=6, latency_sum_ms=50.0, latency_max_ms=25.0,
                 updated_at=2_000)
    state = merge(None, [older, newer])
    assert state is not None
    assert (state["sent"], state["failed"], state["delivered"]) == (5, 1, 5)
    assert (state["latency_count"], state["latency_sum_ms"], state["latency_max_ms"]) == (6, 50.0, 25.0)
    assert state["updated_at"] == 2_000
    # The older row arriving after the newer one (two writers interleaved) changes nothing.
    assert merge(state, [older]) is None
    assert merge(state, [newer]) is None  # and neither does a re-delivery


def test_updated_at_may_be_a_datetime() -> None:
    state = merge(None, [_row(sent=1, updated_at=datetime(1970, 1, 1, 0, 0, 2, tzinfo=UTC))])
    assert state is not None and state["updated_at"] == 2_000


def test_merge_does_not_mutate_its_input() -> None:
    state = merge(None, [_row(sent=1)])
    assert state is not None
    copy = dict(state)
    merge(state, [_row(sent=2)])
    assert state == copy


_growing_rows = st.lists(
    st.fixed_dictionaries({name: st.integers(0, 50) for name in ("sent", "failed", "delivered", "updated_at")}),
    min_size=1, max_size=20,
)


@given(_growing_rows, st.randoms(use_true_random=False), st.integers(0, 20))
def test_any_order_with_redelivery_gives_the_newest_row(steps: list[dict[str, int]], rnd: random.Random,
                                                          redelivered: int) -> None:
    # The rows a writer publishes: running sums of the steps, so each one only grows.
    rows, running = [], dict.fromkeys(steps[0], 0)
    for step in steps:
        running = {name: running[name] + step[name] for name in running}
        rows.append(_row(**running))
    shuffled = rows + rnd.sample(rows, min(redelivered, len(rows)))
    rnd.shuffle(shuffled)
    state: dict[str, Any] | None = None
    for cut in range(0, len(shuffled), 3):  # in batches, as the agent applies them
        state = merge(state, shuffled[cut:cut + 3]) or state
    newest = merge(None, [rows[-1]])
    if newest is None:  # every step was zero: nothing to keep
        assert state is None
    else:
        assert state == newest


def test_state_has_every_growing_field() -> None:
    state = merge(None, [_row(sent=1)])
    assert state is not None and set(state) == set(GROWING)


def test_snapshot_windows_and_rates() -> None:
    window_s = 60
    current_start = 1_740_830_400_000  # 2025-03-01T12:00:00Z
    totals = merge(None, [_row(sent=900, failed=30, updated_at=current_start + 29_000)])
    current = merge(None, [_row(sent=150, latency_count=150, latency_sum_ms=300.0, latency_max_ms=9.5)])
    previous = merge(None, [_row(sent=600, failed=6)])
    out = snapshot("c1", totals, current, previous, window_s=window_s, current_start_ms=current_start,
                   at_ms=current_start + 30_000)
    assert out["totals"]["sent"] == 900 and out["totals"]["failed"] == 30
    assert out["totals"]["updated_at"] == "2025-03-01T12:00:29Z"
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
    assert out["totals"]["updated_at"] is None
    assert out["sends_per_s"] == 0 and out["current_sends_per_s"] == 0
