"""PostgreSQL writes of the receipts stage (``streams/receipts.py``): recipient rows, analytics, suppressions.

Every function takes a psycopg2 cursor and never commits: the stage applies one batch of receipts in one
transaction (rows, counters and suppressions together), so a crash leaves either all of a batch or none of it.
The statements whose size grows with the batch (:func:`lock_rows`, :func:`update_rows`) take one array literal per
column (``sinks/arrays.py``, ``unnest``); the per-window counts and the suppressions, a handful per batch, are
VALUES lists.

Guarantees:

* :func:`lock_rows` finds the ``sent`` rows of the given provider message ids (per channel: a WhatsApp receipt
  never touches an SMS row) and locks them in (campaign, recipient) order, the order every recipient-log writer
  uses, so the stage cannot deadlock with a sender. The receipt columns are read under that lock, so the caller's
  merge sees the committed state.
* :func:`update_rows` writes timestamps with ``LEAST`` (PostgreSQL's ``LEAST`` ignores NULLs: a set timestamp is
  never cleared, and only ever moves to an earlier reported time) and the merged ``provider_status``.
* :func:`add_counts` adds to the ``campaign_analytics`` window rows and the totals row, and to the receipts'
  own part (``source_partition`` :data:`RECEIPTS_PART`, see below). The caller passes only the timestamps that
  went from NULL to set in this transaction, so a duplicate or a replayed receipt adds nothing.
* :func:`suppress` inserts ``suppressions`` rows; an address already suppressed keeps its first reason.

Why a part: the Faust analytics (``streams/tally.py``, opt-in) re-sums a ``campaign_analytics`` row from its
``campaign_analytics_parts`` whenever one of its parts changes. The receipts' counts therefore also live in a
part of their own (partition -1, never a Kafka partition), so a re-sum keeps them; with the default batch
analytics, nothing reads that part.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import psycopg2
import psycopg2.errors
import psycopg2.extras

from sinks.arrays import array_literal, plain_array_literal
from sinks.connection import StoreConnection

log = logging.getLogger(__name__)

RECEIPT_COUNTERS = ("delivered", "read", "bounced", "complained")
RECEIPTS_PART = -1  # campaign_analytics_parts.source_partition of the receipts' counts

LOCK_ROWS_SQL = """
SELECT l.campaign_id::text, l.recipient_id, l.provider_message_id, l.channel_kind,
       l.delivered_at, l.read_at, l.bounced_at, l.complained_at, l.provider_status,
       CASE l.channel_kind WHEN 'email' THEN lower(cu.email) WHEN 'sms' THEN cu.phone ELSE cu.whatsapp END
FROM campaign_recipient_log AS l
JOIN unnest(%s::text[], %s::text[]) AS v(p, k) ON l.provider_message_id = v.p AND l.channel_kind = v.k
LEFT JOIN customers AS cu ON cu.id = l.recipient_id
WHERE l.status = 'sent' AND l.provider_message_id IS NOT NULL  -- lets the planner use the partial index
ORDER BY l.campaign_id, l.recipient_id
FOR UPDATE OF l
"""

UPDATE_ROWS_SQL = """
UPDATE campaign_recipient_log AS l SET
    delivered_at = LEAST(l.delivered_at, v.d), read_at = LEAST(l.read_at, v.rd),
    bounced_at = LEAST(l.bounced_at, v.b), complained_at = LEAST(l.complained_at, v.cm),
    provider_status = v.s, updated_at = %s
FROM unnest(%s::uuid[], %s::bigint[], %s::timestamptz[], %s::timestamptz[], %s::timestamptz[], %s::timestamptz[],
            %s::text[]) AS v(c, r, d, rd, b, cm, s)
