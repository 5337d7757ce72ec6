"""Data functions over a caller-owned :class:`~sqlalchemy.orm.Session`.

None of these commit: the caller owns the transaction (one unit of work per API call or per batch), so a
state change, its outbox row and its audit row always land together or not at all.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import func, insert, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from campaigns.core.receipts import normalize_address
from campaigns.db.models import (
    ApiToken,
    AuditLog,
    Campaign,
    CampaignAnalytics,
    CampaignManualRecipient,
    CampaignMessage,
    CampaignRecipientLog,
    CampaignSegment,
    Channel,
    CommandKey,
    Customer,
    CustomerSegment,
    Outbox,
    Principal,
    ProcessedCommand,
    RolePermission,
    Suppression,
    Template,
)

# --- principals and roles ------------------------------------------------------------------------


def principal_permissions(session: Session, principal: str) -> frozenset[str] | None:
    """The permissions granted to ``principal`` through its role, or None if the principal is unknown."""
    role = session.scalar(select(Principal.role_name).where(Principal.name == principal))
    if role is None:
        return None
    rows = session.scalars(select(RolePermission.permission).where(RolePermission.role_name == role))
    return frozenset(rows)


def role_exists(session: Session, role: str) -> bool:
    return session.scalar(select(func.count()).select_from(RolePermission).where(RolePermission.role_name == role)) > 0


def upsert_principal(session: Session, name: str, role: str) -> None:
    stmt = pg_insert(Principal).values(name=name, role_name=role)
    session.execute(stmt.on_conflict_do_update(index_elements=[Principal.name], set_={"role_name": role}))


def grant_permission(session: Session, role: str, permission: str) -> None:
    """Grant ``permission`` to ``role`` (idempotent). A deployment's choice, e.g. letting marketers send
    unapproved inline content; migrations grant the defaults."""
    stmt = pg_insert(RolePermission).values(role_name=role, permission=permission)
    session.execute(stmt.on_conflict_do_nothing(index_elements=[RolePermission.role_name, RolePermission.permission]))


def principals(session: Session) -> list[tuple[str, str]]:
    """(name, role) of every principal, by name."""
    return [(n, r) for n, r in session.execute(select(Principal.name, Principal.role_name).order_by(Principal.name))]


def lock_principals(session: Session) -> None:
    """Serialise principal creation with the bootstrap check (held until the transaction ends)."""
    session.execute(text("LOCK TABLE principals IN SHARE ROW EXCLUSIVE MODE"))


def principal_count(session: Session) -> int:
    return int(session.scalar(select(func.count()).select_from(Principal)) or 0)


def principal_exists(session: Session, name: str) -> bool:
    return session.scalar(select(Principal.name).where(Principal.name == name)) is not None


# --- API tokens ----------------------------------------------------------------------------------


def add_token(session: Session, *, token_id: str, principal: str, secret_hash: str, created_by: str,
              now: datetime, expires_at: datetime | None) -> None:
    session.add(ApiToken(id=token_id, principal=principal, secret_hash=secret_hash, created_by=created_by,
                         created_at=now, expires_at=expires_at))
    session.flush()


def add_command_key(session: Session, *, key_id: str, principal: str, secret: str, created_by: str,
                    now: datetime) -> None:
    session.add(CommandKey(id=key_id, principal=principal, secret=secret, created_by=created_by, created_at=now))
    session.flush()


def command_key(session: Session, key_id: str) -> CommandKey | None:
    return session.get(CommandKey, key_id)


def revoke_command_key(session: Session, key_id: str, now: datetime) -> bool:
    done = session.execute(update(CommandKey).where(CommandKey.id == key_id, CommandKey.revoked_at.is_(None))
                           .values(revoked_at=now))
    return bool(done.rowcount)  # type: ignore[attr-defined]


def get_token(session: Session, token_id: str) -> ApiToken | None:
    return session.get(ApiToken, token_id)


def touch_token(session: Session, token_id: str, now: datetime) -> None:
    session.execute(update(ApiToken).where(ApiToken.id == token_id).values(last_used_at=now))


def revoke_tokens(session: Session, *, revoked_by: str, now: datetime, token_id: str | None = None,
                  principal: str | None = None) -> list[str]:
    """Revoke one token (``token_id``) or every live token of ``principal``; the ids revoked."""
    stmt = update(ApiToken).where(ApiToken.revoked_at.is_(None))
    if token_id is not None:
        stmt = stmt.where(ApiToken.id == token_id)
    if principal is not None:
        stmt = stmt.where(ApiToken.principal == principal)
    rows = session.execute(stmt.values(revoked_at=now, revoked_by=revoked_by).returning(ApiToken.id))
    return sorted(r[0] for r in rows)


def tokens(session: Session, principal: str | None = None) -> list[ApiToken]:
    query = select(ApiToken).order_by(ApiToken.principal, ApiToken.created_at)
    if principal is not None:
        query = query.where(ApiToken.principal == principal)
    return list(session.scalars(query))


# --- channels, templates, segments ---------------------------------------------------------------


def upsert_channel(
    session: Session, *, id: str, kind: str, provider: str, rate_per_s: float, burst: int,
    config: Mapping[str, Any] | None = None,
) -> None:
    """Add or update a channel account and make it the enabled one of its kind (one enabled per kind: the
    kind names the topic the senders consume)."""
    session.execute(update(Channel).where(Channel.kind == kind, Channel.id != id).values(enabled=False))
    values = {"id": id, "kind": kind, "provider": provider, "rate_per_s": rate_per_s, "burst": burst,
              "config": dict(config or {}), "enabled": True}
    stmt = pg_insert(Channel).values(**values)
    session.execute(stmt.on_conflict_do_update(index_elements=[Channel.id], set_=values))


def enabled_channel(session: Session, kind: str) -> Channel | None:
    return session.scalar(select(Channel).where(Channel.kind == kind, Channel.enabled.is_(True)))


def channels(session: Session) -> list[Channel]:
    """Every enabled channel account, by kind."""
    return list(session.scalars(select(Channel).where(Channel.enabled.is_(True)).order_by(Channel.kind)))


def close_channel_breaker(session: Session, kind: str) -> Channel | None:
    """Close the enabled ``kind`` channel's breaker (senders use it again at once); the channel, or None if
    there is no enabled channel of that kind."""
    channel = enabled_channel(session, kind)
    if channel is not None:
        channel.paused_reason = channel.paused_at = channel.probe_at = None
        channel.failed_probes = 0
    return channel


def channel_limits(session: Session) -> dict[str, tuple[float, int]]:
    """(rate per second, burst) per enabled channel kind."""
    rows = session.execute(select(Channel.kind, Channel.rate_per_s, Channel.burst).where(Channel.enabled.is_(True)))
    return {kind: (float(rate), burst) for kind, rate, burst in rows}


def add_template(
    session: Session, *, name: str, channel_kind: str, body: str, variables: Sequence[str],
    subject: str | None = None, locale: str = "en", version: int | None = None,
) -> Template:
    if version is None:
        current = session.scalar(
            select(func.max(Template.version)).where(Template.name == name, Template.locale == locale)
        )
        version = (current or 0) + 1
    template = Template(
        name=name, version=version, channel_kind=channel_kind, locale=locale, subject=subject, body=body,
        variables=sorted(variables), status="pending",
    )
    session.add(template)
    session.flush()
    return template


def approve_template(session: Session, template_id: int, approver: str, now: datetime) -> bool:
    result = session.execute(
        update(Template)
        .where(Template.id == template_id, Template.status.in_(("draft", "pending")))
        .values(status="approved", approved_by=approver, approved_at=now)
    )
    return result.rowcount == 1


def template_approver(session: Session, template_id: int) -> str | None:
    return session.scalar(select(Template.approved_by).where(Template.id == template_id))


def find_template(session: Session, name: str, locale: str, version: int | None) -> Template | None:
    """The given version, or else the newest approved version, of a template."""
    query = select(Template).where(Template.name == name, Template.locale == locale)
    if version is not None:
        return session.scalar(query.where(Template.version == version))
    return session.scalar(query.where(Template.status == "approved").order_by(Template.version.desc()).limit(1))


def existing_segments(session: Session, segment_ids: Iterable[int]) -> set[int]:
    ids = list(segment_ids)
    return set(session.scalars(select(CustomerSegment.id).where(CustomerSegment.id.in_(ids)))) if ids else set()


def existing_customers(session: Session, customer_ids: Sequence[int]) -> set[int]:
    if not customer_ids:
        return set()
    rows = session.execute(
        text("SELECT c.id FROM customers c JOIN unnest(:ids) AS u(id) ON u.id = c.id"), {"ids": list(customer_ids)}
    )
    return {row[0] for row in rows}


# --- campaigns -----------------------------------------------------------------------------------


def insert_campaign(
    session: Session, campaign: Campaign, *, segment_ids: Sequence[int], manual_recipients: Sequence[int],
    messages: Sequence[CampaignMessage],
) -> None:
    session.add(campaign)
    session.flush()
    if segment_ids:
        session.execute(insert(CampaignSegment), [{"campaign_id": campaign.id, "segment_id": s} for s in segment_ids])
    if manual_recipients:
        session.execute(
            insert(CampaignManualRecipient),
            [{"campaign_id": campaign.id, "customer_id": c} for c in manual_recipients],
        )
    for message in messages:
        message.campaign_id = campaign.id
        session.add(message)
    session.flush()


def get_campaign(session: Session, campaign_id: uuid.UUID) -> Campaign | None:
    return session.get(Campaign, campaign_id)


def campaign_segment_ids(session: Session, campaign_id: uuid.UUID) -> list[int]:
    return list(session.scalars(select(CampaignSegment.segment_id).where(CampaignSegment.campaign_id == campaign_id)))


def campaign_messages(session: Session, campaign_id: uuid.UUID) -> list[CampaignMessage]:
    return list(session.scalars(select(CampaignMessage).where(CampaignMessage.campaign_id == campaign_id)))


def change_campaign_status(
    session: Session, campaign_id: uuid.UUID, *, expected_version: int, expected_status: str, new_status: str,
    now: datetime, **extra: Any,
) -> int | None:
    """Conditional UPDATE (optimistic concurrency): succeeds only if nobody changed the campaign since it was
    read. Returns the new version, or None when another writer won."""
    result = session.execute(
        update(Campaign)
        .where(Campaign.id == campaign_id, Campaign.version == expected_version, Campaign.status == expected_status)
        .values(status=new_status, version=Campaign.version + 1, updated_at=now, **extra)
        .returning(Campaign.version)
    )
    row = result.first()
    return None if row is None else int(row[0])


def due_campaign_ids(session: Session, now: datetime, limit: int = 100) -> list[uuid.UUID]:
    """Scheduled campaigns whose start time has come (uses the partial index ix_campaigns_due)."""
    return list(
        session.scalars(
            select(Campaign.id)
            .where(Campaign.status == "scheduled", Campaign.start_at <= now)
            .order_by(Campaign.start_at)
            .limit(limit)
        )
    )


def next_start_at(session: Session) -> datetime | None:
    return session.scalar(select(func.min(Campaign.start_at)).where(Campaign.status == "scheduled"))


def recipient_status_counts(session: Session, campaign_id: uuid.UUID) -> dict[str, int]:
    rows = session.execute(
        select(CampaignRecipientLog.status, func.count())
        .where(CampaignRecipientLog.campaign_id == campaign_id)
        .group_by(CampaignRecipientLog.status)
    )
    return {status: int(count) for status, count in rows}


RECEIPT_TOTALS = ("sent", "delivered", "read", "bounced", "complained")


def receipt_totals(session: Session, campaign_id: uuid.UUID) -> dict[str, int]:
    """The campaign's ``campaign_analytics`` totals of sends and delivery receipts (zeros before any)."""
    row = session.execute(
        select(*(getattr(CampaignAnalytics, c) for c in RECEIPT_TOTALS))
        .where(CampaignAnalytics.campaign_id == campaign_id, CampaignAnalytics.window_start.is_(None))
    ).first()
    return dict(zip(RECEIPT_TOTALS, (int(v) for v in row), strict=True)) if row else dict.fromkeys(RECEIPT_TOTALS, 0)


