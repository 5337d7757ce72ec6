"""Tumbling-window maths."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from campaigns.core.windows import EPOCH, window_bounds, window_start_ms


def test_minute_window() -> None:
    ts = datetime(2025, 3, 1, 12, 34, 56, 789, tzinfo=UTC)
    assert window_bounds(ts, 60) == (
        datetime(2025, 3, 1, 12, 34, tzinfo=UTC),
        datetime(2025, 3, 1, 12, 35, tzinfo=UTC),
    )


def test_start_is_inclusive_end_is_exclusive() -> None:
    boundary = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
    assert window_bounds(boundary, 300)[0] == boundary
    before = boundary - timedelta(microseconds=1)
    assert window_bounds(before, 300) == (boundary - timedelta(minutes=5), boundary)


def test_other_timezones_give_utc_bounds() -> None:
    ts = datetime(2025, 3, 1, 14, 34, 56, tzinfo=timezone(timedelta(hours=2)))
    start, end = window_bounds(ts, 3600)
    assert start == datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
    assert start.tzinfo is UTC and end.tzinfo is UTC


def test_alignment_is_to_the_epoch_not_the_hour() -> None:
    # 7-second windows: 1_740_830_400 (2025-03-01T12:00:00Z) is 1 past a multiple of 7.
    ts = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
    start, _ = window_bounds(ts, 7)
    assert int(start.timestamp()) % 7 == 0
    assert start == ts - timedelta(seconds=1_740_830_400 % 7)


def test_before_the_epoch() -> None:
    ts = datetime(1969, 12, 31, 23, 59, 30, tzinfo=UTC)
    assert window_bounds(ts, 60) == (datetime(1969, 12, 31, 23, 59, tzinfo=UTC), EPOCH)


def test_day_window() -> None:
    ts = datetime(2025, 3, 1, 23, 59, 59, 999_999, tzinfo=UTC)
    assert window_bounds(ts, 86_400) == (datetime(2025, 3, 1, tzinfo=UTC), datetime(2025, 3, 2, tzinfo=UTC))


@pytest.mark.parametrize("size", [0, -60])
def test_bad_size(size: int) -> None:
    with pytest.raises(ValueError, match="size_s"):
        window_bounds(datetime(2025, 1, 1, tzinfo=UTC), size)


def test_naive_timestamp_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        window_bounds(datetime(2025, 1, 1), 60)  # noqa: DTZ001


aware = st.datetimes(
    min_value=datetime(1900, 1, 2),  # noqa: DTZ001 - hypothesis bounds are naive by contract
    max_value=datetime(2200, 1, 1),  # noqa: DTZ001
    timezones=st.timezones(),
)


@given(aware, st.integers(1, 7 * 86_400))
def test_window_properties(ts: datetime, size: int) -> None:
    start, end = window_bounds(ts, size)
    assert start <= ts < end
    assert end - start == timedelta(seconds=size)
    assert (start - EPOCH) % timedelta(seconds=size) == timedelta(0)
    assert start.tzinfo is UTC
    assert window_bounds(start, size) == (start, end)  # idempotent
    assert window_bounds(end, size)[0] == end  # the next window starts where this one ends


@given(st.integers(-(10**13), 10**13), st.integers(1, 86_400))
def test_window_start_ms_matches_window_bounds(ts_ms: int, size: int) -> None:
    start_ms = window_start_ms(ts_ms, size)
    ts = EPOCH + timedelta(milliseconds=ts_ms)
    assert EPOCH + timedelta(milliseconds=start_ms) == window_bounds(ts, size)[0]
