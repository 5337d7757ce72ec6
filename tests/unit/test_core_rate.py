"""Rate policy with a fake clock: numbers only, no sleeps."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from campaigns.core.rate import AimdRate, TokenBucket, worker_share

# --- TokenBucket ------------------------------------------------------------------------------------


def test_starts_full_and_grants_up_to_burst() -> None:
    bucket = TokenBucket(rate=10, burst=5, now=0.0)
    assert bucket.try_take(3, 0.0) == 3
    assert bucket.try_take(3, 0.0) == 2
    assert bucket.try_take(3, 0.0) == 0


def test_refills_at_rate_up_to_burst() -> None:
    bucket = TokenBucket(rate=10, burst=5, now=0.0, tokens=0)
    assert bucket.try_take(10, 0.25) == 2  # 2.5 tokens, whole tokens only
    assert bucket.available(0.25) == pytest.approx(0.5)
    assert bucket.try_take(10, 100.0) == 5  # capped at burst


def test_seconds_until() -> None:
    bucket = TokenBucket(rate=4, burst=10, now=0.0, tokens=0)
    assert bucket.seconds_until(2, 0.0) == pytest.approx(0.5)
    assert bucket.seconds_until(2, 0.5) == 0.0
    assert bucket.seconds_until(0, 0.0) == 0.0
    # More than the bucket can hold is capped at burst.
    assert bucket.seconds_until(1000, 0.5) == pytest.approx((10 - 2) / 4)


def test_fractional_accrual_is_not_lost_to_rounding() -> None:
    bucket = TokenBucket(rate=3, burst=3, now=0.0, tokens=0)
    granted = sum(bucket.try_take(1, i / 30) for i in range(1, 301))  # 10 s in 1/30 s steps
    assert granted == 30


def test_rate_zero_never_refills() -> None:
    bucket = TokenBucket(rate=0, burst=2, now=0.0)
    assert bucket.try_take(5, 0.0) == 2
    assert bucket.try_take(5, 1e6) == 0
    assert bucket.seconds_until(1, 1e6) == math.inf


def test_clock_going_backwards_stands_still() -> None:
    bucket = TokenBucket(rate=10, burst=10, now=100.0, tokens=0)
    assert bucket.try_take(5, 50.0) == 0
    assert bucket.try_take(5, 100.5) == 5


def test_set_rate_credits_the_old_rate_first() -> None:
    bucket = TokenBucket(rate=10, burst=100, now=0.0, tokens=0)
    bucket.set_rate(1, 1.0)  # 10 tokens accrued at the old rate
    assert bucket.rate == 1
    assert bucket.available(2.0) == pytest.approx(11)
    bucket.set_rate(1, 2.0, burst=4)
    assert bucket.burst == 4
    assert bucket.try_take(100, 2.0) == 4


@pytest.mark.parametrize(("rate", "burst"), [(-1, 1), (math.nan, 1), (math.inf, 1), (1, 0.5), (1, math.inf)])
def test_invalid_bucket(rate: float, burst: float) -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate, burst, now=0.0)


def test_negative_n_is_refused() -> None:
    bucket = TokenBucket(1, 1, now=0.0)
    with pytest.raises(ValueError):
        bucket.try_take(-1, 0.0)
    with pytest.raises(ValueError):
        bucket.seconds_until(-1, 0.0)


steps = st.lists(
    st.tuples(st.floats(0, 2, allow_nan=False), st.integers(0, 50)),
    min_size=1,
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(
    rate=st.floats(0.1, 1000),
    burst=st.integers(1, 100),
    start_tokens=st.none() | st.floats(0, 100),
    steps=steps,
)
def test_never_exceeds_rate_times_t_plus_burst(
    rate: float, burst: int, start_tokens: float | None, steps: list[tuple[float, int]]
) -> None:
    now = 1000.0
    bucket = TokenBucket(rate, burst, now=now, tokens=start_tokens)
    events: list[tuple[float, int]] = []
    for dt, n in steps:
        now += dt
        granted = bucket.try_take(n, now)
        assert 0 <= granted <= n
        events.append((now, granted))
    # Over every interval [t_i, t_j] the grants inside it are bounded.
    for i in range(len(events)):
        total = 0
        for j in range(i, len(events)):
            total += events[j][1]
            span = events[j][0] - events[i][0]
            assert total <= rate * span + burst + 1e-6


@settings(max_examples=100, deadline=None)
@given(rate=st.floats(1, 500), burst=st.integers(2, 50), poll=st.floats(0.01, 1))
def test_saturated_sender_converges_to_rate(rate: float, burst: int, poll: float) -> None:
    # A sender that asks at least every (burst - 1) / rate seconds never has accrual cut off by the cap
    # (at most one fractional token is ever left over), so it gets the full rate.
    dt = poll * (burst - 1) / rate
    bucket = TokenBucket(rate, burst, now=0.0)
    now, granted = 0.0, bucket.try_take(10**6, 0.0)
    for _ in range(500):
        now += dt
        granted += bucket.try_take(10**6, now)
    assert granted <= rate * now + burst + 1e-6
    assert granted >= rate * now + burst - 1 - 1e-6


@settings(max_examples=200, deadline=None)
@given(rate=st.floats(0.5, 500), burst=st.integers(1, 50), want=st.integers(1, 100))
def test_sender_waiting_seconds_until_gets_the_rate(rate: float, burst: int, want: int) -> None:
    bucket = TokenBucket(rate, burst, now=0.0, tokens=0)
    now, granted = 0.0, 0
    for _ in range(500):
        now += bucket.seconds_until(want, now)
        granted += bucket.try_take(want, now)
    assert granted == pytest.approx(rate * now, abs=1.0 + 1e-6 * rate * now)


@given(
    rate=st.floats(0.1, 100),
    burst=st.integers(1, 50),
    n=st.integers(0, 60),
    elapsed=st.floats(0, 10),
)
def test_seconds_until_is_exact(rate: float, burst: int, n: int, elapsed: float) -> None:
    bucket = TokenBucket(rate, burst, now=0.0, tokens=0)
    wait = bucket.seconds_until(n, elapsed)
    assert wait >= 0
    want = min(n, burst)
    assert bucket.try_take(want, elapsed + wait) == want


@given(
    rate=st.floats(0.1, 100),
    burst=st.integers(1, 50),
    tokens=st.floats(0, 50),
    n=st.integers(0, 60),
    elapsed=st.floats(0, 10),
)
def test_grantable_is_what_try_take_grants_and_takes_nothing(
        rate: float, burst: int, tokens: float, n: int, elapsed: float) -> None:
    bucket = TokenBucket(rate, burst, now=0.0, tokens=tokens)
    counted = bucket.grantable(n, elapsed)
    assert bucket.grantable(n, elapsed) == counted  # counting twice takes nothing
    assert bucket.try_take(n, elapsed) == counted


# --- AIMD -------------------------------------------------------------------------------------------


def test_starts_at_max() -> None:
    aimd = AimdRate(100, now=0.0)
    assert aimd.rate == 100 and aimd.max_rate == 100


def test_a_burst_of_429s_halves_once() -> None:
    aimd = AimdRate(100, now=0.0, cooldown_s=1.0)
    results = [aimd.on_throttled(10.0 + i * 0.01) for i in range(50)]  # 50 x 429 within 0.5 s
    assert results.count(True) == 1
    assert aimd.rate == 50


def test_halves_again_after_the_cooldown() -> None:
    aimd = AimdRate(100, now=0.0, cooldown_s=1.0)
    aimd.on_throttled(0.0)
    assert aimd.on_throttled(0.999) is False
    assert aimd.on_throttled(1.0) is True
    assert aimd.rate == 25


def test_floor() -> None:
    aimd = AimdRate(100, now=0.0)
    assert aimd.floor == 1.0  # 1% of 100
    for i in range(20):
        aimd.on_throttled(float(i * 2))
    assert aimd.rate == 1.0
    assert AimdRate(10, now=0.0).floor == 0.5  # at least 0.5/s
    assert AimdRate(0.2, now=0.0).floor == 0.2  # but never above max


def test_additive_recovery() -> None:
    aimd = AimdRate(100, now=0.0, increase_per_s=0.05)
    aimd.on_throttled(10.0)
    assert aimd.rate == 50
    assert aimd.on_success(1, 11.0) == pytest.approx(55)  # +5% of max per second
    assert aimd.on_success(1, 13.0) == pytest.approx(65)
    assert aimd.on_success(1, 100.0) == 100  # capped at max


def test_no_success_no_increase() -> None:
    aimd = AimdRate(100, now=0.0)
    aimd.on_throttled(0.0)
    assert aimd.on_success(0, 5.0) == 50


def test_recovers_from_the_floor_in_bounded_time() -> None:
    aimd = AimdRate(1000, now=0.0, increase_per_s=0.05)
    for i in range(30):
        aimd.on_throttled(float(i * 2))
    assert aimd.rate == aimd.floor == 10
    last_decrease = 58.0
    t = last_decrease
    while aimd.rate < 1000:
        t += 0.1
        aimd.on_success(10, t)
    # Recovery counts from the last decrease: (1000 - 10) / (0.05 * 1000) = 19.8 s.
    assert t - last_decrease == pytest.approx(19.8, abs=0.11)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_rate": 0},
        {"max_rate": math.inf},
        {"max_rate": 10, "floor": 0},
        {"max_rate": 10, "floor": 11},
        {"max_rate": 10, "decrease_factor": 1},
        {"max_rate": 10, "increase_per_s": -1},
        {"max_rate": 10, "cooldown_s": -1},
    ],
)
def test_invalid_aimd(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        AimdRate(now=0.0, **kwargs)


events = st.lists(
    st.tuples(st.floats(0, 3), st.booleans(), st.integers(0, 20)),
    max_size=100,
)


@given(max_rate=st.floats(0.1, 10_000), events=events)
def test_aimd_stays_in_bounds_and_halves_at_most_once_per_cooldown(
    max_rate: float, events: list[tuple[float, bool, int]]
) -> None:
    aimd = AimdRate(max_rate, now=0.0, cooldown_s=1.0)
    now = 0.0
    decreases: list[float] = []
    for dt, throttled, n in events:
        now += dt
        before = aimd.rate
        if throttled:
            if aimd.on_throttled(now):
                decreases.append(now)
                assert aimd.rate == max(aimd.floor, before * 0.5)
            else:
                assert aimd.rate == before
        else:
            aimd.on_success(n, now)
            assert aimd.rate >= before
        assert aimd.floor <= aimd.rate <= max_rate
    assert all(b - a >= 1.0 for a, b in itertools.pairwise(decreases))


def test_aimd_feeds_the_bucket() -> None:
    aimd = AimdRate(100, now=0.0)
    bucket = TokenBucket(worker_share(aimd.rate, 2, 4), burst=10, now=0.0)
    aimd.on_throttled(1.0)
    bucket.set_rate(worker_share(aimd.rate, 2, 4), 1.0)
    assert bucket.rate == 25


# --- worker share -----------------------------------------------------------------------------------


def test_worker_share() -> None:
    assert worker_share(100, 3, 6) == 50
    assert worker_share(100, 6, 6) == 100
    assert worker_share(100, 0, 6) == 0
    assert worker_share(0, 3, 6) == 0


@given(st.floats(0, 10_000), st.integers(1, 64), st.data())
def test_shares_of_disjoint_owners_sum_to_at_most_the_limit(
    rate: float, total: int, data: st.DataObject
) -> None:
    cuts = sorted(data.draw(st.lists(st.integers(0, total), max_size=5)))
    owned = [b - a for a, b in zip([0, *cuts], [*cuts, total], strict=True)]
    assert sum(worker_share(rate, n, total) for n in owned) <= rate * (1 + 1e-9)


def test_worker_share_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        worker_share(100, 1, 0)
    with pytest.raises(ValueError):
        worker_share(100, 7, 6)
