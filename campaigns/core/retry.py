"""Retry policy: how long to wait before the next attempt, which retry tier it goes to, or the DLQ.

Attempt numbering: ``attempt`` is the 0-based number of the delivery attempt that just failed (0 = the
first try). A policy with ``max_retries = N`` allows ``N`` retries, so at most ``N + 1`` attempts; the
failure of attempt ``N`` exhausts it.

Guarantees:

* All functions are pure: randomness (``rand`` in ``[0, 1)``) and time (``now``) are passed in.
* :func:`next_delay_s` is ``min(base * 2**attempt, max)`` scaled by a jitter factor in
  ``[1 - jitter, 1 + jitter)``; so it is never negative, never more than ``max * (1 + jitter)``, and for a
  fixed ``rand`` it never decreases as ``attempt`` grows. It never overflows, whatever the attempt.
* :func:`decide` sends permanent failures and exhausted retries to the dead-letter queue with the reason
  ``permanent_failure`` / ``retries_exhausted``; everything else is retried at a ``not_before`` time in a
  tier from :func:`tier_for_wait`.
* Retry tiers are **by delay**, never by attempt: tier ``n`` holds each record for a fixed
  ``tier_delays_s[n-1]`` after it was written, so records leave a tier in the order they entered it and a
  long wait can never hold up a short one behind it (no head-of-line blocking across campaigns). A record
  waits in the largest tier not longer than its remaining wait, then moves down (:func:`tier_for_wait`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import pairwise
from typing import Literal

from campaigns.core._values import shown
from campaigns.errors import ValidationError

__all__ = [
    "DEFAULT_TIER_DELAYS_S",
    "MAX_BACKOFF_S",
    "MAX_RETRIES_LIMIT",
    "ErrorKind",
    "RetryDecision",
    "RetryPolicy",
    "decide",
    "next_delay_s",
    "policy_problems",
    "tier_for_wait",
]

DEFAULT_TIER_DELAYS_S: tuple[float, ...] = (1.0, 5.0, 30.0, 300.0, 3600.0)
"""Retry tier delays (seconds) unless the settings say otherwise: tier n holds a record this long."""

ErrorKind = Literal["transient", "throttled", "permanent"]
_ERROR_KINDS: frozenset[str] = frozenset({"transient", "throttled", "permanent"})

MAX_RETRIES_LIMIT = 10
MAX_BACKOFF_S = 86_400.0
"""Upper bound for ``backoff_base_s`` / ``backoff_max_s`` and for an honoured ``retry_after_s``: one day."""

# 2.0 ** 1024 overflows a float; beyond ~60 doublings every real policy is at its cap anyway.
_MAX_EXPONENT = 1023


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How a campaign retries transient failures.

    ``max_retries`` 0..10; ``backoff_base_s`` in (0, 86400] (the first retry's delay, seconds);
    ``backoff_max_s`` in [``backoff_base_s``, 86400] (the cap before jitter, seconds); ``jitter`` 0..1
    (the fraction each delay may move up or down). Construction raises :class:`ValidationError` listing
    every broken bound.
    """

    max_retries: int = 3
    backoff_base_s: float = 1.0
    backoff_max_s: float = 60.0
    jitter: float = 0.2

    def __post_init__(self) -> None:
        problems = policy_problems(
            self.max_retries, self.backoff_base_s, self.backoff_max_s, self.jitter, prefix="retry_policy"
        )
        if problems:
            raise ValidationError(problems)


def policy_problems(
    max_retries: object, base: object, cap: object, jitter: object, *, prefix: str
) -> list[str]:
    """Every bound a would-be :class:`RetryPolicy` breaks, as ``"<prefix>.<field>: ..."`` messages."""
    problems: list[str] = []
    if isinstance(max_retries, bool) or not isinstance(max_retries, int):
        problems.append(f"{prefix}.max_retries: must be an integer, got {shown(max_retries)}")
    elif not 0 <= max_retries <= MAX_RETRIES_LIMIT:
        problems.append(f"{prefix}.max_retries: must be between 0 and {MAX_RETRIES_LIMIT}, got {max_retries}")
    base_s = _as_number(base)
    if base_s is None:
        problems.append(f"{prefix}.backoff_base_s: must be a finite number, got {shown(base)}")
    elif not 0 < base_s <= MAX_BACKOFF_S:
        problems.append(
            f"{prefix}.backoff_base_s: must be greater than 0 and at most {MAX_BACKOFF_S:g}, got {base}"
        )
        base_s = None
    cap_s = _as_number(cap)
    if cap_s is None:
        problems.append(f"{prefix}.backoff_max_s: must be a finite number, got {shown(cap)}")
    elif not 0 < cap_s <= MAX_BACKOFF_S:
        problems.append(
            f"{prefix}.backoff_max_s: must be greater than 0 and at most {MAX_BACKOFF_S:g}, got {cap}"
        )
    elif base_s is not None and cap_s < base_s:
        problems.append(f"{prefix}.backoff_max_s: must be at least backoff_base_s ({base}), got {cap}")
    jitter_f = _as_number(jitter)
    if jitter_f is None:
        problems.append(f"{prefix}.jitter: must be a finite number, got {shown(jitter)}")
    elif not 0 <= jitter_f <= 1:
        problems.append(f"{prefix}.jitter: must be between 0 and 1, got {jitter}")
    return problems


