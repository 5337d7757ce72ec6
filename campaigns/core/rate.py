"""Rate policy for channel senders: a token bucket, AIMD back-off on throttling, and the per-worker share.

Time is always passed in as ``now``: float seconds on a monotonic clock (``time.monotonic()`` in
production, a number the test advances in unit tests). Nothing here sleeps or reads a clock.

Guarantees:

* :class:`TokenBucket` never grants more than ``rate * (t1 - t0) + burst`` tokens over any interval
  ``[t0, t1]`` while its rate is unchanged (property-tested), and grants whole tokens only.
* :class:`AimdRate` halves (by ``decrease_factor``) at most once per ``cooldown_s`` however many throttle
  signals arrive, never goes below its floor, and grows back additively to, never above, ``max_rate``.
* :func:`worker_share` splits a channel's limit by partition ownership, so the shares of workers owning
  disjoint partitions sum to at most the channel's limit.

These objects are mutable and not thread-safe: each belongs to one sender task.
"""

from __future__ import annotations

import math

__all__ = ["AimdRate", "TokenBucket", "worker_share"]

# Refill arithmetic is in floats; without a little slack 2.9999999999 tokens would grant only 2.
_EPSILON = 1e-9


class TokenBucket:
    """A token bucket: ``rate`` tokens per second accrue up to ``burst``; a send takes one token each.

    The bucket starts full (``burst`` tokens) unless ``tokens`` says otherwise. A clock that goes
    backwards is treated as standing still.
    """

    __slots__ = ("_burst", "_last", "_rate", "_tokens")

    def __init__(self, rate: float, burst: float, now: float, *, tokens: float | None = None) -> None:
        _check_rate(rate)
        _check_burst(burst)
        self._rate = float(rate)
        self._burst = float(burst)
        self._tokens = self._burst if tokens is None else min(max(float(tokens), 0.0), self._burst)
        self._last = float(now)

    @property
    def rate(self) -> float:
        """Tokens per second."""
        return self._rate

    @property
    def burst(self) -> float:
        """The most tokens the bucket holds."""
        return self._burst

    def available(self, now: float) -> float:
        """Tokens available at ``now`` (may be fractional)."""
        self._refill(now)
        return self._tokens

    def peek(self, now: float) -> float:
        """Tokens available at ``now``, without changing the bucket (safe to call from a metrics scrape on
        another thread: it only reads)."""
        tokens, last = self._tokens, self._last
        return min(self._burst, tokens + max(0.0, now - last) * self._rate)

    def grantable(self, n: int, now: float) -> int:
        """How many of ``n`` tokens :meth:`try_take` would grant at ``now`` (0..n), without taking them."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        self._refill(now)
        return max(0, min(n, math.floor(self._tokens + _EPSILON)))

    def try_take(self, n: int, now: float) -> int:
        """Take up to ``n`` whole tokens; return how many were granted (0..n). Never blocks."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        self._refill(now)
        granted = min(n, math.floor(self._tokens + _EPSILON))
        if granted <= 0:
            return 0
        # Not clamped at 0: the epsilon above may leave a few 1e-9 of debt, which keeps the accounting
        # exact instead of minting those fractions.
        self._tokens -= granted
        return granted

    def seconds_until(self, n: int, now: float) -> float:
        """Seconds from ``now`` until ``n`` tokens are available (0.0 if they already are).

        ``n`` is capped at ``burst`` (the bucket never holds more; take what :meth:`try_take` grants and
        ask again). Returns ``math.inf`` when the rate is 0 and the tokens are not there.
        """
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        self._refill(now)
        wanted = min(float(n), self._burst)
        missing = wanted - self._tokens
        if missing <= _EPSILON:
            return 0.0
        if self._rate <= 0.0:
            return math.inf
        return missing / self._rate

    def set_rate(self, rate: float, now: float, *, burst: float | None = None) -> None:
        """Change the rate (and optionally the burst) from ``now`` on.

        Tokens accrued up to ``now`` are credited at the old rate first, so a change never creates or
        loses past accrual; tokens above a smaller new burst are dropped.
        """
        _check_rate(rate)
        if burst is not None:
            _check_burst(burst)
        self._refill(now)
        self._rate = float(rate)
        if burst is not None:
            self._burst = float(burst)
            self._tokens = min(self._tokens, self._burst)

    def _refill(self, now: float) -> None:
        elapsed = now - self._last
        if elapsed > 0.0:
            self._tokens = min(self._burst, self._tokens + elapsed * self._rate)
            self._last = now


