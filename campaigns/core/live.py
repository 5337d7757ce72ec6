"""Live per-campaign counts: the newest ``campaign.analytics`` row per window, and the live-view snapshot.

The Faust live view (``streams/live.py``) keeps, per campaign and per tumbling window (and per campaign for
the running totals), one *state*: a JSON-able dict of the row's counters. This module is the arithmetic on
those states; it knows nothing of Faust or Kafka.

Every ``campaign.analytics`` record is an *absolute* row of ``campaign_analytics`` as it was when written, and
every field kept here only ever grows (counters, ``latency_count``, ``latency_sum_ms`` - latencies are never
negative - ``latency_max_ms``, ``updated_at``). So the newest row of a window is the field-wise maximum of all
the rows seen for it, whatever order they came in.

Guarantees:

* :func:`merge` is idempotent, commutative and associative: a record re-delivered after a crash (Faust
  commits offsets after the table changelog is written, not atomically with it), a replay of the whole topic,
  or the rows of two writers interleaved (the analytics flush and the receipts stage, or two analytics workers
  while a partition moves) give the same state: the newest values. No watermark or dedup state is needed.
* :func:`snapshot` is a pure function of the states and the reference time ``at_ms`` (passed in).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from campaigns.core.vocabulary import COUNTERS

__all__ = ["COUNTERS", "GROWING", "merge", "snapshot", "window_summary"]

GROWING: tuple[str, ...] = (*COUNTERS, "complained", "latency_count", "latency_sum_ms", "latency_max_ms", "updated_at")
"""The fields of a ``campaign.analytics`` row the state keeps; each only ever grows (``updated_at`` in epoch ms)."""

_FLOATS = frozenset({"latency_sum_ms", "latency_max_ms"})
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MILLISECOND = timedelta(milliseconds=1)


def merge(state: Mapping[str, Any] | None, rows: Iterable[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The field-wise maximum of ``state`` and ``rows`` (decoded rows; ``updated_at`` in epoch ms or a datetime);
    ``None`` if no row raised any field (nothing to write)."""
    new: dict[str, Any] | None = None
    current: Mapping[str, Any] = state or {}
    for row in rows:
        for name in GROWING:
            value = _number(name, row.get(name, 0))
            if value > current.get(name, 0):
                if new is None:
                    new = {name: _number(name, current.get(name, 0)) for name in GROWING}
                    current = new
                new[name] = value
    return new


def _number(name: str, value: Any) -> int | float:
    if isinstance(value, datetime):
        return (value - _EPOCH) // _MILLISECOND
    return float(value or 0.0) if name in _FLOATS else int(value or 0)


def window_summary(state: Mapping[str, Any] | None, start_ms: int, window_s: int) -> dict[str, Any]:
    """The JSON shape of one window: bounds (ISO-8601 UTC), counters, latency mean/max (ms), when last updated."""
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
    out: dict[str, Any] = {name: int(state.get(name, 0)) for name in (*COUNTERS, "complained")}
    latency_count = int(state.get("latency_count", 0))
    out["latency_count"] = latency_count
    out["latency_mean_ms"] = float(state.get("latency_sum_ms", 0.0)) / latency_count if latency_count else None
    out["latency_max_ms"] = float(state.get("latency_max_ms", 0.0)) if latency_count else None
    updated_ms = int(state.get("updated_at", 0))
    out["updated_at"] = _iso(updated_ms) if updated_ms else None
    return out


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")
