"""``campaign_analytics`` writes of the Faust analytics (``streams/tally.py``, migration 0007), and what
completion (``streams/completion.py``) and the analytics' backing check read.

:class:`AnalyticsStore` is what completion and the backing check need of the database, one transaction per call;
:class:`PostgresAnalyticsStore` is it on a psycopg2 connection and :class:`sinks.memory.MemoryAnalyticsStore` the
in-memory fake their unit tests use.

A *part* is the absolute count of one (campaign, window, source partition of ``delivery.outcomes``), with
``src_offset``, the highest source offset folded into it; ``window_start`` NULL is the running totals. A
``campaign_analytics`` row is the sum of its parts. Every function takes a psycopg2 cursor and never commits:
the caller writes one batch in one transaction.

Guarantees:

* **Idempotent by construction.** :func:`write_parts` stores a part only if its ``src_offset`` is higher than
  the stored one, and re-sums only the rows whose parts changed. Writing the same parts again - after a crash, a
  rebalance, a replay, a periodic full flush - changes nothing (not even ``updated_at``); an older part arriving
  after a newer one (two owners around a rebalance) is ignored.
* **Nothing dropped.** A late outcome changes only its own part; the row is re-summed from every stored part.
* **Concurrent writers.** The rows being re-summed are locked (in key order) before the parts are summed, in a
  statement of its own, so of two writers of one row the second sums after the first committed.
"""

from __future__ import annotations

import select
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, Protocol

import psycopg2
import psycopg2.extras

from campaigns.core.vocabulary import COUNTERS
from sinks import campaign_progress, recipient_log
from sinks.campaign_progress import CompletionRow
from sinks.connection import KEY_LOOKUPS_HERE, StoreConnection

Key = tuple[str, int]  # (campaign, recipient)

VALUES = (*COUNTERS, "latency_count", "latency_sum_ms", "latency_max_ms")

# Completion (``streams.completion.CompletionStage``) listens on this channel: the Faust analytics' flush notifies it
# when it changed campaign totals, so a campaign whose last outcome was just counted completes at once rather
# than at the next sweep.
TOTALS_CHANNEL = "campaign_analytics_totals"
NOTIFY_TOTALS_SQL = f"NOTIFY {TOTALS_CHANNEL}"
LISTEN_TOTALS_SQL = f"LISTEN {TOTALS_CHANNEL}"

KNOWN_CAMPAIGNS_SQL = "SELECT id::text FROM campaigns WHERE id = ANY(%s::uuid[])"

UPSERT_PARTS_SQL = f"""
INSERT INTO campaign_analytics_parts (campaign_id, window_start, source_partition, {", ".join(VALUES)},
    src_offset, updated_at)
VALUES %s
ON CONFLICT (campaign_id, window_start, source_partition) DO UPDATE SET
    {", ".join(f"{c} = EXCLUDED.{c}" for c in VALUES)},
    src_offset = EXCLUDED.src_offset, updated_at = EXCLUDED.updated_at
WHERE EXCLUDED.src_offset > campaign_analytics_parts.src_offset
RETURNING campaign_id::text, window_start
"""

ENSURE_ROWS_SQL = """
INSERT INTO campaign_analytics (campaign_id, window_start, window_end) VALUES %s
ON CONFLICT (campaign_id, window_start) DO NOTHING
"""

LOCK_ROWS_SQL = """
SELECT a.id FROM campaign_analytics AS a
JOIN (VALUES %s) AS k (campaign_id, window_start)
  ON a.campaign_id = k.campaign_id AND a.window_start IS NOT DISTINCT FROM k.window_start
ORDER BY a.campaign_id, a.window_start NULLS FIRST
FOR UPDATE OF a
"""

RESUM_SQL = f"""
WITH keys (campaign_id, window_start) AS (VALUES %s),
sums AS (
    SELECT p.campaign_id, p.window_start,
        {", ".join(f"sum(p.{c})::bigint AS {c}" for c in (*COUNTERS, "latency_count"))},
        sum(p.latency_sum_ms) AS latency_sum_ms, max(p.latency_max_ms) AS latency_max_ms
    FROM campaign_analytics_parts AS p
    JOIN keys AS k ON p.campaign_id = k.campaign_id AND p.window_start IS NOT DISTINCT FROM k.window_start
    GROUP BY p.campaign_id, p.window_start
)
UPDATE campaign_analytics AS a SET
    {", ".join(f"{c} = s.{c}" for c in VALUES)}, updated_at = now()
FROM sums AS s
WHERE a.campaign_id = s.campaign_id AND a.window_start IS NOT DISTINCT FROM s.window_start
RETURNING a.campaign_id::text, a.window_start, a.window_end, {", ".join(f"a.{c}" for c in VALUES)}, a.updated_at,
    a.complained
"""

# complained: counted only by the receipts stage (sinks/receipts.py), published with the row.
ROW_FIELDS = ("campaign_id", "window_start", "window_end", *VALUES, "updated_at", "complained")

_KEY_TEMPLATE = "(%s::uuid, %s::timestamptz)"


def known_campaigns(cur: Any, campaign_ids: Iterable[str]) -> set[str]:
    """Which of ``campaign_ids`` (canonical UUID text) are campaigns."""
    cur.execute(KNOWN_CAMPAIGNS_SQL, (sorted(set(campaign_ids)),))
    return {row[0] for row in cur.fetchall()}


