"""The per-campaign failure breaker: sliding-window semantics, numbers only; and the set a worker's sender
consumers share."""

from __future__ import annotations

import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from campaigns.core.breaker import MIN_WINDOW, CampaignBreakers, FailureBreaker, Trip


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


LIMITS = {"a": (0.2, 50), "b": (0.5, 20)}


@given(st.lists(st.tuples(st.sampled_from("ab"), st.booleans()), max_size=400), st.integers(1, 60))
def test_shared_breakers_trip_where_one_breaker_fed_every_attempt_in_order_would(
        attempts: list[tuple[str, bool]], batch: int) -> None:
    """Batches from several consumers, recorded one after another, count as one stream per campaign."""
    shared = CampaignBreakers()
    fed = {"a": 0, "b": 0}
    tripped_in: dict[str, tuple[int, int]] = {}  # campaign -> its attempts recorded (before, after) the batch
    for start in range(0, len(attempts), batch):
        chunk = attempts[start:start + batch]
        before = dict(fed)
        for cid, _ in chunk:
            fed[cid] += 1
        for cid, trip in shared.record(chunk, LIMITS.__getitem__).items():
            assert trip.threshold == LIMITS[cid][0]
            tripped_in.setdefault(cid, (before[cid], fed[cid]))
    for cid in "ab":
        tripped_at = feed(FailureBreaker(*LIMITS[cid]), [failed for c, failed in attempts if c == cid])
        if tripped_at is None:
            assert cid not in tripped_in
        else:  # reported by the batch that held the crossing
            before, after = tripped_in[cid]
            assert before < tripped_at <= after


def test_consumer_threads_sharing_the_breakers_trip_them_at_the_minimum_sample_of_their_attempts() -> None:
    """Two threads record single-attempt batches of one failing campaign: the breaker trips at the 50th attempt
    of the two together (each thread alone has made about 25), and every later batch meets it tripped."""
    shared = CampaignBreakers()
    trips: list[list[Trip]] = [[], []]
    go = threading.Barrier(2)

    def consumer(n: int) -> None:
        go.wait()
        for _ in range(200):
            trips[n].extend(shared.record([("a", True)], LIMITS.__getitem__).values())

    threads = [threading.Thread(target=consumer, args=(n,)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    every = trips[0] + trips[1]
    assert min(t.attempts for t in every) == 50  # the crossing, whichever thread recorded it
    assert len(every) == 400 - 49  # every attempt from the 50th on met a tripped breaker
    assert max(t.attempts for t in every) == MIN_WINDOW
