"""The per-campaign failure breaker: sliding-window semantics, numbers only."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from campaigns.core.breaker import MIN_WINDOW, FailureBreaker


def feed(breaker: FailureBreaker, results: list[bool]) -> int | None:
    """Feed results in order; the 1-based attempt at which the breaker tripped, or None."""
    for n, failed in enumerate(results, start=1):
        if breaker.record(failed):
            return n
    return None


def test_trips_at_the_minimum_sample_when_everything_fails() -> None:
    assert feed(FailureBreaker(0.2, 50), [True] * 300) == 50


def test_an_early_run_of_failures_is_not_diluted() -> None:
    # Threshold 0.3, 300 failures first: a cumulative ratio over ~1,000 outcomes would say 0.3 and never trip.
    assert feed(FailureBreaker(0.3, 50), [True] * 300 + [False] * 700) == 50


def test_failures_after_a_long_healthy_run_still_trip_within_one_window() -> None:
    breaker = FailureBreaker(0.5, 50)
    assert feed(breaker, [False] * 10_000) is None
    tripped_at = feed(breaker, [True] * 1_000)
    assert tripped_at is not None and tripped_at <= breaker.window // 2 + 1


def test_below_the_minimum_sample_never_trips() -> None:
    assert feed(FailureBreaker(0.1, 200), [True] * 199) is None


def test_the_window_is_at_least_min_window_and_at_least_the_sample() -> None:
    assert FailureBreaker(0.2, 10).window == MIN_WINDOW
    assert FailureBreaker(0.2, 500).window == 500


def test_scattered_failures_under_the_threshold_do_not_trip() -> None:
    results = [n % 10 == 0 for n in range(10_000)]  # 10 % failures
    assert feed(FailureBreaker(0.2, 50), results) is None


def test_stays_tripped() -> None:
    breaker = FailureBreaker(0.2, 5)
    feed(breaker, [True] * 5)
    assert breaker.record(False) and breaker.tripped


def test_rejects_a_threshold_outside_zero_one() -> None:
    with pytest.raises(ValueError):
        FailureBreaker(1.5, 10)


@given(st.lists(st.booleans(), max_size=600), st.floats(0, 1), st.integers(0, 300))
def test_agrees_with_the_ratio_over_the_last_window(results: list[bool], threshold: float, min_sample: int) -> None:
    breaker = FailureBreaker(threshold, min_sample)
    expected_trip = None
    for n in range(1, len(results) + 1):
        recent = results[max(0, n - breaker.window):n]
        if len(recent) >= max(min_sample, 1) and sum(recent) / len(recent) > threshold:
            expected_trip = n
            break
    assert feed(breaker, results) == expected_trip
    fed = results[:expected_trip or len(results)]
    assert breaker.failures == sum(fed[-breaker.window:])