def write_parts(
    cur: Any,
    parts: Sequence[tuple[str, datetime | None, datetime | None, int, dict[str, Any]]],
    now: datetime,
) -> list[dict[str, Any]]:
    """Store ``parts`` - ``(campaign_id, window_start, window_end, source_partition, part)``, ``part`` holding
    :data:`VALUES` and ``src`` - and re-sum the ``campaign_analytics`` rows whose parts changed.

    Returns those rows (as dicts of :data:`ROW_FIELDS`), to publish on ``campaign.analytics``. Every campaign must
    exist (see :func:`known_campaigns`)."""
    if not parts:
        return []
    ordered = sorted(parts, key=lambda p: (p[0], p[1] is not None, p[1] or now, p[3]))
    changed = psycopg2.extras.execute_values(
        cur, UPSERT_PARTS_SQL,
        [(cid, start, partition, *(part[c] for c in VALUES), part["src"], now)
         for cid, start, _end, partition, part in ordered],
        page_size=len(ordered), fetch=True,
    )
    if not changed:
        return []
    ends = {(cid, start): end for cid, start, end, _p, _part in ordered}
    keys = sorted({(cid, start) for cid, start in changed}, key=lambda k: (k[0], k[1] is not None, k[1] or now))
    psycopg2.extras.execute_values(cur, ENSURE_ROWS_SQL, [(cid, start, ends.get((cid, start))) for cid, start in keys],
                                   page_size=len(keys))
    psycopg2.extras.execute_values(cur, LOCK_ROWS_SQL, keys, template=_KEY_TEMPLATE, page_size=len(keys))
    rows = psycopg2.extras.execute_values(cur, RESUM_SQL, keys, template=_KEY_TEMPLATE, page_size=len(keys),
                                          fetch=True)
    if any(start is None for _cid, start in keys):
        cur.execute(NOTIFY_TOTALS_SQL)  # delivered at commit (one per transaction): completion wakes up
    return [dict(zip(ROW_FIELDS, row, strict=True)) for row in rows]


class AnalyticsStore(Protocol):
    """Completion's and the backing check's database: each call is one transaction of its own."""

    def known_campaigns(self, campaign_ids: Iterable[str]) -> set[str]:
        """Which of ``campaign_ids`` (canonical UUID text) are campaigns."""
        ...

    def log_rows(self, keys: Sequence[Key]) -> dict[Key, tuple[str, int]]:
        """``(status, attempts)`` of the recipient-log rows of ``keys`` that exist."""
        ...

    def active_expanded(self) -> set[str]:
        """The active campaigns whose expansion is done."""
        ...

    def completion_rows(self, campaign_ids: Iterable[str]) -> list[CompletionRow]:
        """Those campaigns' state and analytics totals."""
        ...

    def terminal_count(self, campaign_id: str) -> int:
        """How many of the campaign's recipient-log rows are terminal."""
        ...

    def wait_for_totals(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for campaign totals to change (the Faust analytics' flush); whether they did.
        May return True spuriously, never misses a change made after the previous call returned."""
        ...

    def close(self) -> None: ...


class PostgresAnalyticsStore:
    """:class:`AnalyticsStore` on one psycopg2 connection (``dsn``): each method one transaction, rolled back if it
    raises (the connection is then usable again, or the stage is rebuilt if PostgreSQL went away)."""

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._conn = StoreConnection(dsn)
        self._listener: Any = None  # an autocommit connection LISTENing on TOTALS_CHANNEL, opened on first wait

    def known_campaigns(self, campaign_ids: Iterable[str]) -> set[str]:
        with self._conn.transaction() as cur:
            return known_campaigns(cur, campaign_ids)

    def log_rows(self, keys: Sequence[Key]) -> dict[Key, tuple[str, int]]:
        with self._conn.transaction() as cur:
            cur.execute(KEY_LOOKUPS_HERE)  # a batch of key lookups: never planned as a scan of the log
            return {(c, r): (status, attempts) for c, r, status, attempts in recipient_log.statuses(cur, keys)}

    def active_expanded(self) -> set[str]:
        with self._conn.transaction() as cur:
            return campaign_progress.active_expanded(cur)

    def completion_rows(self, campaign_ids: Iterable[str]) -> list[CompletionRow]:
        with self._conn.transaction() as cur:
            return campaign_progress.completion_rows(cur, list(campaign_ids))

    def terminal_count(self, campaign_id: str) -> int:
        with self._conn.transaction() as cur:
            return campaign_progress.terminal_count(cur, campaign_id)

    def wait_for_totals(self, timeout_s: float) -> bool:
        if self._listener is None:
            self._listener = psycopg2.connect(self._dsn)
            self._listener.autocommit = True
            with self._listener.cursor() as cur:
                cur.execute(LISTEN_TOTALS_SQL)
            return True  # a change between the last sweep and the LISTEN would be missed: sweep now
        listener = self._listener
        if not listener.notifies and select.select([listener], [], [], timeout_s)[0]:
            listener.poll()
        changed = bool(listener.notifies)
        listener.notifies.clear()
        return changed

    def close(self) -> None:
        self._conn.close()
        if self._listener is not None:
            self._listener.close()
