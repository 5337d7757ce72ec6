"""``campaign_recipient_log`` writes of the senders and of expansion: batched, idempotent, one statement each.

Every function takes a psycopg2 cursor and never commits: the stage owns the transaction (and commits it
before producing the records derived from the rows). Keys are ``(campaign_id: str, recipient_id: int)``.

Every batch write takes its rows in (campaign, recipient) order: two writers over overlapping pairs (a sender
cancelling messages while the cancel sweep inserts the same rows) then lock them in the same order and cannot
deadlock.

Guarantees (the UNIQUE (campaign_id, recipient_id) constraint is what makes them hold under any number of
workers, redeliveries and replays):

* :func:`claim` inserts a ``claimed`` row only for pairs that have none: exactly one claim wins a pair.
* :func:`take_over` claims a pair whose row is ``retrying`` (its retry) or a ``claimed`` row whose lease ran
  out (left by a crashed worker); a live claim of another worker is never taken.
* :func:`record_results` writes results only for claims still held by the caller (same ``claimed_at``): a
  claim taken over meanwhile keeps the other worker's result.
* :func:`record_terminal` never overwrites a terminal row; a ``cancelled`` write also ends a ``retrying``
  row. It returns the rows it wrote; when that is fewer than it was given (some had a row already: a page done
  again), :func:`terminal_rows` lists every row in that status, so their outcomes can be (re-)emitted with
  the same ids whatever happened before. The reads that feed a re-emission give the row's ``updated_at``: a
  re-emitted outcome occurred when its row took that status, not when it was emitted again (the analytics'
  allowed lateness relies on it: ``campaigns.core.tally``).
* :func:`settle_in_flight` ends the rows of a cancelled/failed campaign that no sender will end.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from operator import itemgetter
from typing import Any

from sinks.arrays import array_literal, plain_array_literal

Key = tuple[str, int]

# The channel, claim time and lease are the batch's, passed once: PostgreSQL parses a timestamptz array element in
# ~0.9 µs, two per row when they were arrays (docs/benchmarks.md, "Round trips, unsubscribe tokens ...").
CLAIM_SQL = (
    "INSERT INTO campaign_recipient_log (campaign_id, recipient_id, message_id, channel_kind, status, "
    "attempts, claimed_at, lease_until, created_at, updated_at) "
    "SELECT v.c, v.r, v.m, %(channel)s, 'claimed', 0, %(now)s, %(lease)s, %(now)s, %(now)s "
    "FROM unnest(%(campaigns)s::uuid[], %(recipients)s::bigint[], %(messages)s::uuid[]) AS v(c, r, m) "
    "ON CONFLICT (campaign_id, recipient_id) DO NOTHING RETURNING campaign_id::text, recipient_id"
)
TAKE_OVER_SQL = (
    "UPDATE campaign_recipient_log AS l SET status = 'claimed', claimed_at = %s, lease_until = %s, "
    "updated_at = %s FROM unnest(%s::uuid[], %s::bigint[]) AS v(c, r) "
    "WHERE l.campaign_id = v.c AND l.recipient_id = v.r "
    "AND (l.status = 'retrying' OR (l.status = 'claimed' AND l.lease_until < %s)) "
    "RETURNING l.campaign_id::text, l.recipient_id, l.attempts"
)
ROWS_SQL = (
    "SELECT l.campaign_id::text, l.recipient_id, l.status, l.attempts, l.failure_reason, "
    "l.provider_message_id, l.lease_until, l.updated_at FROM campaign_recipient_log AS l "
    "JOIN unnest(%s::uuid[], %s::bigint[]) AS v(c, r) ON l.campaign_id = v.c AND l.recipient_id = v.r"
)
STATUSES_SQL = (
    "SELECT l.campaign_id::text, l.recipient_id, l.status, l.attempts FROM campaign_recipient_log AS l "
    "JOIN unnest(%s::uuid[], %s::bigint[]) AS v(c, r) ON l.campaign_id = v.c AND l.recipient_id = v.r"
)
# The claim time and the send time are the batch's, passed once (as the claim's, above).
RECORD_RESULTS_SQL = (
    "UPDATE campaign_recipient_log AS l SET status = v.s, attempts = v.a, failure_reason = v.f, "
    "provider_message_id = v.p, sent_at = CASE WHEN v.s = 'sent' THEN %(sent_at)s::timestamptz END, "
    "updated_at = now(), lease_until = NULL "
    "FROM unnest(%(campaigns)s::uuid[], %(recipients)s::bigint[], %(statuses)s::text[], %(attempts)s::int[], "
    "%(reasons)s::text[], %(providers)s::text[]) AS v(c, r, s, a, f, p) "
    "WHERE l.campaign_id = v.c AND l.recipient_id = v.r AND l.status = 'claimed' AND l.claimed_at = %(claimed_at)s "
    "RETURNING l.campaign_id::text, l.recipient_id"
)
# A message of a finished campaign: cancelled (reason from the campaign's status) unless terminal already.
CANCEL_MESSAGES_SQL = (
    "INSERT INTO campaign_recipient_log (campaign_id, recipient_id, message_id, channel_kind, status, "
    "failure_reason, created_at, updated_at) "
    "SELECT v.c, v.r, v.m, %s, 'cancelled', 'campaign_' || c.status, %s, %s "
    "FROM unnest(%s::uuid[], %s::bigint[], %s::uuid[]) AS v(c, r, m) JOIN campaigns AS c ON c.id = v.c "
    "ON CONFLICT (campaign_id, recipient_id) DO UPDATE SET status = 'cancelled', "
    "failure_reason = EXCLUDED.failure_reason, updated_at = EXCLUDED.updated_at "
    "WHERE campaign_recipient_log.status = 'retrying' "
    "RETURNING campaign_id::text"
)
CANCELLED_ROWS_SQL = (
    "SELECT l.campaign_id::text, l.recipient_id, l.failure_reason, l.updated_at FROM campaign_recipient_log AS l "
    "JOIN unnest(%s::uuid[], %s::bigint[]) AS v(c, r) ON l.campaign_id = v.c AND l.recipient_id = v.r "
    "WHERE l.status = 'cancelled'"
)
_INSERT_TERMINAL = (
    "INSERT INTO campaign_recipient_log (campaign_id, recipient_id, message_id, channel_kind, status, "
    "failure_reason, created_at, updated_at) SELECT * FROM unnest(%s::uuid[], %s::bigint[], %s::uuid[], "
    "%s::text[], %s::text[], %s::text[], %s::timestamptz[], %s::timestamptz[]) "
    "ON CONFLICT (campaign_id, recipient_id) "
)
# The rows written, as terminal_rows reads them.
_RETURNING_TERMINAL = " RETURNING recipient_id, message_id, failure_reason, updated_at"
RECORD_SKIPPED_SQL = _INSERT_TERMINAL + "DO NOTHING" + _RETURNING_TERMINAL
RECORD_CANCELLED_SQL = _INSERT_TERMINAL + (
    "DO UPDATE SET status = 'cancelled', failure_reason = EXCLUDED.failure_reason, updated_at = EXCLUDED.updated_at "
    "WHERE campaign_recipient_log.status = 'retrying'"
) + _RETURNING_TERMINAL
TERMINAL_ROWS_SQL = (
    "SELECT recipient_id, message_id, failure_reason, updated_at FROM campaign_recipient_log "
    "WHERE campaign_id = %s AND recipient_id = ANY(%s) AND status = %s"
)
SETTLE_IN_FLIGHT_SQL = (
    "UPDATE campaign_recipient_log SET status = 'cancelled', failure_reason = %s, updated_at = %s, "
    "lease_until = NULL WHERE campaign_id = %s "
    "AND (status = 'retrying' OR (status = 'claimed' AND lease_until < %s)) "
    "RETURNING recipient_id, message_id, failure_reason, updated_at"
)
LIVE_CLAIMS_SQL = "SELECT count(*) FROM campaign_recipient_log WHERE campaign_id = %s AND status = 'claimed'"


# (campaign, recipient): every caller passes str and int, so the tuple order is the (campaign, recipient) order.
_by_pair = itemgetter(0, 1)


KEY, VALUE = True, False  # a column of keys (ints, canonical UUIDs: no quoting needed), or of any values


def _columns(rows_: Sequence[Sequence[Any]], *plain: bool) -> list[str]:
    """The rows, in (campaign, recipient) order, as one array literal per column: the arrays ``unnest`` takes.
    ``plain[i]``: column i is a ``KEY`` column (ints and canonical UUIDs, unquoted) or a ``VALUE`` one."""
    if not rows_:
        return ["{}"] * len(plain)
    columns = zip(*sorted(rows_, key=_by_pair), strict=True)
    return [plain_array_literal(c) if p else array_literal(c) for c, p in zip(columns, plain, strict=True)]


_KEYS = (KEY, KEY)


def claim(cur: Any, rows: Sequence[tuple[str, int, str]], channel: str, now: datetime, lease: datetime) -> list[Key]:
    """Claim ``(campaign, recipient, message id)`` on ``channel`` at ``now``, leased until ``lease``; the pairs this
    call won."""
    if not rows:
        return []
    campaigns, recipients, messages = _columns(rows, KEY, KEY, KEY)
    cur.execute(CLAIM_SQL, {"campaigns": campaigns, "recipients": recipients, "messages": messages,
                            "channel": channel, "now": now, "lease": lease})
    return [(c, r) for c, r in cur.fetchall()]


def take_over(cur: Any, keys: Sequence[Key], now: datetime, lease: datetime) -> list[tuple[str, int, int]]:
    """Claim the pairs whose row is retrying or an expired claim; ``(campaign, recipient, attempts so far)``."""
    if not keys:
        return []
    cur.execute(TAKE_OVER_SQL, (now, lease, now, *_columns(keys, *_KEYS), now))
    return cur.fetchall()


def rows(cur: Any, keys: Sequence[Key]) -> list[tuple[str, int, str, int, str | None, str | None, datetime, datetime]]:
    """``(campaign, recipient, status, attempts, failure reason, provider message id, lease until, updated at)``
    of the pairs that have a row."""
    if not keys:
        return []
    cur.execute(ROWS_SQL, _columns(keys, *_KEYS))
    return cur.fetchall()


def statuses(cur: Any, keys: Sequence[Key]) -> list[tuple[str, int, str, int]]:
    """``(campaign, recipient, status, attempts)`` of the pairs that have a row: what the analytics check an outcome
    against, and only that (no timestamps to read, convert and send, once per outcome)."""
    if not keys:
        return []
    cur.execute(STATUSES_SQL, _columns(keys, *_KEYS))
    return cur.fetchall()


def record_results(cur: Any, results: Sequence[tuple[Any, ...]], claimed_at: datetime, sent_at: datetime,
                   ) -> list[Key]:
    """Write ``(campaign, recipient, status, attempts, reason, provider id)`` of claims made at ``claimed_at``, a
    ``sent`` one sent at ``sent_at``; the pairs whose claim the caller still held (only those were written)."""
    if not results:
        return []
    campaigns, recipients, statuses_, attempts, reasons, providers = _columns(results, KEY, KEY, *[VALUE] * 4)
    cur.execute(RECORD_RESULTS_SQL, {"campaigns": campaigns, "recipients": recipients, "statuses": statuses_,
                                     "attempts": attempts, "reasons": reasons, "providers": providers,
                                     "claimed_at": claimed_at, "sent_at": sent_at})
    return [(c, r) for c, r in cur.fetchall()]


def cancel_messages(cur: Any, messages: Sequence[tuple[str, int, str]], channel: str, now: datetime) -> int:
    """``(campaign, recipient, message id)`` of finished campaigns become ``cancelled`` rows unless terminal;
    how many rows changed."""
    if not messages:
        return 0
    cur.execute(CANCEL_MESSAGES_SQL, (channel, now, now, *_columns(messages, KEY, KEY, KEY)))
    return len(cur.fetchall())


def cancelled_rows(cur: Any, keys: Sequence[Key]) -> list[tuple[str, int, str | None, datetime]]:
    """``(campaign, recipient, failure reason, updated at)`` of the pairs whose row is ``cancelled``."""
    if not keys:
        return []
    cur.execute(CANCELLED_ROWS_SQL, _columns(keys, *_KEYS))
    return cur.fetchall()


def record_terminal(cur: Any, status: str, rows_: Sequence[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """``skipped`` or ``cancelled`` rows ``(campaign, recipient, message id, channel, status, reason, created,
    updated)`` for recipients without a terminal row; returns the rows written, ``(recipient, message id, failure
    reason, updated at)`` as :func:`terminal_rows` gives them. All of ``rows_`` written: those are all the rows
    of these recipients in ``status``."""
    if not rows_:
        return []
    sql = RECORD_CANCELLED_SQL if status == "cancelled" else RECORD_SKIPPED_SQL
    cur.execute(sql, _columns(rows_, KEY, KEY, KEY, *[VALUE] * 5))
    return cur.fetchall()


def terminal_rows(cur: Any, campaign: str, recipients: Sequence[int], status: str) -> list[tuple[Any, ...]]:
    """``(recipient, message id, failure reason, updated at)`` of the campaign's recipients whose row is in
    ``status``."""
    cur.execute(TERMINAL_ROWS_SQL, (campaign, list(recipients), status))
    return cur.fetchall()


def settle_in_flight(cur: Any, campaign: str, reason: str, now: datetime) -> tuple[list[tuple[Any, ...]], int]:
    """End the ``retrying`` rows and expired claims of a finished campaign as ``cancelled``; returns those rows
    ``(recipient, message id, reason, updated at)`` and how many live claims remain (their senders record
    them)."""
    cur.execute(SETTLE_IN_FLIGHT_SQL, (reason, now, campaign, now))
    settled = cur.fetchall()
    cur.execute(LIVE_CLAIMS_SQL, (campaign,))
    return settled, int(cur.fetchone()[0])
