"""The channel breaker's state on the ``channels`` row of the enabled account of a kind (migration 0004).

Every function takes a psycopg2 cursor and never commits. ``paused_reason`` NULL means closed. One worker at a
time wins a half-open probe: :func:`take_probe` moves ``probe_at`` on as it takes it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

STATE_SQL = "SELECT paused_reason FROM channels WHERE kind = %s AND enabled"
OPEN_SQL = (
    "UPDATE channels SET paused_reason = %s, paused_at = %s, probe_at = %s, failed_probes = 0 "
    "WHERE kind = %s AND enabled AND paused_reason IS NULL"
)
TAKE_PROBE_SQL = (
    "UPDATE channels SET failed_probes = failed_probes + 1 WHERE kind = %s AND enabled "
    "AND paused_reason IS NOT NULL AND probe_at <= %s RETURNING failed_probes"
)
SET_NEXT_PROBE_SQL = "UPDATE channels SET probe_at = %s WHERE kind = %s AND enabled"
GIVE_BACK_PROBE_SQL = (
    "UPDATE channels SET probe_at = %s, failed_probes = greatest(failed_probes - 1, 0) WHERE kind = %s AND enabled"
)
CLOSE_SQL = (
    "UPDATE channels SET paused_reason = NULL, paused_at = NULL, probe_at = NULL, failed_probes = 0 "
    "WHERE kind = %s AND enabled AND paused_reason IS NOT NULL"
)


def paused_reason(cur: Any, kind: str) -> str | None:
    """Why the channel is paused, or None while it is closed (sending)."""
    cur.execute(STATE_SQL, (kind,))
    row = cur.fetchone()
    return row[0] if row else None


def take_probe(cur: Any, kind: str, now: datetime) -> int | None:
    """The probe, if one is due and nobody took it: the number of probes taken since the channel opened
    (this one included), else None. The caller then sets the next probe time (:func:`set_next_probe`)."""
    cur.execute(TAKE_PROBE_SQL, (kind, now))
    row = cur.fetchone()
    return None if row is None else int(row[0])


def set_next_probe(cur: Any, kind: str, at: datetime) -> None:
    cur.execute(SET_NEXT_PROBE_SQL, (at, kind))


def give_back_probe(cur: Any, kind: str, now: datetime) -> None:
    """A probe that made no provider call: the next one may go at once and does not count as failed."""
    cur.execute(GIVE_BACK_PROBE_SQL, (now, kind))


def open_(cur: Any, kind: str, reason: str, now: datetime, first_probe_at: datetime) -> bool:
    """Open the breaker (if closed); True if this call opened it."""
    cur.execute(OPEN_SQL, (reason, now, first_probe_at, kind))
    return bool(cur.rowcount)


def close(cur: Any, kind: str) -> bool:
    """Close the breaker (if open); True if this call closed it."""
    cur.execute(CLOSE_SQL, (kind,))
    return bool(cur.rowcount)
