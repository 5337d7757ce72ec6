"""The ``campaigns`` rows as the pipeline stages read and advance them: expansion's candidates, locks,
checkpoints and finish, and the senders' view of campaign states.

Every function takes a psycopg2 cursor and never commits (the stage owns the transaction).

Guarantees:

* :func:`checkpoint` and :func:`finish` are guarded by the campaign's ``version``: a pause, resume, cancel
  or fail committed meanwhile makes them no-ops (the stage starts over from the new state), so a command
  is never overwritten by a stage.
* :func:`lock_active` takes a share lock on the rows of the campaigns that are ``active``, in id order (one
  lock order for every sender), until the caller's transaction ends: a claim made under it is atomic with
  the campaign being active, since a state change (an UPDATE of the row) waits for it, and a claim that
  starts after the change sees the new status.
* :func:`try_lock` / :func:`unlock` are a session-level advisory lock per campaign (released by PostgreSQL
  if the session dies): one expander at a time works on a campaign.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

CANDIDATES_SQL = """
SELECT id FROM campaigns
WHERE NOT expansion_done AND activated_at IS NOT NULL AND status IN ('active', 'cancelled', 'failed')
ORDER BY activated_at LIMIT 20
"""
TRY_LOCK_SQL = "SELECT pg_try_advisory_lock(hashtextextended(%s, 7))"
UNLOCK_SQL = "SELECT pg_advisory_unlock(hashtextextended(%s, 7))"
PLAN_SQL = (
    "SELECT status, version, channel_kind, batch_size, coalesce(expansion_cursor, 0), expansion_done "
    "FROM campaigns WHERE id = %s"
)
SEGMENTS_SQL = "SELECT segment_id FROM campaign_segments WHERE campaign_id = %s"
CONTENT_SQL = (
    "SELECT locale, subject, body, template_name, template_parameters, header_parameters FROM campaign_messages "
    "WHERE campaign_id = %s"
)
CAMPAIGN_CONTENT_POLICY_SQL = "SELECT locale, max_sms_segments FROM campaigns WHERE id = %s"
CHECKPOINT_SQL = (
    "UPDATE campaigns SET expansion_cursor = %s, expanded_recipients = expanded_recipients + %s "
    "WHERE id = %s AND version = %s"
)
FINISH_SQL = (
    "UPDATE campaigns SET expansion_done = true, total_recipients = expanded_recipients, "
    "skipped_recipients = (SELECT count(*) FROM campaign_recipient_log WHERE campaign_id = %s "
    "AND status = 'skipped') WHERE id = %s AND version = %s RETURNING total_recipients"
)
STATES_SQL = (
    "SELECT id::text, status, max_retries, backoff_base_s, backoff_max_s, retry_jitter, failure_threshold, "
    "failure_min_sample FROM campaigns WHERE id = ANY(%s::uuid[])"
)
ACTIVE_EXPANDED_SQL = "SELECT id::text FROM campaigns WHERE status = 'active' AND expansion_done"
COMPLETION_SQL = (
    "SELECT c.id::text, c.status, c.expansion_done, c.total_recipients, c.failure_threshold, "
    "c.failure_min_sample, coalesce(a.sent, 0), coalesce(a.failed, 0), "
    "coalesce(a.sent + a.failed + a.skipped + a.cancelled, 0) "
    "FROM campaigns AS c LEFT JOIN campaign_analytics AS a "
    "ON a.campaign_id = c.id AND a.window_start IS NULL WHERE c.id = ANY(%s::uuid[])"
)
TERMINAL_LOG_SQL = (
    "SELECT count(*) FROM campaign_recipient_log WHERE campaign_id = %s "
    "AND status IN ('sent', 'failed', 'skipped', 'cancelled')"
)
LOCK_ACTIVE_SQL = (
    "SELECT id::text FROM campaigns WHERE id = ANY(%s::uuid[]) AND status = 'active' ORDER BY id FOR SHARE"
)


@dataclass(frozen=True, slots=True)
class CompletionRow:
    """What completion and the failure threshold read of a campaign: its state and its analytics totals."""

    campaign_id: str
    status: str
    expansion_done: bool
    total_recipients: int | None
    failure_threshold: float
    failure_min_sample: int
    sent: int
    failed: int
    terminal: int  # sent + failed + skipped + cancelled, as counted by the analytics


@dataclass(frozen=True, slots=True)
class PlanRow:
    status: str
    version: int
    channel: str
    batch_size: int
    cursor: int
    segments: list[int]


def candidates(cur: Any) -> list[uuid.UUID]:
    """Campaigns that need expansion (active) or a sweep (cancelled/failed after activation), oldest first."""
    cur.execute(CANDIDATES_SQL)
    return [uuid.UUID(str(row[0])) for row in cur.fetchall()]


def try_lock(cur: Any, campaign_id: uuid.UUID) -> bool:
    cur.execute(TRY_LOCK_SQL, (str(campaign_id),))
    return bool(cur.fetchone()[0])


def unlock(cur: Any, campaign_id: uuid.UUID) -> None:
    cur.execute(UNLOCK_SQL, (str(campaign_id),))


def plan(cur: Any, campaign_id: uuid.UUID) -> PlanRow | None:
    """What expansion needs of a campaign (not its content: the senders render it), or None if it is gone or
    already expanded."""
    cur.execute(PLAN_SQL, (str(campaign_id),))
    row = cur.fetchone()
    if row is None or row[5]:
        return None
    cur.execute(SEGMENTS_SQL, (str(campaign_id),))
    segments = [r[0] for r in cur.fetchall()]
    return PlanRow(row[0], row[1], row[2], row[3], row[4], segments)


def content(
    cur: Any, campaign_id: str
) -> tuple[str, int | None, list[tuple[str, str | None, str, str | None, list[str], list[str]]]]:
    """The campaign's default locale, its ``max_sms_segments`` (None: the channel's limit) and its content rows
    (locale, subject, body, template, body parameters, header parameters)."""
    cur.execute(CAMPAIGN_CONTENT_POLICY_SQL, (campaign_id,))
    row = cur.fetchone()
    cur.execute(CONTENT_SQL, (campaign_id,))
    rows = [(r[0], r[1], r[2], r[3], list(r[4] or ()), list(r[5] or ())) for r in cur.fetchall()]
    return (row[0] if row else "en"), (row[1] if row else None), rows


def checkpoint(cur: Any, campaign_id: uuid.UUID, version: int, last_id: int, page_size: int) -> bool:
    """Advance the cursor past a page of ``page_size`` recipients; False if the campaign changed meanwhile."""
    cur.execute(CHECKPOINT_SQL, (last_id, page_size, str(campaign_id), version))
    return bool(cur.rowcount == 1)


def finish(cur: Any, campaign_id: uuid.UUID, version: int) -> int | None:
    """End the pass: ``total_recipients`` = what it expanded; the total, or None if the campaign changed."""
    cur.execute(FINISH_SQL, (str(campaign_id), str(campaign_id), version))
    row = cur.fetchone()
    return None if row is None else int(row[0])


def states(cur: Any, campaign_ids: Sequence[str]) -> list[tuple[Any, ...]]:
    """``(id, status, max_retries, backoff_base_s, backoff_max_s, jitter, failure_threshold, min_sample)``."""
    cur.execute(STATES_SQL, (list(campaign_ids),))
    return cur.fetchall()


def lock_active(cur: Any, campaign_ids: Sequence[str]) -> set[str]:
    """Share-lock the rows of those campaigns that are active (until the transaction ends); their ids."""
    cur.execute(LOCK_ACTIVE_SQL, (sorted(campaign_ids),))
    return {row[0] for row in cur.fetchall()}


def active_expanded(cur: Any) -> set[str]:
    """The active campaigns whose expansion is done (the ones completion may end)."""
    cur.execute(ACTIVE_EXPANDED_SQL)
    return {row[0] for row in cur.fetchall()}


def completion_rows(cur: Any, campaign_ids: Sequence[str]) -> list[CompletionRow]:
    """The state and analytics totals of those campaigns."""
    cur.execute(COMPLETION_SQL, (sorted(campaign_ids),))
    return [CompletionRow(*row) for row in cur.fetchall()]


def terminal_count(cur: Any, campaign_id: str) -> int:
    """How many of the campaign's recipient-log rows are terminal (the authority completion checks)."""
    cur.execute(TERMINAL_LOG_SQL, (campaign_id,))
    return int(cur.fetchone()[0])