class AimdRate:
    """Additive-increase / multiplicative-decrease control of a channel's send rate.

    Starts at ``max_rate``. :meth:`on_throttled` (a 429 or provider throttle code) multiplies the rate by
    ``decrease_factor`` at most once per ``cooldown_s``, so a burst of 429s from requests already in
    flight halves it once, and never below ``floor`` (default: 1% of ``max_rate`` but at least 0.5/s,
    and never above ``max_rate``). :meth:`on_success` adds ``increase_per_s * max_rate`` per second
    elapsed since the last change, up to ``max_rate``.
    """

    __slots__ = (
        "_cooldown_s",
        "_decrease_factor",
        "_floor",
        "_increase_per_s",
        "_last_decrease",
        "_last_increase",
        "_max_rate",
        "_rate",
    )

    def __init__(
        self,
        max_rate: float,
        now: float,
        *,
        floor: float | None = None,
        cooldown_s: float = 1.0,
        increase_per_s: float = 0.05,
        decrease_factor: float = 0.5,
    ) -> None:
        if not (math.isfinite(max_rate) and max_rate > 0):
            raise ValueError(f"max_rate must be a finite number > 0, got {max_rate}")
        if floor is None:
            floor = min(max_rate, max(0.01 * max_rate, 0.5))
        if not 0 < floor <= max_rate:
            raise ValueError(f"floor must be in (0, max_rate], got {floor}")
        if not 0 < decrease_factor < 1:
            raise ValueError(f"decrease_factor must be in (0, 1), got {decrease_factor}")
        if not (math.isfinite(increase_per_s) and increase_per_s >= 0):
            raise ValueError(f"increase_per_s must be a finite number >= 0, got {increase_per_s}")
        if not (math.isfinite(cooldown_s) and cooldown_s >= 0):
            raise ValueError(f"cooldown_s must be a finite number >= 0, got {cooldown_s}")
        self._max_rate = float(max_rate)
        self._floor = float(floor)
        self._cooldown_s = float(cooldown_s)
        self._increase_per_s = float(increase_per_s)
        self._decrease_factor = float(decrease_factor)
        self._rate = self._max_rate
        self._last_decrease: float | None = None
        self._last_increase = float(now)

    @property
    def rate(self) -> float:
        """The current rate, tokens per second, in ``[floor, max_rate]``."""
        return self._rate

    @property
    def max_rate(self) -> float:
        """The configured limit the rate recovers to."""
        return self._max_rate

    @property
    def floor(self) -> float:
        """The lowest rate throttling can push it to."""
        return self._floor

    def on_throttled(self, now: float) -> bool:
        """Record a throttle signal; return True if it lowered the rate (False inside the cooldown)."""
        if self._last_decrease is not None and now - self._last_decrease < self._cooldown_s:
            return False
        self._rate = max(self._floor, self._rate * self._decrease_factor)
        self._last_decrease = now
        # Recovery is measured from the decrease, not from before it.
        self._last_increase = now
        return True

    def on_success(self, n: int, now: float) -> float:
        """Record ``n`` successful sends; grow the rate additively; return the new rate.

        ``n <= 0`` changes nothing. Growth is proportional to the time since the last change, so it does
        not depend on how often the sender reports.
        """
        if n <= 0:
            return self._rate
        elapsed = now - self._last_increase
        if elapsed > 0:
            self._rate = min(self._max_rate, self._rate + self._increase_per_s * self._max_rate * elapsed)
            self._last_increase = now
        return self._rate


def worker_share(channel_rate: float, owned_partitions: int, total_partitions: int) -> float:
    """This worker's part of ``channel_rate``: ``channel_rate * owned / total``; 0.0 if it owns none.

    Raises ``ValueError`` if ``total_partitions < 1`` or ``owned_partitions > total_partitions``.
    """
    if total_partitions < 1:
        raise ValueError(f"total_partitions must be >= 1, got {total_partitions}")
    if owned_partitions > total_partitions:
        raise ValueError(
            f"owned_partitions ({owned_partitions}) cannot exceed total_partitions ({total_partitions})"
        )
    if owned_partitions <= 0 or channel_rate <= 0:
        return 0.0
    return channel_rate * owned_partitions / total_partitions


def _check_rate(rate: float) -> None:
    if not (math.isfinite(rate) and rate >= 0):
        raise ValueError(f"rate must be a finite number >= 0, got {rate}")


def _check_burst(burst: float) -> None:
    if not (math.isfinite(burst) and burst >= 1):
        raise ValueError(f"burst must be a finite number >= 1, got {burst}")
