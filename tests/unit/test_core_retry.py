"""Retry policy: delays, tiers and the retry / dead-letter decision."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from campaigns.core.retry import RetryDecision, RetryPolicy, decide, next_delay_s, tier_for_wait
from campaigns.errors import ValidationError

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
NO_JITTER = 0.5  # rand = 0.5 gives a jitter factor of exactly 1

policies = st.builds(
    RetryPolicy,
    max_retries=st.integers(0, 10),
    backoff_base_s=st.floats(0.001, 1000),
    backoff_max_s=st.floats(1000, 86_400),
    jitter=st.floats(0, 1),
)
rands = st.floats(0, 1, exclude_max=True)


def test_defaults() -> None:
    assert RetryPolicy() == RetryPolicy(max_retries=3, backoff_base_s=1.0, backoff_max_s=60.0, jitter=0.2)


def test_policy_is_frozen() -> None:
    with pytest.raises(AttributeError):
        RetryPolicy().max_retries = 5  # type: ignore[misc]


def test_invalid_policy_lists_every_problem() -> None:
    with pytest.raises(ValidationError) as info:
        RetryPolicy(max_retries=11, backoff_base_s=0, backoff_max_s=-1, jitter=2)
    assert info.value.problems == [
        "retry_policy.max_retries: must be between 0 and 10, got 11",
        "retry_policy.backoff_base_s: must be greater than 0 and at most 86400, got 0",
        "retry_policy.backoff_max_s: must be greater than 0 and at most 86400, got -1",
        "retry_policy.jitter: must be between 0 and 1, got 2",
    ]


def test_max_below_base_is_refused() -> None:
    with pytest.raises(ValidationError, match="backoff_max_s: must be at least backoff_base_s"):
        RetryPolicy(backoff_base_s=10, backoff_max_s=5)


def test_exponential_delays_capped() -> None:
    policy = RetryPolicy(max_retries=10, backoff_base_s=1, backoff_max_s=60, jitter=0)
    assert [next_delay_s(policy, a, 0.0) for a in range(8)] == [1, 2, 4, 8, 16, 32, 60, 60]


def test_jitter_range() -> None:
    policy = RetryPolicy(backoff_base_s=10, backoff_max_s=100, jitter=0.2)
    assert next_delay_s(policy, 0, 0.0) == pytest.approx(8.0)
    assert next_delay_s(policy, 0, NO_JITTER) == pytest.approx(10.0)
    assert next_delay_s(policy, 0, 0.999999) == pytest.approx(12.0, abs=1e-4)


def test_huge_attempt_does_not_overflow() -> None:
    policy = RetryPolicy(backoff_base_s=2, backoff_max_s=30, jitter=0)
    assert next_delay_s(policy, 10**9, 0.3) == 30


@pytest.mark.parametrize(("attempt", "rand"), [(-1, 0.5), (0, -0.1), (0, 1.0)])
def test_bad_arguments(attempt: int, rand: float) -> None:
    with pytest.raises(ValueError):
        next_delay_s(RetryPolicy(), attempt, rand)


@given(policies, st.integers(0, 10_000), rands)
def test_delay_never_exceeds_max_with_jitter(policy: RetryPolicy, attempt: int, rand: float) -> None:
    delay = next_delay_s(policy, attempt, rand)
    assert 0 <= delay <= policy.backoff_max_s * (1 + policy.jitter) * (1 + 1e-12)
    assert delay >= min(policy.backoff_base_s, policy.backoff_max_s) * (1 - policy.jitter) * (1 - 1e-12)


@given(policies, st.integers(0, 200), rands)
def test_delay_non_decreasing_in_attempt(policy: RetryPolicy, attempt: int, rand: float) -> None:
    assert next_delay_s(policy, attempt, NO_JITTER) <= next_delay_s(policy, attempt + 1, NO_JITTER)
    # And for any fixed rand (the same jitter factor applied to both).
    assert next_delay_s(policy, attempt, rand) <= next_delay_s(policy, attempt + 1, rand)


def test_tier_for_wait_picks_the_largest_delay_not_longer_than_the_wait() -> None:
    delays = (1.0, 5.0, 30.0, 300.0, 3600.0)
    assert [tier_for_wait(w, delays) for w in (0, 0.2, 1, 4.9, 5, 29, 31, 3599, 3600, 86_400)] == [
        1, 1, 1, 1, 2, 2, 3, 4, 5, 5]
    with pytest.raises(ValueError):
        tier_for_wait(1, ())
    with pytest.raises(ValueError):
        tier_for_wait(1, (5.0, 1.0))


@given(st.floats(0, 200_000), st.lists(st.floats(0.01, 100_000), min_size=1, max_size=8, unique=True))
def test_a_record_is_never_held_by_its_tier_past_its_time(wait: float, raw: list[float]) -> None:
    delays = tuple(sorted(raw))
    tier = tier_for_wait(wait, delays)
    assert 1 <= tier <= len(delays)
    assert delays[tier - 1] <= wait or tier == 1
    assert tier == len(delays) or delays[tier] > wait  # the largest such tier


def test_transient_is_retried_with_not_before() -> None:
    policy = RetryPolicy(max_retries=3, backoff_base_s=2, backoff_max_s=60, jitter=0)
    decision = decide(policy, 1, "transient", 0.7, NOW)
    assert decision == RetryDecision(
        action="retry",
        attempt=2,
        tier=1,
        delay_s=4.0,
        not_before=NOW + timedelta(seconds=4),
    )
    assert decision.reason is None
    assert decision.not_before_ms == int(NOW.timestamp() * 1000) + 4000


def test_throttled_is_retried_and_honours_retry_after() -> None:
    policy = RetryPolicy(max_retries=3, backoff_base_s=1, backoff_max_s=60, jitter=0)
    assert decide(policy, 0, "throttled", 0.5, NOW).delay_s == 1.0
    decision = decide(policy, 0, "throttled", 0.5, NOW, retry_after_s=30)
    assert decision.action == "retry" and decision.delay_s == 30.0
    assert decision.not_before == NOW + timedelta(seconds=30)
    # A hint shorter than our own back-off does not shorten it; an absurd one is capped at a day.
    assert decide(policy, 0, "throttled", 0.5, NOW, retry_after_s=0.1).delay_s == 1.0
    assert decide(policy, 0, "throttled", 0.5, NOW, retry_after_s=1e12).delay_s == 86_400
    # The cap on the hint never shortens our own (jittered) back-off either.
    slow = RetryPolicy(max_retries=3, backoff_base_s=86_400, backoff_max_s=86_400, jitter=1)
    own = next_delay_s(slow, 0, 0.9)
    assert own > 86_400
    assert decide(slow, 0, "throttled", 0.9, NOW, retry_after_s=100_000).delay_s == own


@pytest.mark.parametrize("attempt", [0, 1, 5, 100])
def test_permanent_goes_straight_to_the_dlq(attempt: int) -> None:
    decision = decide(RetryPolicy(), attempt, "permanent", 0.5, NOW)
    assert decision == RetryDecision(action="dead_letter", reason="permanent_failure")
    assert decision.not_before is None and decision.not_before_ms is None and decision.tier is None


@pytest.mark.parametrize("kind", ["transient", "throttled"])
def test_retries_exhausted(kind: str) -> None:
    policy = RetryPolicy(max_retries=2)
    assert decide(policy, 0, kind, 0.5, NOW).action == "retry"  # type: ignore[arg-type]
    assert decide(policy, 1, kind, 0.5, NOW).action == "retry"  # type: ignore[arg-type]
    assert decide(policy, 2, kind, 0.5, NOW) == RetryDecision(  # type: ignore[arg-type]
        action="dead_letter", reason="retries_exhausted"
    )


def test_zero_retries_dead_letters_the_first_failure() -> None:
    assert decide(RetryPolicy(max_retries=0), 0, "transient", 0.5, NOW).reason == "retries_exhausted"


def test_tier_follows_the_delay_not_the_attempt() -> None:
    policy = RetryPolicy(max_retries=10, backoff_base_s=1, backoff_max_s=3600, jitter=0)
    tiers = [decide(policy, a, "transient", 0.5, NOW, tier_delays_s=(1, 5, 30)).tier for a in range(7)]
    assert tiers == [1, 1, 1, 2, 2, 3, 3]  # delays 1, 2, 4, 8, 16, 32, 64 s
    assert decide(policy, 0, "transient", 0.5, NOW, tier_delays_s=(1, 5, 30), retry_after_s=3600).tier == 3


def test_decide_rejects_bad_inputs() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        decide(RetryPolicy(), 0, "transient", 0.5, datetime(2025, 1, 1))  # noqa: DTZ001
    with pytest.raises(ValueError, match="error_kind"):
        decide(RetryPolicy(), 0, "flaky", 0.5, NOW)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="attempt"):
        decide(RetryPolicy(), -1, "transient", 0.5, NOW)


@given(
    policies,
    st.integers(0, 20),
    st.sampled_from(["transient", "throttled", "permanent"]),
    rands,
)
def test_decision_shape(policy: RetryPolicy, attempt: int, kind: str, rand: float) -> None:
    decision = decide(policy, attempt, kind, rand, NOW)  # type: ignore[arg-type]
    if decision.action == "retry":
        assert kind != "permanent" and attempt < policy.max_retries
        assert decision.reason is None
        assert decision.attempt == attempt + 1
        assert decision.tier is not None and 1 <= decision.tier <= 5
        assert decision.delay_s is not None and decision.not_before is not None
        assert decision.not_before == NOW + timedelta(seconds=decision.delay_s)
        assert decision.not_before >= NOW
    else:
        expected = "permanent_failure" if kind == "permanent" else "retries_exhausted"
        assert decision.reason == expected
        assert decision.not_before is None