def failure_reasons(session: Session, campaign_id: uuid.UUID, limit: int = 10) -> dict[str, int]:
    rows = session.execute(
        select(CampaignRecipientLog.failure_reason, func.count())
        .where(CampaignRecipientLog.campaign_id == campaign_id, CampaignRecipientLog.status.in_(("failed", "skipped")))
        .group_by(CampaignRecipientLog.failure_reason)
        .order_by(func.count().desc())
        .limit(limit)
    )
    return {str(reason): int(count) for reason, count in rows}


# --- outbox, audit, commands ---------------------------------------------------------------------


def add_outbox_event(
    session: Session, *, topic: str, key: str, event_type: str, payload: Mapping[str, Any],
    event_id: uuid.UUID | None = None,
) -> uuid.UUID:
    event_id = event_id or uuid.uuid4()
    session.execute(
        insert(Outbox).values(event_id=event_id, topic=topic, key=key, event_type=event_type, payload=dict(payload))
    )
    return event_id


def add_audit(
    session: Session, *, principal: str, action: str, campaign_id: uuid.UUID | None, detail: Mapping[str, Any],
) -> None:
    session.execute(
        insert(AuditLog).values(principal=principal, action=action, campaign_id=campaign_id, detail=dict(detail))
    )


def audit_entries(session: Session, *, campaign_id: uuid.UUID | None = None, principal: str | None = None,
                  since: datetime | None = None, limit: int = 1000) -> list[AuditLog]:
    """Audit rows, oldest first: the newest ``limit`` that match."""
    query = select(AuditLog)
    if campaign_id is not None:
        query = query.where(AuditLog.campaign_id == campaign_id)
    if principal is not None:
        query = query.where(AuditLog.principal == principal)
    if since is not None:
        query = query.where(AuditLog.occurred_at >= since)
    rows = list(session.scalars(query.order_by(AuditLog.id.desc()).limit(limit)))
    return rows[::-1]


