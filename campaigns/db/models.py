"""SQLAlchemy 2.0 models: the PostgreSQL side of the design (docs/architecture.md, "Data model").

Every timestamp is ``timestamptz``; every status column has a CHECK constraint; schema changes happen
only through Alembic migrations (``migrations/``), never at runtime.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any, ClassVar

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Double,
    ForeignKey,
    Identity,
    Index,
    Integer,
    Numeric,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from campaigns.core.states import CampaignStatus
from campaigns.core.vocabulary import CHANNELS, CustomerStatus, RecipientStatus, SuppressionReason, TemplateStatus
from campaigns.core.vocabulary import TERMINAL_RECIPIENT_STATUSES as TERMINAL_RECIPIENT

# The CHECK constraints' value lists, from the core's vocabularies (plain strings, in declaration order).
CHANNEL_KINDS = CHANNELS
CAMPAIGN_STATUSES = tuple(s.value for s in CampaignStatus)
TEMPLATE_STATUSES = tuple(s.value for s in TemplateStatus)
CUSTOMER_STATUSES = tuple(s.value for s in CustomerStatus)
# claimed/retrying are in flight; sent, failed, skipped, cancelled are terminal.
RECIPIENT_STATUSES = tuple(s.value for s in RecipientStatus)
TERMINAL_RECIPIENT_STATUSES = tuple(s.value for s in RecipientStatus if s in TERMINAL_RECIPIENT)
SUPPRESSION_REASONS = tuple(s.value for s in SuppressionReason)


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def _tz() -> DateTime:
    return DateTime(timezone=True)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: DateTime(timezone=True), dict[str, Any]: JSONB}


class Channel(Base):
    """A provider account for one channel kind, with its rate limit (messages/s) and burst."""

    __tablename__ = "channels"
    __table_args__ = (
        CheckConstraint(_in("kind", CHANNEL_KINDS), name="ck_channels_kind"),
        CheckConstraint("rate_per_s > 0", name="ck_channels_rate_positive"),
        CheckConstraint("burst >= 1", name="ck_channels_burst_positive"),
        # One enabled account per kind: the kind names the topic the senders consume.
        Index("uq_channels_enabled_kind", "kind", unique=True, postgresql_where=text("enabled")),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    provider: Mapped[str] = mapped_column(String(64))
    rate_per_s: Mapped[Decimal] = mapped_column(Numeric(10, 3))
    burst: Mapped[int] = mapped_column(Integer)
    config: Mapped[dict[str, Any]] = mapped_column(server_default=text("'{}'::jsonb"))
    enabled: Mapped[bool] = mapped_column(Boolean, server_default=text("true"))
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    # The channel breaker (campaigns.core.breaker): NULL = closed; else why the senders stopped using it.
    paused_reason: Mapped[str | None] = mapped_column(Text)
    paused_at: Mapped[datetime | None] = mapped_column()
    probe_at: Mapped[datetime | None] = mapped_column()  # the next half-open probe, while open
    failed_probes: Mapped[int] = mapped_column(Integer, server_default=text("0"))


class Template(Base):
    """A versioned message template; only ``approved`` templates may be used by campaigns."""

    __tablename__ = "templates"
    __table_args__ = (
        CheckConstraint(_in("channel_kind", CHANNEL_KINDS), name="ck_templates_channel_kind"),
        CheckConstraint(_in("status", TEMPLATE_STATUSES), name="ck_templates_status"),
        UniqueConstraint("name", "version", "locale", name="uq_templates_name_version_locale"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    version: Mapped[int] = mapped_column(Integer, server_default=text("1"))
    channel_kind: Mapped[str] = mapped_column(String(16))
    locale: Mapped[str] = mapped_column(String(16), server_default=text("'en'"))
    subject: Mapped[str | None] = mapped_column(Text)
    body: Mapped[str] = mapped_column(Text)
    variables: Mapped[list[str]] = mapped_column(ARRAY(Text), server_default=text("'{}'"))
    status: Mapped[str] = mapped_column(String(16), server_default=text("'draft'"))
    approved_by: Mapped[str | None] = mapped_column(String(128))
    approved_at: Mapped[datetime | None] = mapped_column(_tz())
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())


class Customer(Base):
    """A recipient: addresses per channel, timezone, locale, status and per-channel opt-outs."""

    __tablename__ = "customers"
    __table_args__ = (
        CheckConstraint(_in("status", CUSTOMER_STATUSES), name="ck_customers_status"),
        CheckConstraint(
            "opted_out_channels <@ ARRAY['whatsapp','sms','email']::text[]", name="ck_customers_opt_outs"
        ),
        CheckConstraint("jsonb_typeof(attributes) = 'object'", name="ck_customers_attributes_object"),
        Index("ix_customers_attributes", "attributes", postgresql_using="gin",
              postgresql_ops={"attributes": "jsonb_path_ops"}),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    external_ref: Mapped[str | None] = mapped_column(String(128), unique=True)
    email: Mapped[str | None] = mapped_column(String(320))
    phone: Mapped[str | None] = mapped_column(String(32))
    whatsapp: Mapped[str | None] = mapped_column(String(32))
    timezone: Mapped[str] = mapped_column(String(64), server_default=text("'UTC'"))
    locale: Mapped[str] = mapped_column(String(16), server_default=text("'en'"))
    status: Mapped[str] = mapped_column(String(16), server_default=text("'active'"))
    opted_out_channels: Mapped[list[str]] = mapped_column(ARRAY(Text), server_default=text("'{}'"))
    # Profile (migration 0010): what per-recipient templates may use besides the addresses.
    first_name: Mapped[str | None] = mapped_column(String(128))
    last_name: Mapped[str | None] = mapped_column(String(128))
    attributes: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())


class Suppression(Base):
    """An address no campaign sends to on a channel (migration 0010): a hard bounce, a complaint, a STOP reply,
    an unsubscribe, or added by hand. Expansion and the sender's claim honour it."""

    __tablename__ = "suppressions"
    __table_args__ = (
        CheckConstraint(_in("channel_kind", ("whatsapp", "sms", "email")), name="ck_suppressions_channel"),
        CheckConstraint(_in("reason", SUPPRESSION_REASONS), name="ck_suppressions_reason"),
    )

    channel_kind: Mapped[str] = mapped_column(String(16), primary_key=True)
    address: Mapped[str] = mapped_column(String(320), primary_key=True)
    reason: Mapped[str] = mapped_column(String(32))
    source: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())