WHERE l.campaign_id = v.c AND l.recipient_id = v.r
"""

ADD_COUNTS_SQL = f"""
INSERT INTO campaign_analytics (campaign_id, window_start, window_end, {", ".join(RECEIPT_COUNTERS)}, updated_at)
VALUES %s
ON CONFLICT (campaign_id, window_start) DO UPDATE SET
    {", ".join(f"{c} = campaign_analytics.{c} + EXCLUDED.{c}" for c in RECEIPT_COUNTERS)},
    updated_at = EXCLUDED.updated_at
RETURNING campaign_id::text, window_start, window_end, sent, failed, retried, skipped, cancelled, delivered, read,
    clicked, bounced, complained, latency_count, latency_sum_ms, latency_max_ms, updated_at
"""
_COUNTS_TEMPLATE = "(%s::uuid, %s::timestamptz, %s::timestamptz, %s, %s, %s, %s, %s::timestamptz)"
ANALYTICS_FIELDS = (
    "campaign_id",
    "window_start",
    "window_end",
    "sent",
    "failed",
    "retried",
    "skipped",
    "cancelled",
    "delivered",
    "read",
    "clicked",
    "bounced",
    "complained",
    "latency_count",
    "latency_sum_ms",
    "latency_max_ms",
    "updated_at",
)

# The counters the Faust analytics re-sums from parts (campaigns.core.tally.COUNTERS); complained is not one of them
# (only this stage counts it, and a re-sum leaves it alone); the parts table has no such column in the migrations.
PART_COUNTERS = ("delivered", "read", "bounced")
ADD_PART_SQL = f"""
INSERT INTO campaign_analytics_parts (campaign_id, window_start, source_partition, {", ".join(PART_COUNTERS)},
    src_offset, updated_at)
VALUES %s
ON CONFLICT (campaign_id, window_start, source_partition) DO UPDATE SET
    {", ".join(f"{c} = campaign_analytics_parts.{c} + EXCLUDED.{c}" for c in PART_COUNTERS)},
    updated_at = EXCLUDED.updated_at