def approve_content(session: Session, campaign_id: uuid.UUID, approver: str, now: datetime) -> bool:
    """Mark a campaign's content approved; False if it already was (or the campaign does not exist)."""
    result = session.execute(
        update(Campaign).where(Campaign.id == campaign_id, Campaign.content_approved_at.is_(None))
        .values(content_approved_by=approver, content_approved_at=now)
    )
    return result.rowcount == 1


def claim_command(session: Session, command_id: str, outcome: str, detail: str | None = None) -> bool:
    """Record a command id as processed; False when it was already processed (a repeat is a no-op)."""
    stmt = (
        pg_insert(ProcessedCommand)
        .values(command_id=command_id, outcome=outcome, detail=detail)
        .on_conflict_do_nothing(index_elements=[ProcessedCommand.command_id])
        .returning(ProcessedCommand.command_id)
    )
    return session.execute(stmt).first() is not None


def processed_command(session: Session, command_id: str) -> tuple[str, str | None] | None:
    """(outcome, detail) recorded for a processed command id, or None if it was never processed."""
    row = session.execute(
        select(ProcessedCommand.outcome, ProcessedCommand.detail).where(ProcessedCommand.command_id == command_id)
    ).first()
    return None if row is None else (row[0], row[1])


def approved_template_locales(session: Session, name: str, channel: str, except_locale: str) -> list[Template]:
    """The newest approved version of template ``name`` for ``channel`` in every locale but ``except_locale``."""
    newest = (select(Template.locale, func.max(Template.version).label("version"))
              .where(Template.name == name, Template.channel_kind == channel, Template.status == "approved",
                     Template.locale != except_locale)
              .group_by(Template.locale).subquery())
    return list(session.scalars(
        select(Template).join(newest, (Template.locale == newest.c.locale) & (Template.version == newest.c.version))
        .where(Template.name == name).order_by(Template.locale)))