class CustomerSegment(Base):
    __tablename__ = "customer_segments"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    description: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())


class SegmentMember(Base):
    """Membership; the primary key (segment_id, customer_id) is the keyset for recipient paging.

    No foreign keys on purpose: PostgreSQL checks them row by row, which made bulk loads 5x slower
    (measured: 343k memberships in 11.8 s with both FKs, 2.0 s without). Expansion joins customers and
    campaign_segments, so a dangling membership is never sent to; delete memberships with their segment.
    """

    __tablename__ = "segment_members"

    segment_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    customer_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)


class Campaign(Base):
    """A campaign and its sending policy. ``version`` guards every state change (optimistic concurrency)."""

    __tablename__ = "campaigns"
    __table_args__ = (
        CheckConstraint(_in("status", CAMPAIGN_STATUSES), name="ck_campaigns_status"),
        CheckConstraint("batch_size BETWEEN 1 AND 10000", name="ck_campaigns_batch_size"),
        CheckConstraint("max_retries BETWEEN 0 AND 10", name="ck_campaigns_max_retries"),
        CheckConstraint("failure_threshold BETWEEN 0 AND 1", name="ck_campaigns_failure_threshold"),
        CheckConstraint(
            "max_sms_segments IS NULL OR max_sms_segments BETWEEN 1 AND 10", name="ck_campaigns_max_sms_segments"
        ),
        # The scheduler's due-campaign query: status = 'scheduled' AND start_at <= now().
        Index("ix_campaigns_due", "start_at", postgresql_where=text("status = 'scheduled'")),
        Index("ix_campaigns_status", "status"),
    )

    id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    channel_kind: Mapped[str] = mapped_column(String(16))
    channel_id: Mapped[str] = mapped_column(ForeignKey("channels.id"))
    template_id: Mapped[int | None] = mapped_column(ForeignKey("templates.id"))
    status: Mapped[str] = mapped_column(String(16), server_default=text("'draft'"))
    version: Mapped[int] = mapped_column(Integer, server_default=text("1"))
    start_at: Mapped[datetime | None] = mapped_column(_tz())
    batch_size: Mapped[int] = mapped_column(Integer, server_default=text("1000"))
    max_retries: Mapped[int] = mapped_column(Integer, server_default=text("3"))
    backoff_base_s: Mapped[float] = mapped_column(Double, server_default=text("1.0"))
    backoff_max_s: Mapped[float] = mapped_column(Double, server_default=text("60.0"))
    retry_jitter: Mapped[float] = mapped_column(Double, server_default=text("0.2"))
    failure_threshold: Mapped[float] = mapped_column(Double, server_default=text("0.5"))
    failure_min_sample: Mapped[int] = mapped_column(Integer, server_default=text("20"))
    locale: Mapped[str] = mapped_column(String(16), server_default=text("'en'"))
    max_sms_segments: Mapped[int | None] = mapped_column(Integer)  # migration 0010; NULL: the channel's limit
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now())
    activated_at: Mapped[datetime | None] = mapped_column(_tz())
    finished_at: Mapped[datetime | None] = mapped_column(_tz())
    # Expansion progress: the last customer id produced (keyset checkpoint) and the final counts.
    expansion_cursor: Mapped[int | None] = mapped_column(BigInteger)
    # Recipients the current expansion pass produced; reset with the cursor, total_recipients when done.
    expanded_recipients: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    expansion_done: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    total_recipients: Mapped[int | None] = mapped_column(BigInteger)
    skipped_recipients: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    # Who approved the content (migration 0006): the template's approver, the creator when it may send unapproved
    # content, or whoever ran `campaigns approve`; NULL = inline content waiting for approval (not schedulable).
    content_approved_by: Mapped[str | None] = mapped_column(String(128))
    content_approved_at: Mapped[datetime | None] = mapped_column(_tz())