"""
_PART_TEMPLATE = f"(%s::uuid, %s::timestamptz, {RECEIPTS_PART}, %s, %s, %s, -1, %s::timestamptz)"

SUPPRESS_SQL = """
INSERT INTO suppressions (channel_kind, address, reason, source, created_at) VALUES %s
ON CONFLICT (channel_kind, address) DO NOTHING
RETURNING channel_kind, address
"""

RowState = tuple[str, int, str, str, Any, Any, Any, Any, str | None, str | None]
"""(campaign_id, recipient_id, provider_message_id, channel, delivered_at, read_at, bounced_at, complained_at,
provider_status, the customer's current address on that channel)."""


def lock_rows(cur: Any, ids: Sequence[tuple[str, str]]) -> list[RowState]:
    """The ``sent`` rows of ``ids`` - ``(provider_message_id, channel)`` pairs - locked, in (campaign,
    recipient) order. An id without a ``sent`` row is absent."""
    if not ids:
        return []
    pids, channels = zip(*sorted(set(ids)), strict=True)
    cur.execute(LOCK_ROWS_SQL, (array_literal(pids), array_literal(channels)))
    return list(cur.fetchall())


def update_rows(cur: Any, rows: Sequence[tuple[str, int, Any, Any, Any, Any, str | None]], now: datetime) -> None:
    """Write ``(campaign_id, recipient_id, delivered_at, read_at, bounced_at, complained_at, provider_status)``
    of rows locked by :func:`lock_rows` (in that order)."""
    if rows:
        columns = list(zip(*rows, strict=True))
        cur.execute(
            UPDATE_ROWS_SQL,
            (
                now,
                plain_array_literal(columns[0]),
                plain_array_literal(columns[1]),
                *(array_literal(column) for column in columns[2:]),
            ),
        )


def add_counts(
    cur: Any, counts: Sequence[tuple[str, datetime | None, datetime | None, dict[str, int]]], now: datetime
) -> list[dict[str, Any]]:
    """Add ``(campaign_id, window_start, window_end, {counter: n})`` (``window_start`` None = the totals row) to
    ``campaign_analytics`` and to the receipts' part. Returns the rows as they are now (dicts of
    :data:`ANALYTICS_FIELDS`), to publish on ``campaign.analytics``. The campaigns must exist."""
    if not counts:
        return []
    ordered = sorted(counts, key=lambda c: (c[0], c[1] is None, c[1] or now))  # as the analytics stage locks
    values = [(cid, start, end, *(n.get(c, 0) for c in RECEIPT_COUNTERS), now) for cid, start, end, n in ordered]
    rows = psycopg2.extras.execute_values(
        cur, ADD_COUNTS_SQL, values, template=_COUNTS_TEMPLATE, page_size=len(values), fetch=True
    )
    psycopg2.extras.execute_values(
        cur,
        ADD_PART_SQL,
        [(cid, start, *(n.get(c, 0) for c in PART_COUNTERS), now) for cid, start, _end, n in ordered],
        template=_PART_TEMPLATE,
        page_size=len(values),
    )
    return [dict(zip(ANALYTICS_FIELDS, row, strict=True)) for row in rows]


def suppress(cur: Any, entries: Sequence[tuple[str, str, str, str]], now: datetime) -> list[tuple[str, str]]:
    """Insert ``(channel, address, reason, source)`` into ``suppressions``; returns the ``(channel, address)``
    pairs that were new."""
    if not entries:
        return []
    unique = {
        (channel, address): (channel, address, reason, source, now)
        for channel, address, reason, source in sorted(entries)
    }
    added = psycopg2.extras.execute_values(cur, SUPPRESS_SQL, list(unique.values()), page_size=len(unique), fetch=True)
    return [(channel, address) for channel, address in added]


@dataclass(frozen=True)
class ReceiptWrites:
    """What a batch of receipts changes, decided from the locked rows: rows for :func:`update_rows`, counts for
    :func:`add_counts` (without ``now``), entries for :func:`suppress`."""

    updates: list[tuple[str, int, Any, Any, Any, Any, str | None]] = field(default_factory=list)
    counts: list[tuple[str, datetime | None, datetime | None, dict[str, int]]] = field(default_factory=list)
    suppress: list[tuple[str, str, str, str]] = field(default_factory=list)


class ReceiptsStore(Protocol):
    """The receipts stage's database (the port its unit tests fake)."""

    def apply(self, ids: Sequence[tuple[str, str]], plan: Callable[[list[RowState]], ReceiptWrites], now: datetime,
              ) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
        """In ONE transaction: lock the ``sent`` rows of ``ids`` (``(provider message id, channel)``), write what
        ``plan(those rows)`` decides (pure: it must not call the store); the analytics rows as they are now (to
        publish) and the new suppressions. A deadlock or serialization failure is retried (the batch redone)."""
        ...

    def close(self) -> None: ...


class PostgresReceiptsStore:
    """:class:`ReceiptsStore` on one psycopg2 connection."""

    RETRIES = 3

    def __init__(self, dsn: str) -> None:
        self._conn = StoreConnection(dsn)

    def apply(self, ids: Sequence[tuple[str, str]], plan: Callable[[list[RowState]], ReceiptWrites], now: datetime,
              ) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
        for attempt in range(self.RETRIES + 1):
            try:
                with self._conn.transaction() as cur:
                    writes = plan(lock_rows(cur, ids))
                    update_rows(cur, writes.updates, now)
                    published = add_counts(cur, writes.counts, now)
                    suppressed = suppress(cur, writes.suppress, now)
                return published, suppressed
            except (psycopg2.errors.DeadlockDetected, psycopg2.errors.SerializationFailure):
                if attempt == self.RETRIES:
                    raise
                log.warning("receipts: batch hit a deadlock; retrying (%d)", attempt + 1)
        raise AssertionError("unreachable")

    def close(self) -> None:
        self._conn.close()
