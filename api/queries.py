"""Read queries the service has no method for (campaign and template lists, analytics rows), run after
``CampaignService.authorize`` has checked the permission. They never write.

Campaign list: keyset pagination on ``(created_at, id)`` descending; the cursor is opaque (base64url of the
last row's key), so a page never skips or repeats a row while campaigns are created meanwhile.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from campaigns.core.vocabulary import COUNTERS as COUNTERS  # the API's analytics fields: the pipeline's counters
from campaigns.db.engine import transaction
from campaigns.errors import ValidationError


def encode_cursor(created_at: datetime, campaign_id: uuid.UUID) -> str:
    raw = json.dumps([created_at.isoformat(), str(campaign_id)]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created, cid = json.loads(raw)
        moment = datetime.fromisoformat(created)
        if moment.tzinfo is None:
            raise ValueError("no offset")
        return moment, uuid.UUID(cid)
    except (ValueError, TypeError, json.JSONDecodeError) as exc:
        raise ValidationError(f"cursor: not a cursor this API returned ({exc.__class__.__name__})") from None


def _campaign_row(r: Any) -> dict[str, Any]:
    return {
        "id": str(r.id), "name": r.name, "channel": r.channel_kind, "status": r.status, "version": r.version,
        "created_by": r.created_by, "created_at": r.created_at.isoformat(),
        "start_at": r.start_at.isoformat() if r.start_at else None,
        "activated_at": r.activated_at.isoformat() if r.activated_at else None,
        "finished_at": r.finished_at.isoformat() if r.finished_at else None,
        "total_recipients": r.total_recipients, "expanded_recipients": r.expanded_recipients,
        "expansion_done": r.expansion_done, "content_approved_by": r.content_approved_by,
    }


_CAMPAIGN_COLUMNS = ("id, name, channel_kind, status, version, created_by, created_at, start_at, activated_at, "
                     "finished_at, total_recipients, expanded_recipients, expansion_done, content_approved_by")


def list_campaigns(sessions: sessionmaker[Session], *, statuses: Sequence[str] = (), channel: str | None = None,
                   created_by: str | None = None, limit: int = 50,
                   cursor: str | None = None) -> tuple[list[dict[str, Any]], str | None]:
    """A page of campaigns, newest first, and the cursor of the next page (None: the last page)."""
    where: list[str] = ["TRUE"]
    params: dict[str, Any] = {"limit": limit + 1}
    if statuses:
        where.append("status = ANY(:statuses)")
        params["statuses"] = list(statuses)
    if channel:
        where.append("channel_kind = :channel")
        params["channel"] = channel
    if created_by:
        where.append("created_by = :created_by")
        params["created_by"] = created_by
    if cursor:
        after_at, after_id = decode_cursor(cursor)
        where.append("(created_at, id) < (:after_at, :after_id)")
        params.update(after_at=after_at, after_id=after_id)
    sql = (f"SELECT {_CAMPAIGN_COLUMNS} FROM campaigns WHERE {' AND '.join(where)} "
           "ORDER BY created_at DESC, id DESC LIMIT :limit")
    with transaction(sessions) as session:
        rows = session.execute(text(sql), params).all()
    page = rows[:limit]
    next_cursor = encode_cursor(page[-1].created_at, page[-1].id) if len(rows) > limit else None
    return [_campaign_row(r) for r in page], next_cursor


def list_templates(sessions: sessionmaker[Session], *, channel: str | None = None,
                   status: str | None = None) -> list[dict[str, Any]]:
    where: list[str] = ["TRUE"]
    params: dict[str, Any] = {}
    if channel:
        where.append("channel_kind = :channel")
        params["channel"] = channel
    if status:
        where.append("status = :status")
        params["status"] = status
    sql = ("SELECT id, name, version, channel_kind, locale, subject, body, variables, status, approved_by, "
           f"approved_at, created_at FROM templates WHERE {' AND '.join(where)} ORDER BY name, locale, version")
    with transaction(sessions) as session:
        rows = session.execute(text(sql), params).all()
    return [{"id": r.id, "name": r.name, "version": r.version, "channel": r.channel_kind, "locale": r.locale,
             "subject": r.subject, "body": r.body, "variables": list(r.variables or []), "status": r.status,
             "approved_by": r.approved_by, "approved_at": r.approved_at.isoformat() if r.approved_at else None,
             "created_at": r.created_at.isoformat()} for r in rows]


def analytics_totals(session: Session, campaign_ids: Sequence[uuid.UUID]) -> dict[str, dict[str, int]]:
    """``campaign_analytics`` totals rows (``window_start IS NULL``) by campaign id."""
    if not campaign_ids:
        return {}
    rows = session.execute(text(
        f"SELECT campaign_id, {', '.join(COUNTERS)} FROM campaign_analytics "
        "WHERE window_start IS NULL AND campaign_id = ANY(:ids)"), {"ids": list(campaign_ids)}).all()
    return {str(r.campaign_id): {c: int(getattr(r, c)) for c in COUNTERS} for r in rows}


def analytics_windows(session: Session, campaign_ids: Sequence[uuid.UUID],
                      per_campaign: int = 60) -> dict[str, list[dict[str, Any]]]:
    """The newest ``per_campaign`` windows of each campaign, oldest first."""
    if not campaign_ids:
        return {}
    rows = session.execute(text(
        f"SELECT campaign_id, window_start, window_end, {', '.join(COUNTERS)} FROM ("
        f"  SELECT *, row_number() OVER (PARTITION BY campaign_id ORDER BY window_start DESC) AS n "
        "   FROM campaign_analytics WHERE window_start IS NOT NULL AND campaign_id = ANY(:ids)) w "
        "WHERE n <= :per ORDER BY campaign_id, window_start"), {"ids": list(campaign_ids), "per": per_campaign}).all()
    out: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        out.setdefault(str(r.campaign_id), []).append(
            {"start": r.window_start.isoformat(), "end": r.window_end.isoformat() if r.window_end else None,
             **{c: int(getattr(r, c)) for c in COUNTERS}})
    return out


def dashboard_campaigns(session: Session, *, recent_s: int = 3600, limit: int = 200) -> list[dict[str, Any]]:
    """Campaigns the dashboard lists: every one not finished, and those finished in the last ``recent_s``."""
    rows = session.execute(text(
        f"SELECT {_CAMPAIGN_COLUMNS} FROM campaigns WHERE finished_at IS NULL "
        "OR finished_at > now() - make_interval(secs => :recent) ORDER BY created_at DESC, id DESC LIMIT :limit"),
        {"recent": recent_s, "limit": limit}).all()
    return [_campaign_row(r) for r in rows]