class CampaignSegment(Base):
    __tablename__ = "campaign_segments"

    campaign_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("campaigns.id", ondelete="CASCADE"), primary_key=True
    )
    segment_id: Mapped[int] = mapped_column(ForeignKey("customer_segments.id"), primary_key=True)


class CampaignManualRecipient(Base):
    __tablename__ = "campaign_manual_recipients"

    campaign_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("campaigns.id", ondelete="CASCADE"), primary_key=True
    )
    customer_id: Mapped[int] = mapped_column(ForeignKey("customers.id"), primary_key=True)


class CampaignMessage(Base):
    """The content a campaign sends, per locale (rendered from the template with the payload's variables)."""

    __tablename__ = "campaign_messages"
    __table_args__ = (UniqueConstraint("campaign_id", "locale", name="uq_campaign_messages_locale"),)

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    campaign_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"))
    channel_kind: Mapped[str] = mapped_column(String(16))
    locale: Mapped[str] = mapped_column(String(16))
    subject: Mapped[str | None] = mapped_column(Text)
    body: Mapped[str] = mapped_column(Text)
    template_name: Mapped[str | None] = mapped_column(String(128))
    # The rendered values of the template's variables in the template's order (first appearance in its
    # body): a WhatsApp template's body parameters {{1}}..{{n}}. Empty for inline content and for
    # channels whose provider takes the rendered body (SMS, email).
    template_parameters: Mapped[list[str]] = mapped_column(ARRAY(Text), server_default=text("'{}'"))
    # A WhatsApp template's text header parameter (at most one; migration 0012), like template_parameters.
    header_parameters: Mapped[list[str]] = mapped_column(ARRAY(Text), server_default=text("'{}'"))


