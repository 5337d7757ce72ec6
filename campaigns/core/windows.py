"""Tumbling-window maths for the analytics aggregates.

Guarantees:

* Windows are half-open ``[start, end)``, ``end - start == size_s`` seconds, aligned to the Unix epoch
  (so every worker, partition and replay puts the same instant in the same window) and returned as
  timezone-aware UTC datetimes.
* The arithmetic is in integer microseconds: no float rounding can move an instant across a boundary.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

__all__ = ["EPOCH", "window_bounds", "window_start_ms"]

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def window_bounds(ts: datetime, size_s: int) -> tuple[datetime, datetime]:
    """The ``(start, end)`` of the ``size_s``-second tumbling window containing ``ts``.

    ``ts`` must be timezone-aware (any zone; the bounds are UTC). Raises ``ValueError`` for a naive
    ``ts`` or ``size_s < 1``.
    """
    if ts.tzinfo is None or ts.utcoffset() is None:
        raise ValueError("ts must be timezone-aware")
    _check_size(size_s)
    offset_us = (ts - EPOCH) // _MICROSECOND
    size_us = size_s * 1_000_000
    start_us = offset_us - offset_us % size_us  # Python's % floors, so this also holds before 1970
    start = EPOCH + timedelta(microseconds=start_us)
    return start, start + timedelta(seconds=size_s)


def window_start_ms(ts_ms: int, size_s: int) -> int:
    """The start, in epoch milliseconds, of the ``size_s``-second window containing ``ts_ms``.

    The same windows as :func:`window_bounds`, for Avro ``timestamp-millis`` values.
    """
    _check_size(size_s)
    size_ms = size_s * 1000
    return ts_ms - ts_ms % size_ms


def _check_size(size_s: int) -> None:
    if isinstance(size_s, bool) or not isinstance(size_s, int) or size_s < 1:
        raise ValueError(f"size_s must be an integer >= 1, got {size_s!r}")
