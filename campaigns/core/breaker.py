"""Breakers: per campaign (a sliding failure ratio against the campaign's failure threshold) and per channel
(a provider account that refuses our credential, or a run of transport errors, pauses the channel).

The per-campaign breaker:

Semantics (what the senders and the docs mean by "the failure threshold"):

* An **attempt** is a provider call whose result is final for that message: ``sent``, or ``failed``
  (a permanent error, or the last retry exhausted). A transient error that goes to a retry tier is not an
  attempt yet; it becomes one when its last retry ends.
* The breaker looks at the last ``window`` attempts, ``window = max(min_sample, MIN_WINDOW)``: a sliding
  window, not a cumulative ratio, so an early run of failures cannot be diluted by the sends that
  preceded it, and a long healthy campaign does not hide a provider that starts rejecting everything.
* It **trips** as soon as it holds at least ``max(min_sample, 1)`` attempts and
  ``failures / attempts_in_window > threshold``. Results are fed in the order the sender records them, so
  the trip happens in the batch in which the threshold was crossed.
* Once tripped it stays tripped (a failed campaign does not come back).

Each worker keeps one set of breakers per channel (:class:`CampaignBreakers`), shared by its sender consumers of
that channel, over the attempts they made: a breaker sees the worker's attempts in the order they were recorded,
whichever consumer made them, so it trips at the same attempt as it would with one consumer. What goes out after
the crossing is bounded by the batches in flight: the one that crossed, and at most one per other sender consumer
(claimed before the campaign failed). With several workers each trips on its own share of the traffic. The
completion stage keeps the cumulative check over every worker's outcomes as a backstop.

The per-channel breaker opens on an account error (HTTP 401/403 for the account, WhatsApp 0/190, Twilio
20003, SMTP 530/535: one is enough, every other call would get the same answer) or on a run of
``TRANSPORT_ERROR_RUN`` transport errors. While it is open no call is made on the channel and no recipient is
failed for it; a half-open probe (one message) is allowed after :func:`next_probe_delay_s`, and its success
closes the breaker. The open/closed state lives in the ``channels`` row, so every worker honours it and an
operator can close it by hand.

Pure: no clock, no I/O. A :class:`FailureBreaker` belongs to one thread; :class:`CampaignBreakers` holds a lock
so a worker's sender threads can share one.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

__all__ = [
    "MIN_WINDOW",
    "TRANSPORT_ERROR_RUN",
    "CampaignBreakers",
    "FailureBreaker",
    "TransportErrorRun",
    "Trip",
    "next_probe_delay_s",
]

# A window of at least this many attempts: a small ``min_sample`` alone would make a burst of ordinary
# failures (a few bad addresses in a row) look like a broken campaign.
MIN_WINDOW = 100


class FailureBreaker:
    """Failed / attempted over the last ``window`` attempts of one campaign, against its threshold."""

    __slots__ = ("_failures", "_min_sample", "_recent", "threshold", "tripped")

    def __init__(self, threshold: float, min_sample: int) -> None:
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be within [0, 1], not {threshold!r}")
        self.threshold = float(threshold)
        self._min_sample = max(int(min_sample), 1)
        self._recent: deque[bool] = deque(maxlen=max(self._min_sample, MIN_WINDOW))
        self._failures = 0
        self.tripped = False

    @property
    def window(self) -> int:
        """How many of the most recent attempts the ratio covers."""
        return self._recent.maxlen or 0

    @property
    def attempts(self) -> int:
        """Attempts in the window now (at most :attr:`window`)."""
        return len(self._recent)

    @property
    def failures(self) -> int:
        """Failed attempts in the window now."""
        return self._failures

    def record(self, failed: bool) -> bool:
        """Add one attempt's result; True if the breaker is (now or already) tripped."""
        if len(self._recent) == self._recent.maxlen and self._recent[0]:
            self._failures -= 1
        self._recent.append(failed)
        self._failures += failed
        if not self.tripped and len(self._recent) >= self._min_sample:
            self.tripped = self._failures / len(self._recent) > self.threshold
        return self.tripped


@dataclass(frozen=True, slots=True)
class Trip:
    """A tripped breaker as it stood when the batch that tripped it (or met it tripped) was recorded."""

    failures: int
    attempts: int
    window: int
    threshold: float


class CampaignBreakers:
    """The failure breakers of one worker's campaigns on one channel, shared by its sender consumers (threads).

    :meth:`record` feeds one batch's results under a lock, so a breaker sees every consumer's attempts in the
    order they were recorded and trips at the attempt one consumer alone would have tripped it at.
    """

    def __init__(self) -> None:
        self._breakers: dict[str, FailureBreaker] = {}
        self._lock = threading.Lock()

    def record(self, results: Iterable[tuple[str, bool]],
               limits: Callable[[str], tuple[float, int]]) -> dict[str, Trip]:
        """Feed ``(campaign, failed)`` attempts in order; ``limits(campaign)`` gives a new breaker's
        (threshold, min_sample). Returns the campaigns whose breaker is tripped after this batch (newly or
        already: whoever meets a tripped breaker fails its campaign, and failing it twice is a no-op)."""
        tripped: dict[str, Trip] = {}
        with self._lock:
            for campaign, failed in results:
                breaker = self._breakers.get(campaign)
                if breaker is None:
                    breaker = self._breakers[campaign] = FailureBreaker(*limits(campaign))
                if breaker.record(failed):
                    tripped[campaign] = Trip(breaker.failures, breaker.attempts, breaker.window, breaker.threshold)
        return tripped


# --- the per-channel (provider account) breaker -------------------------------------------------------

TRANSPORT_ERROR_RUN = 50
"""Consecutive transport errors (connection refused, timeouts, 5xx) that open a channel's breaker."""

FIRST_PROBE_S = 5.0
MAX_PROBE_S = 300.0


def next_probe_delay_s(failed_probes: int) -> float:
    """Seconds from opening (or from a failed probe) to the next half-open probe: 5 s, doubling after each
    failed probe up to 5 min. Pure."""
    return min(FIRST_PROBE_S * 2.0 ** min(max(failed_probes, 0), 16), MAX_PROBE_S)


class TransportErrorRun:
    """Counts consecutive transport errors of one channel; any other answer from the provider ends the run.

    ``record`` returns True once the run reaches ``limit``: the provider or the path to it is down, and
    failing recipients for it (after their retries) would lose them for nothing.
    """

    __slots__ = ("length", "limit")

    def __init__(self, limit: int = TRANSPORT_ERROR_RUN) -> None:
        self.limit = max(1, limit)
        self.length = 0

    def record(self, transport_error: bool) -> bool:
        self.length = self.length + 1 if transport_error else 0
        return self.length >= self.limit