class CampaignRecipientLog(Base):
    """One row per (campaign, recipient): the claim that makes sends idempotent, then the outcome.

    The primary key (campaign_id, recipient_id) is what guarantees a recipient is sent to at most once: a
    sender must insert (claim) the row before calling the provider. No surrogate id (migration 0016): nothing
    finds a row but by that pair, and each index costs every claim and every result.
    """

    __tablename__ = "campaign_recipient_log"
    __table_args__ = (
        CheckConstraint(_in("status", RECIPIENT_STATUSES), name="ck_recipient_log_status"),
        CheckConstraint("attempts >= 0", name="ck_recipient_log_attempts"),
        # Rows past their claim only (migration 0013): claimed rows are found by (campaign, recipient).
        Index("ix_recipient_log_campaign_status", "campaign_id", "status",
              postgresql_where=text("status IN ('retrying', 'sent', 'failed', 'skipped', 'cancelled')")),
        # How a delivery receipt finds its row (migration 0010).
        Index(
            "ix_recipient_log_provider_message_id",
            "provider_message_id",
            postgresql_where=text("provider_message_id IS NOT NULL"),
        ),
    )

    campaign_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"), primary_key=True)
    recipient_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    message_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))
    channel_kind: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    failure_reason: Mapped[str | None] = mapped_column(Text)
    provider_message_id: Mapped[str | None] = mapped_column(String(256))
    claimed_at: Mapped[datetime | None] = mapped_column(_tz())
    lease_until: Mapped[datetime | None] = mapped_column(_tz())
    sent_at: Mapped[datetime | None] = mapped_column(_tz())
    # Delivery receipts (migration 0010): each timestamp is set once, by the first receipt that reports it.
    delivered_at: Mapped[datetime | None] = mapped_column(_tz())
    read_at: Mapped[datetime | None] = mapped_column(_tz())
    bounced_at: Mapped[datetime | None] = mapped_column(_tz())
    complained_at: Mapped[datetime | None] = mapped_column(_tz())
    provider_status: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now())