def campaign_bodies(session: Session, campaign_id: uuid.UUID) -> list[tuple[str, str]]:
    """(locale, body) of every content row of a campaign."""
    rows = session.execute(select(CampaignMessage.locale, CampaignMessage.body)
                           .where(CampaignMessage.campaign_id == campaign_id).order_by(CampaignMessage.locale))
    return [(r[0], r[1]) for r in rows]


def latest_template(session: Session, name: str, locale: str) -> Template | None:
    """The newest version of a template whatever its status (for error messages that say what exists)."""
    return session.scalar(
        select(Template).where(Template.name == name, Template.locale == locale)
        .order_by(Template.version.desc()).limit(1)
    )


# --- unsubscribes ----------------------------------------------------------------------------------

_ADDRESS = {"email": Customer.email, "sms": Customer.phone, "whatsapp": Customer.whatsapp}


def opt_out(session: Session, customer_id: int, channel: str, *, source: str) -> tuple[str | None, bool] | None:
    """Opt ``customer_id`` out of ``channel`` (its ``opted_out_channels``) and suppress its current address
    there (``suppressions``, reason ``unsubscribe``). Idempotent. Returns (the address, whether anything
    changed), or None when the customer does not exist."""
    row = session.execute(select(_ADDRESS[channel], Customer.opted_out_channels).where(Customer.id == customer_id)
                          .with_for_update()).first()
    if row is None:
        return None
    address, opted_out = row[0], list(row[1] or ())
    changed = False
    if channel not in opted_out:
        session.execute(update(Customer).where(Customer.id == customer_id)
                        .values(opted_out_channels=[*opted_out, channel]))
        changed = True
    if address:
        inserted = session.execute(
            # In the list's normal form (email lower-case, phones "+digits"), as expansion and the claim look it up.
            pg_insert(Suppression).values(channel_kind=channel, address=normalize_address(channel, address),
                                          reason="unsubscribe", source=source)
            .on_conflict_do_nothing(index_elements=["channel_kind", "address"]).returning(Suppression.address)
        ).first()
        changed = changed or inserted is not None
    return address, changed