def _as_number(value: object) -> float | None:
    """``value`` as a float if it is a finite int or float (bools are not numbers here), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:  # an int too big for a float
        return None
    return number if math.isfinite(number) else None


@dataclass(frozen=True, slots=True)
class RetryDecision:
    """What to do with a failed message.

    ``action == "retry"``: produce it to retry tier ``tier`` (1-based) with ``not_before`` (tz-aware,
    ``now + delay_s``) and ``attempt`` = the number of the next attempt. ``action == "dead_letter"``:
    produce it to the DLQ; ``reason`` is ``"permanent_failure"`` or ``"retries_exhausted"`` and the
    retry fields are ``None``.
    """

    action: Literal["retry", "dead_letter"]
    reason: Literal["permanent_failure", "retries_exhausted"] | None = None
    attempt: int | None = None
    tier: int | None = None
    delay_s: float | None = None
    not_before: datetime | None = None

    @property
    def not_before_ms(self) -> int | None:
        """``not_before`` as integer epoch milliseconds (rounded up, so never earlier), for Avro."""
        if self.not_before is None:
            return None
        return math.ceil(self.not_before.timestamp() * 1000)


def next_delay_s(policy: RetryPolicy, attempt: int, rand: float) -> float:
    """Seconds to wait after the failure of attempt ``attempt`` (0-based).

    ``min(base * 2**attempt, max)`` times ``1 + jitter * (2 * rand - 1)``; ``rand`` must be in ``[0, 1)``
    (``random.random()`` in production, a constant in tests; ``rand = 0.5`` means no jitter).
    """
    if attempt < 0:
        raise ValueError(f"attempt must be >= 0, got {attempt}")
    if not 0.0 <= rand < 1.0:
        raise ValueError(f"rand must be in [0, 1), got {rand}")
    raw = policy.backoff_base_s * 2.0 ** min(attempt, _MAX_EXPONENT)
    capped = min(raw, policy.backoff_max_s)
    return capped * (1.0 + policy.jitter * (2.0 * rand - 1.0))


def tier_for_wait(wait_s: float, tier_delays_s: Sequence[float]) -> int:
    """The retry tier (1-based) a record that must still wait ``wait_s`` seconds goes to: the one with the
    largest delay not longer than the wait (so it is never held past its time by its tier), or tier 1 when
    the wait is shorter than every delay (then it is due by the time tier 1 releases it, at most
    ``tier_delays_s[0]`` late). ``tier_delays_s`` must be increasing and positive.
    """
    if not tier_delays_s:
        raise ValueError("tier_delays_s must not be empty")
    if any(b <= a for a, b in pairwise(tier_delays_s)) or tier_delays_s[0] <= 0:
        raise ValueError(f"tier_delays_s must be positive and increasing, got {tuple(tier_delays_s)}")
    tier = 1
    for n, delay in enumerate(tier_delays_s, start=1):
        if delay <= wait_s:
            tier = n
    return tier


def decide(
    policy: RetryPolicy,
    attempt: int,
    error_kind: ErrorKind,
    rand: float,
    now: datetime,
    *,
    tier_delays_s: Sequence[float] = DEFAULT_TIER_DELAYS_S,
    retry_after_s: float | None = None,
) -> RetryDecision:
    """Retry or dead-letter the message whose attempt ``attempt`` (0-based) just failed.

    * ``permanent`` -> dead letter, ``permanent_failure`` (whatever the attempt).
    * ``transient`` / ``throttled`` with retries left -> retry after :func:`next_delay_s`; a provider's
      ``retry_after_s`` hint (HTTP ``Retry-After``) is honoured as a lower bound on the delay, up to
      :data:`MAX_BACKOFF_S`. Throttled attempts count against ``max_retries`` like transient ones (so a
      provider that throttles forever cannot keep a message alive forever); the sender is expected to
      slow down its rate on throttling (:class:`~campaigns.core.rate.AimdRate`).
    * retries used up -> dead letter, ``retries_exhausted``.

    ``now`` must be timezone-aware; ``not_before`` is in the same timezone.
    """
    if error_kind not in _ERROR_KINDS:
        raise ValueError(f"error_kind must be one of transient, throttled, permanent; got {error_kind!r}")
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    if attempt < 0:
        raise ValueError(f"attempt must be >= 0, got {attempt}")
    if error_kind == "permanent":
        return RetryDecision(action="dead_letter", reason="permanent_failure")
    if attempt >= policy.max_retries:
        return RetryDecision(action="dead_letter", reason="retries_exhausted")
    delay = next_delay_s(policy, attempt, rand)
    if retry_after_s is not None and math.isfinite(retry_after_s):
        delay = max(delay, min(float(retry_after_s), MAX_BACKOFF_S))
    return RetryDecision(
        action="retry",
        attempt=attempt + 1,
        tier=tier_for_wait(delay, tier_delays_s),
        delay_s=delay,
        not_before=now + timedelta(seconds=delay),
    )