class CampaignAnalytics(Base):
    """Aggregates per campaign and tumbling window; ``window_start IS NULL`` is the running-totals row."""

    __tablename__ = "campaign_analytics"
    __table_args__ = (
        UniqueConstraint(
            "campaign_id", "window_start", name="uq_campaign_analytics_window", postgresql_nulls_not_distinct=True
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    campaign_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"))
    window_start: Mapped[datetime | None] = mapped_column(_tz())
    window_end: Mapped[datetime | None] = mapped_column(_tz())
    sent: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    failed: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    retried: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    skipped: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    cancelled: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    delivered: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    read: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    clicked: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    bounced: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    complained: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    latency_count: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    latency_sum_ms: Mapped[float] = mapped_column(Double, server_default=text("0"))
    latency_max_ms: Mapped[float] = mapped_column(Double, server_default=text("0"))
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now())


class CampaignAnalyticsPart(Base):
    """One source partition's share of a ``campaign_analytics`` row (migration 0007), written by the Faust
    analytics (``streams/tally.py``) with absolute values; the row is the sum of its parts. ``src_offset`` is the
    highest ``delivery.outcomes`` offset folded in: a write with a lower or equal one changes nothing."""

    __tablename__ = "campaign_analytics_parts"
    __table_args__ = (
        UniqueConstraint(
            "campaign_id", "window_start", "source_partition", name="uq_campaign_analytics_parts",
            postgresql_nulls_not_distinct=True,
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    campaign_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"))
    window_start: Mapped[datetime | None] = mapped_column(_tz())
    source_partition: Mapped[int] = mapped_column(Integer)
    sent: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    failed: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    retried: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    skipped: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    cancelled: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    delivered: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    read: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    clicked: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    bounced: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    latency_count: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    latency_sum_ms: Mapped[float] = mapped_column(Double, server_default=text("0"))
    latency_max_ms: Mapped[float] = mapped_column(Double, server_default=text("0"))
    src_offset: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now())


class Outbox(Base):
    """Transactional outbox: events written in the same transaction as the state change they describe.

    The relay publishes unpublished rows in ``id`` order per campaign and sets ``published_at`` after the
    broker acknowledged them.
    """

    __tablename__ = "outbox"
    __table_args__ = (
        Index("ix_outbox_unpublished", "id", postgresql_where=text("published_at IS NULL")),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    event_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), unique=True)
    topic: Mapped[str] = mapped_column(String(255))
    key: Mapped[str] = mapped_column(String(255))
    event_type: Mapped[str] = mapped_column(String(32))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    published_at: Mapped[datetime | None] = mapped_column(_tz())


class Role(Base):
    __tablename__ = "roles"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    description: Mapped[str | None] = mapped_column(Text)


class RolePermission(Base):
    __tablename__ = "role_permissions"

    role_name: Mapped[str] = mapped_column(ForeignKey("roles.name", ondelete="CASCADE"), primary_key=True)
    permission: Mapped[str] = mapped_column(String(64), primary_key=True)


class Principal(Base):
    """A user or upstream system that acts on campaigns; it holds one role."""

    __tablename__ = "principals"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    role_name: Mapped[str] = mapped_column(ForeignKey("roles.name"))
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())


class ApiToken(Base):
    """An API token of a principal (migration 0006). Only the SHA-256 of its secret is stored; ``id`` is the
    public part (``cmpt_<id>_<secret>``). A token authenticates while not revoked and not expired."""

    __tablename__ = "api_tokens"
    __table_args__ = (Index("ix_api_tokens_principal", "principal"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    principal: Mapped[str] = mapped_column(ForeignKey("principals.name", ondelete="CASCADE"))
    secret_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(_tz(), server_default=func.now())
    created_by: Mapped[str] = mapped_column(String(128))
    expires_at: Mapped[datetime | None] = mapped_column(_tz())
    revoked_at: Mapped[datetime | None] = mapped_column(_tz())
    revoked_by: Mapped[str | None] = mapped_column(String(128))
    last_used_at: Mapped[datetime | None] = mapped_column(_tz())


class CommandKey(Base):
    """An upstream system's HMAC key for signing ``campaign.commands`` records (migration 0008). Commands
    signed with it act as ``principal``; a revoked key verifies nothing."""

    __tablename__ = "command_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    principal: Mapped[str] = mapped_column(ForeignKey("principals.name", ondelete="CASCADE"))
    secret: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(_tz(), server_default=func.now())
    created_by: Mapped[str] = mapped_column(String(128))
    revoked_at: Mapped[datetime | None] = mapped_column(_tz())


class AuditLog(Base):
    __tablename__ = "audit_log"
    __table_args__ = (
        Index("ix_audit_log_campaign", "campaign_id", "id"),
        Index("ix_audit_log_principal", "principal", "id"),
        Index("ix_audit_log_occurred_at", "occurred_at"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    occurred_at: Mapped[datetime] = mapped_column(server_default=func.now())
    principal: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(64))
    campaign_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    detail: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))


class ProcessedCommand(Base):
    """Command ids already applied from ``campaign.commands``: a repeated command id is a no-op."""

    __tablename__ = "processed_commands"

    command_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    processed_at: Mapped[datetime] = mapped_column(server_default=func.now())
    outcome: Mapped[str] = mapped_column(String(16))
    detail: Mapped[str | None] = mapped_column(Text)
