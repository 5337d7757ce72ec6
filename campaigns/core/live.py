"""Live per-campaign counts: summing ``OutcomeCounts`` deltas, and the live-view snapshot.

The Faust live view (``streams/live.py``) keeps, per campaign and per tumbling window (and per campaign for
the running totals), one *state*: a JSON-able dict of summed counters plus the position of the last source
record folded into it. This module is the arithmetic on those states; it knows nothing of Faust or Kafka.

Guarantees:

* :func:`fold` is idempotent with respect to the source topic: a record at or below the state's watermark
  (same source partition, offset <= the last one folded) is skipped, so re-delivering records after a crash
  (Faust commits offsets after the table changelog is written, not atomically with it) never counts twice.
* Counters are integers and only ever grow; ``latency_max_ms`` is a maximum, ``latency_sum_ms`` a sum.
* :func:`snapshot` is a pure function of the states and the reference time ``at_ms`` (passed in).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from campaigns.core.vocabulary import COUNTERS

__all__ = ["COUNTERS", "SourceRecord", "empty_state", "fold", "snapshot", "window_summary"]

_SUMMED = (*COUNTERS, "latency_count")


@dataclass(frozen=True, slots=True)
class SourceRecord:
    """One decoded ``OutcomeCounts`` record and where it was read (its source topic partition and offset)."""

    partition: int
    offset: int
    counts: Mapping[str, Any]
    """The decoded record: every name of :data:`COUNTERS`, ``latency_count``, ``latency_sum_ms``,
    ``latency_max_ms`` (other keys are ignored)."""


def fold(state: Mapping[str, Any] | None, records: Iterable[SourceRecord]) -> dict[str, Any] | None:
    """Add ``records`` (in source order) to ``state``; returns the new state, or ``None`` if none was new.

    A record is new unless it comes from the state's source partition at an offset <= the state's watermark.
    A record from another partition (the topic was repartitioned) is always new and moves the watermark there.
    The returned state has every counter, ``latency_sum_ms``, ``latency_max_ms``, ``records`` (how many
    records were folded in) and ``src`` (``[partition, offset]`` of the last one).
    """
    src = state.get("src") if state else None
    new: dict[str, Any] | None = None
    for record in records:
        if src is not None and record.partition == src[0] and record.offset <= src[1]:
            continue
        if new is None:
            new = empty_state() if not state else dict(state)
        counts = record.counts
        for name in _SUMMED:
            new[name] += int(counts.get(name, 0))
        new["latency_sum_ms"] += float(counts.get("latency_sum_ms", 0.0))
        new["latency_max_ms"] = max(new["latency_max_ms"], float(counts.get("latency_max_ms", 0.0)))
        new["records"] += 1
        src = [record.partition, record.offset]
        new["src"] = src
    return new


def empty_state() -> dict[str, Any]:
    """A state with every counter at zero and no watermark."""
    state: dict[str, Any] = dict.fromkeys(_SUMMED, 0)
    state.update(latency_sum_ms=0.0, latency_max_ms=0.0, records=0, src=None)
    return state


def window_summary(state: Mapping[str, Any] | None, start_ms: int, window_s: int) -> dict[str, Any]:
    """The JSON shape of one window: bounds (ISO-8601 UTC), counters, latency mean/max (ms), records folded."""
    summary: dict[str, Any] = {
        "start": _iso(start_ms),
        "end": _iso(start_ms + window_s * 1000),
    }
    summary.update(_counters(state))
    return summary


def snapshot(
    campaign_id: str,
    totals: Mapping[str, Any] | None,
    current: Mapping[str, Any] | None,
    previous: Mapping[str, Any] | None,
    *,
    window_s: int,
    current_start_ms: int,
    at_ms: int,
) -> dict[str, Any]:
    """What ``GET /campaigns/{id}/live`` returns.

    ``current`` is the state of the window starting at ``current_start_ms`` (the one holding ``at_ms``),
    ``previous`` the one before. ``sends_per_s`` is the previous (last complete) window's ``sent`` divided by
    ``window_s``; ``current_sends_per_s`` the current window's ``sent`` divided by the seconds elapsed in it
    (at least 1, so a window's first second does not read as a spike).
    """
    current_window = window_summary(current, current_start_ms, window_s)
    previous_window = window_summary(previous, current_start_ms - window_s * 1000, window_s)
    elapsed_s = max(1.0, (at_ms - current_start_ms) / 1000)
    return {
        "campaign_id": campaign_id,
        "at": _iso(at_ms),
        "window_s": window_s,
        "totals": _counters(totals),
        "current_window": current_window,
        "previous_window": previous_window,
        "sends_per_s": previous_window["sent"] / window_s,
        "current_sends_per_s": current_window["sent"] / elapsed_s,
    }


def _counters(state: Mapping[str, Any] | None) -> dict[str, Any]:
    state = state or {}
    out: dict[str, Any] = {name: int(state.get(name, 0)) for name in COUNTERS}
    latency_count = int(state.get("latency_count", 0))
    out["latency_count"] = latency_count
    out["latency_mean_ms"] = float(state.get("latency_sum_ms", 0.0)) / latency_count if latency_count else None
    out["latency_max_ms"] = float(state.get("latency_max_ms", 0.0)) if latency_count else None
    out["records"] = int(state.get("records", 0))
    return out


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")
