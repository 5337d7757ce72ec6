"""CampaignService: how operators and upstream systems drive campaigns.

Every operation checks the actor's permission first (RBAC from the ``principals``/``role_permissions``
rows; on campaigns also the ownership rule, :func:`campaigns.core.rbac.require_owner`), runs in ONE database
transaction, and writes its outbox event (published to ``campaign.events``
by the relay) and its audit row in that same transaction. State changes go through the domain state
machine and a conditional UPDATE on the campaign's version, so of two concurrent changes exactly one
wins; the loser gets :class:`~campaigns.errors.ConcurrentUpdate`.

Commands from ``campaign.commands`` go through :meth:`CampaignService.execute_command`, which claims the
command id in the same transaction as the change it makes: a repeated command id is a no-op, and a
command is never half-applied (the claim and the change commit together or not at all).

Ordering note for the outbox relay: every writer of a campaign's events takes the campaign row's lock
(INSERT of the row, or the conditional UPDATE) *before* inserting its outbox row, so for one campaign the
outbox ids are allocated in commit order and "id order per key" is the order the changes happened in.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, TypeVar

from sqlalchemy.orm import Session, sessionmaker

from campaigns.core import rbac, signing
from campaigns.core import sms as sms_core
from campaigns.core import tokens as tokens_core
from campaigns.core import unsubscribe as unsubscribe_core
from campaigns.core.payload import (
    MAX_SCHEDULE_AHEAD,
    CampaignDraft,
    email_subject_problems,
    validate_create_payload,
)
from campaigns.core.states import CampaignAction, CampaignStatus, transition
from campaigns.core.templates import (
    PROFILE_FIELDS,
    Clean,
    compile_template,
    sanitize_html,
    sanitize_text,
    template_parameters_in_order,
    template_variables,
)
from campaigns.db import repository as repo
from campaigns.db.engine import transaction
from campaigns.db.models import Campaign, CampaignMessage
from campaigns.errors import (
    AccessRefused,
    ConcurrentUpdate,
    NotFound,
    PermissionDenied,
    TransitionNotAllowed,
    ValidationError,
)
from campaigns.topics import EVENTS, OUTCOMES

SYSTEM_PRINCIPAL = "system"  # the scheduler, the analytics stage and in-process programs act as this (internal)
OPERATOR = "operator"  # what audit rows written before API tokens name for database-level changes (reserved)
BOOTSTRAP_ROLE = "admin"
UNSUBSCRIBE_PRINCIPAL = "recipient"  # what audit rows name for a recipient's own one-click unsubscribe
RECEIPT_KINDS = ("delivered", "read", "clicked", "bounced")
COMMAND_TYPES = ("CREATE", "SCHEDULE", "PAUSE", "RESUME", "CANCEL")
IMPORT_COMMAND_TYPES = ("IMPORT_CUSTOMERS", "IMPORT_SEGMENT")  # applied by the consumer through sinks/customers.py
COMMAND_ID_MAX = 128  # processed_commands.command_id is VARCHAR(128)
_BIGINT_MAX = 2**63 - 1


R = TypeVar("R")


def utcnow() -> datetime:
    return datetime.now(UTC)


def to_millis(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


@dataclass(frozen=True)
class CampaignView:
    id: uuid.UUID
    name: str
    channel: str
    status: str
    version: int
    start_at: datetime | None
    created_by: str
    total_recipients: int | None
    skipped_recipients: int
    expansion_done: bool
    activated_at: datetime | None
    finished_at: datetime | None
    content_approved_by: str | None = None

    @property
    def content_approved(self) -> bool:
        return self.content_approved_by is not None

    @classmethod
    def of(cls, c: Campaign) -> CampaignView:
        return cls(
            id=c.id, name=c.name, channel=c.channel_kind, status=c.status, version=c.version,
            start_at=c.start_at, created_by=c.created_by, total_recipients=c.total_recipients,
            skipped_recipients=c.skipped_recipients, expansion_done=c.expansion_done,
            activated_at=c.activated_at, finished_at=c.finished_at, content_approved_by=c.content_approved_by,
        )


@dataclass(frozen=True)
class CampaignStatusView:
    campaign: CampaignView
    recipients: Mapping[str, int] = field(default_factory=dict)
    failures_by_reason: Mapping[str, int] = field(default_factory=dict)
    channel_paused: str | None = None  # why the campaign's channel breaker is open, or None (sending)
    sms: Mapping[str, Any] | None = None  # an SMS campaign's cost estimate (CampaignService.content_estimate)
    receipts: Mapping[str, int] = field(default_factory=dict)  # analytics totals: sent, delivered, read, bounced, ...

    @property
    def terminal(self) -> int:
        return sum(self.recipients.get(s, 0) for s in ("sent", "failed", "skipped", "cancelled"))

    def as_dict(self) -> dict[str, Any]:
        c = self.campaign
        return {
            "id": str(c.id), "name": c.name, "channel": c.channel, "status": c.status, "version": c.version,
            "start_at": c.start_at.isoformat() if c.start_at else None,
            "created_by": c.created_by, "content_approved_by": c.content_approved_by,
            "activated_at": c.activated_at.isoformat() if c.activated_at else None,
            "finished_at": c.finished_at.isoformat() if c.finished_at else None,
            "total_recipients": c.total_recipients, "skipped_recipients": c.skipped_recipients,
            "expansion_done": c.expansion_done, "recipients": dict(self.recipients),
            "terminal": self.terminal,
            "failures_by_reason": dict(self.failures_by_reason),
            "channel_paused": self.channel_paused,
            "sms": dict(self.sms) if self.sms is not None else None,
            "receipts": dict(self.receipts),
        }


@dataclass(frozen=True)
class CommandRequest:
    """A decoded ``campaign.commands`` record, ready to apply.

    ``command_type`` is one of :data:`COMMAND_TYPES`. ``payload`` is the parsed create payload (CREATE
    only). ``campaign_id`` is the target (required for every type but CREATE, where it is optional and,
    when given, becomes the new campaign's id so the sender can address it in later commands).
    ``start_at`` is the SCHEDULE time; None means the start time given at creation, else now.
    """

    command_id: str
    command_type: str
    principal: str
    campaign_id: uuid.UUID | None = None
    payload: object = None
    start_at: datetime | None = None


@dataclass(frozen=True)
class CommandResult:
    """What :meth:`CampaignService.execute_command` did.

    ``outcome`` is ``"applied"`` when this call made the change, ``"duplicate"`` when the command id had
    been processed before (nothing changed; ``previous_outcome`` says whether it was applied or rejected
    then). ``version`` is the campaign's version after the change (None for duplicates).
    """

    command_id: str
    outcome: Literal["applied", "duplicate"]
    campaign_id: uuid.UUID | None = None
    version: int | None = None
    previous_outcome: str | None = None


class CampaignService:
    """The campaign API. ``clock`` returns an aware UTC datetime; tests pass a fake one."""

    def __init__(self, sessions: sessionmaker[Session], clock: Callable[[], datetime] = utcnow) -> None:
        self._sessions = sessions
        self._clock = clock

    # --- RBAC ------------------------------------------------------------------------------------

    def _granted(self, session: Session, actor: str) -> frozenset[rbac.Permission] | None:
        granted = repo.principal_permissions(session, actor)
        known = {p.value for p in rbac.Permission}
        # A grant this code version does not know (added by hand, or by a newer version) grants nothing
        # here rather than crashing the check.
        return None if granted is None else frozenset(rbac.Permission(p) for p in granted if p in known)

    def _require(self, session: Session, actor: str, operation: str) -> frozenset[rbac.Permission]:
        permissions = self._granted(session, actor)
        rbac.require(actor, permissions, rbac.permission_for(operation))
        assert permissions is not None
        return permissions

    def authorize(self, actor: str, operation: str) -> None:
        """Raise :class:`PermissionDenied` unless ``actor`` may perform ``operation`` (an operation of
        :data:`campaigns.core.rbac.OPERATION_PERMISSION` carried out outside the service: replay, seed, ...)."""
        with transaction(self._sessions) as session:
            self._require(session, actor, operation)

    def permissions(self, actor: str) -> frozenset[rbac.Permission] | None:
        """What ``actor`` holds, or None for an unknown principal."""
        with transaction(self._sessions) as session:
            return self._granted(session, actor)

    def record(self, actor: str, action: str, detail: Mapping[str, Any], campaign_id: uuid.UUID | None = None) -> None:
        """An audit row for something done outside the service (a replay, a redrive, a seed)."""
        with transaction(self._sessions) as session:
            repo.add_audit(session, principal=actor, action=action, campaign_id=campaign_id, detail=dict(detail))

    # --- authentication ----------------------------------------------------------------------------

    def authenticate(self, token: str | None) -> str:
        """The principal a token belongs to; :class:`PermissionDenied` for anything else.

        Malformed, unknown, revoked and expired tokens, and wrong secrets, all get the same answer (nothing
        tells a guesser which part was wrong). A successful use records ``last_used_at``."""
        parsed = tokens_core.parse(token)
        now = self._clock()
        refused = AccessRefused(
            "invalid, expired or revoked API token (CAMPAIGNS_TOKEN or --token); ask an admin for a new one "
            "(`campaigns token create NAME`)"
        )
        if parsed is None:
            raise refused
        with transaction(self._sessions) as session:
            row = repo.get_token(session, parsed.token_id)
            if (row is None or row.revoked_at is not None or (row.expires_at is not None and row.expires_at <= now)
                    or not tokens_core.verify(parsed.secret, row.secret_hash)):
                raise refused
            repo.touch_token(session, row.id, now)
            return row.principal

    def bootstrap(self, name: str) -> str:
        """Create the first principal, an admin, with an API token; returns the token (shown once).

        Only on a database without principals: afterwards it raises :class:`PermissionDenied` (an admin adds
        principals). The check and the insert hold a lock on ``principals``, so two racing bootstraps cannot
        both succeed."""
        name = rbac.check_principal_name(name)
        now = self._clock()
        with transaction(self._sessions) as session:
            repo.lock_principals(session)
            if repo.principal_count(session) > 0:
                raise AccessRefused(
                    "bootstrap: this database already has principals, so it is not a first install; an admin "
                    "adds principals (`campaigns principal add`) and tokens (`campaigns token create`)", name,
                )
            repo.upsert_principal(session, name, BOOTSTRAP_ROLE)
            token = self._issue(session, name, created_by=name, now=now, expires_at=None)
            repo.add_audit(session, principal=name, action="bootstrap", campaign_id=None,
                           detail={"name": name, "role": BOOTSTRAP_ROLE})
            return token

    def create_token(self, actor: str, principal: str, *, expires_in: timedelta | None = None) -> tuple[str, str]:
        """A new API token for ``principal``: (token id, token). The token is returned once; only its hash is
        kept."""
        now = self._clock()
        with transaction(self._sessions) as session:
            self._require(session, actor, "create_token")
            if not repo.principal_exists(session, principal):
                raise NotFound(f"principal {principal!r} does not exist; add it with `campaigns principal add`")
            expires_at = now + expires_in if expires_in is not None else None
            token = self._issue(session, principal, created_by=actor, now=now, expires_at=expires_at)
            token_id = tokens_core.parse(token).token_id  # type: ignore[union-attr]
            repo.add_audit(session, principal=actor, action="create_token", campaign_id=None,
                           detail={"principal": principal, "token_id": token_id,
                                   "expires_at": expires_at.isoformat() if expires_at else None})
            return token_id, token

    def _issue(self, session: Session, principal: str, *, created_by: str, now: datetime,
               expires_at: datetime | None) -> str:
        token = tokens_core.new_token()
        repo.add_token(session, token_id=token.token_id, principal=principal,
                       secret_hash=tokens_core.secret_hash(token.secret), created_by=created_by, now=now,
                       expires_at=expires_at)
        return tokens_core.text(token)

    def revoke_tokens(self, actor: str, *, token_id: str | None = None, principal: str | None = None) -> list[str]:
        """Revoke one token (its id, or the whole token) or every token of ``principal``. A principal may revoke
        its own tokens; anyone else's needs ``principals.manage``. Returns the ids revoked (NotFound if none)."""
        if (token_id is None) == (principal is None):
            raise ValidationError("give a token id or a principal, not both")
        if token_id is not None:
            parsed = tokens_core.parse(token_id)
            token_id = parsed.token_id if parsed else token_id.strip()
            if not tokens_core.TOKEN_ID.fullmatch(token_id):
                raise ValidationError(f"token id: {token_id[:40]!r} is not a token id (16 hex characters, as "
                                      "`campaigns token list` shows)")
        now = self._clock()
        with transaction(self._sessions) as session:
            row = repo.get_token(session, token_id) if token_id is not None else None
            owner = row.principal if row is not None else principal
            if owner != actor:
                self._require(session, actor, "revoke_token")
            revoked = repo.revoke_tokens(session, revoked_by=actor, now=now, token_id=token_id, principal=principal)
            if not revoked:
                what = f"token {token_id}" if token_id else f"principal {principal!r}"
                raise NotFound(f"{what}: no live token to revoke (`campaigns token list` shows them)")
            repo.add_audit(session, principal=actor, action="revoke_token", campaign_id=None,
                           detail={"token_ids": revoked, "principal": owner})
            return revoked

    def create_command_key(self, actor: str, principal: str) -> tuple[str, str]:
        """A new HMAC key for an upstream system that produces ``campaign.commands`` as ``principal``:
        (key id, secret). The secret is shown once; commands signed with it act as ``principal``."""
        now = self._clock()
        with transaction(self._sessions) as session:
            self._require(session, actor, "create_token")
            if not repo.principal_exists(session, principal):
                raise NotFound(f"principal {principal!r} does not exist; add it with `campaigns principal add`")
            key_id, secret = f"ck_{uuid.uuid4().hex[:16]}", signing.new_secret()
            repo.add_command_key(session, key_id=key_id, principal=principal, secret=secret, created_by=actor,
                                 now=now)
            repo.add_audit(session, principal=actor, action="create_command_key", campaign_id=None,
                           detail={"principal": principal, "key_id": key_id})
            return key_id, secret

    def revoke_command_key(self, actor: str, key_id: str) -> None:
        """Revoke a command key: records signed with it are refused from now on (consumers re-read keys
        within ``COMMAND_KEY_TTL_S``)."""
        with transaction(self._sessions) as session:
            self._require(session, actor, "revoke_token")
            if not repo.revoke_command_key(session, key_id, self._clock()):
                raise NotFound(f"command key {key_id!r}: no live key by that id")
            repo.add_audit(session, principal=actor, action="revoke_command_key", campaign_id=None,
                           detail={"key_id": key_id})

    def command_key(self, key_id: str) -> tuple[str, str] | None:
        """(principal, secret) of a live command key, or None (internal: the command consumer's lookup)."""
        with transaction(self._sessions) as session:
            row = repo.command_key(session, key_id)
            if row is None or row.revoked_at is not None:
                return None
            return row.principal, row.secret

    def list_tokens(self, actor: str, principal: str | None = None) -> list[dict[str, Any]]:
        """Every token (never a secret or its hash): id, principal, created, expiry, revocation, last use."""
        with transaction(self._sessions) as session:
            self._require(session, actor, "list_tokens")
            return [{
                "id": t.id, "principal": t.principal, "created_at": t.created_at, "created_by": t.created_by,
                "expires_at": t.expires_at, "revoked_at": t.revoked_at, "revoked_by": t.revoked_by,
                "last_used_at": t.last_used_at,
            } for t in repo.tokens(session, principal)]

    def list_principals(self, actor: str) -> list[tuple[str, str]]:
        with transaction(self._sessions) as session:
            self._require(session, actor, "list_principals")
            return repo.principals(session)

    # --- channels ----------------------------------------------------------------------------------

    def add_channel(self, actor: str, *, kind: str, channel_id: str | None, provider: str, rate_per_s: float,
                    burst: int) -> str:
        """Add or update the enabled channel account of ``kind``; returns its id."""
        with transaction(self._sessions) as session:
            self._require(session, actor, "add_channel")
            # One enabled channel per kind (the kind names the topic the senders consume): without an id,
            # update the enabled one; a different id would collide with it.
            current = repo.enabled_channel(session, kind)
            channel_id = channel_id or (current.id if current is not None else kind)
            if current is not None and current.id != channel_id:
                raise ValidationError(
                    f"--id: an enabled {kind} channel {current.id!r} exists and only one per kind "
                    f"may be enabled; update it with --id {current.id} (or leave --id out)"
                )
            repo.upsert_channel(session, id=channel_id, kind=kind, provider=provider, rate_per_s=rate_per_s,
                                burst=burst)
            repo.add_audit(session, principal=actor, action="add_channel", campaign_id=None,
                           detail={"id": channel_id, "kind": kind, "rate_per_s": rate_per_s, "burst": burst})
            return channel_id

    def close_channel(self, actor: str, kind: str) -> str:
        """Close the enabled ``kind`` channel's breaker by hand; returns the channel id."""
        with transaction(self._sessions) as session:
            self._require(session, actor, "close_channel")
            channel = repo.close_channel_breaker(session, kind)
            if channel is None:
                raise NotFound(f"no enabled {kind!r} channel; `campaigns channel list` shows them")
            repo.add_audit(session, principal=actor, action="close_channel_breaker", campaign_id=None,
                           detail={"id": channel.id, "kind": kind})
            return channel.id

    def list_channels(self, actor: str) -> list[dict[str, Any]]:
        with transaction(self._sessions) as session:
            self._require(session, actor, "list_channels")
            return [{"id": c.id, "kind": c.kind, "provider": c.provider, "rate_per_s": float(c.rate_per_s),
                     "burst": c.burst, "breaker": "open" if c.paused_reason else "closed",
                     "paused_reason": c.paused_reason,
                     "paused_at": c.paused_at.isoformat() if c.paused_at else None,
                     "failed_probes": c.failed_probes} for c in repo.channels(session)]

    # --- audit -------------------------------------------------------------------------------------

    def audit_log(self, actor: str, *, campaign_id: uuid.UUID | None = None, principal: str | None = None,
                  since: datetime | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        """The audit log, oldest first (the newest ``limit`` rows that match)."""
        with transaction(self._sessions) as session:
            self._require(session, actor, "read_audit_log")
            return [{"id": r.id, "occurred_at": r.occurred_at, "principal": r.principal, "action": r.action,
                     "campaign_id": str(r.campaign_id) if r.campaign_id else None, "detail": r.detail}
                    for r in repo.audit_entries(session, campaign_id=campaign_id, principal=principal,
                                                since=since, limit=limit)]

    # --- create ----------------------------------------------------------------------------------

    def create_campaign(
        self, actor: str, payload: object, *, campaign_id: uuid.UUID | None = None
    ) -> uuid.UUID:
        """Validate, sanitise and persist a draft campaign with its content and a CREATED event.

        ``campaign_id`` (optional) is the id to give the campaign; a new random one otherwise. Raises
        :class:`ValidationError` listing every problem (payload, unknown segments or customers, missing
        channel, unapproved template, missing variables); nothing is written then.
        """
        with transaction(self._sessions) as session:
            return self._create_in(session, actor, payload, campaign_id)

    def _create_in(
        self, session: Session, actor: str, payload: object, campaign_id: uuid.UUID | None
    ) -> uuid.UUID:
        now = self._clock()
        granted = self._require(session, actor, "create_campaign")
        draft = validate_create_payload(payload, now=now)
        problems: list[str] = []
        segment_ids = _int_ids(draft.segments, "segments", problems)
        manual = _int_ids(draft.manual_recipients, "manual_recipients", problems)
        missing_segments = set(segment_ids) - repo.existing_segments(session, segment_ids)
        if missing_segments:
            problems.append(f"segments: unknown segment ids {sorted(missing_segments)} "
                            "(create them first, e.g. `campaigns seed`)")
        missing_customers = set(manual) - repo.existing_customers(session, manual)
        if missing_customers:
            shown = sorted(missing_customers)[:10]
            problems.append(f"manual_recipients: {len(missing_customers)} unknown customer ids, e.g. {shown}")
        channel = repo.enabled_channel(session, draft.channel.value)
        if channel is None:
            problems.append(f"channel: no enabled {draft.channel.value} channel is configured "
                            f"(add one with `campaigns channel add {draft.channel.value}`)")
        if campaign_id is not None and repo.get_campaign(session, campaign_id) is not None:
            problems.append(f"campaign_id: campaign {campaign_id} already exists")
        message, template_id = self._content(session, draft, problems)
        others = self._other_locales(session, draft, template_id, problems) if message is not None else []
        if problems or channel is None or message is None:
            raise ValidationError(problems or ["content: could not be rendered"])

        campaign = Campaign(
            id=campaign_id or uuid.uuid4(), name=draft.name, channel_kind=draft.channel.value,
            channel_id=channel.id, template_id=template_id, status=CampaignStatus.DRAFT.value, version=1,
            start_at=draft.start_at, batch_size=draft.batch_size, max_retries=draft.retry_policy.max_retries,
            backoff_base_s=draft.retry_policy.backoff_base_s, backoff_max_s=draft.retry_policy.backoff_max_s,
            retry_jitter=draft.retry_policy.jitter, failure_threshold=draft.failure_threshold,
            failure_min_sample=draft.failure_min_sample, locale=draft.locale, created_by=actor,
            max_sms_segments=draft.max_sms_segments,
            created_at=now, updated_at=now, **self._content_approval(session, actor, granted, template_id, now),
        )
        repo.insert_campaign(session, campaign, segment_ids=segment_ids, manual_recipients=manual,
                             messages=[message, *others])
        self._event(session, campaign.id, "CREATED", campaign.version, actor, now, {"name": draft.name})
        repo.add_audit(session, principal=actor, action="create_campaign", campaign_id=campaign.id,
                       detail={"name": draft.name, "channel": draft.channel.value})
        return campaign.id

    @staticmethod
    def _content_approval(
        session: Session, actor: str, granted: frozenset[rbac.Permission], template_id: int | None, now: datetime
    ) -> dict[str, Any]:
        """Who approved the content: a template's approver; for inline content the creator if it may send
        unapproved content, else nobody yet (the campaign cannot be scheduled until `campaigns approve`)."""
        if template_id is not None:
            approver = repo.template_approver(session, template_id)
            return {"content_approved_by": approver or actor, "content_approved_at": now}
        if rbac.Permission.CONTENT_SEND_UNAPPROVED in granted:
            return {"content_approved_by": actor, "content_approved_at": now}
        return {"content_approved_by": None, "content_approved_at": None}

    def approve_content(self, actor: str, campaign_id: uuid.UUID) -> None:
        """Approve a campaign's inline content (``templates.manage``), so it can be scheduled."""
        with transaction(self._sessions) as session:
            self._require(session, actor, "approve_content")
            campaign = repo.get_campaign(session, campaign_id)
            if campaign is None:
                raise NotFound(f"campaign {campaign_id} does not exist; check the id (`campaigns status ID`)")
            if not repo.approve_content(session, campaign_id, actor, self._clock()):
                raise TransitionNotAllowed(f"campaign {campaign_id}: its content is already approved "
                                           f"(by {campaign.content_approved_by})")
            repo.add_audit(session, principal=actor, action="approve_content", campaign_id=campaign_id, detail={})

    def _content(
        self, session: Session, draft: CampaignDraft, problems: list[str]
    ) -> tuple[CampaignMessage | None, int | None]:
        """The stored message for ``draft`` and its template id; appends problems instead of raising.

        Campaign variables are substituted now; profile placeholders (``{{ first_name }}``,
        ``{{ attributes.x | default: "..." }}``) stay, rendered per recipient at send time.
        """
        channel = draft.channel.value
        if draft.content is not None:
            found = _variable_problems(draft.variables, ("content.body", draft.content.body),
                                       ("content.subject", draft.content.subject))
            if found:
                problems.extend(found)
                return None, None
            body = _substitute(draft.content.body, draft.variables, Clean.HTML if channel == "email" else Clean.TEXT)
            subject = _substitute(draft.content.subject, draft.variables, Clean.TEXT) if draft.content.subject else None
            problems.extend(_sms_problems(channel, body, draft.max_sms_segments))
            message = CampaignMessage(channel_kind=channel, locale=draft.locale, subject=subject, body=body)
            return message, None
        assert draft.template is not None  # the payload validation guarantees one of the two
        ref = draft.template
        template = repo.find_template(session, ref.name, draft.locale, ref.version)
        if template is None:
            latest = repo.latest_template(session, ref.name, draft.locale) if ref.version is None else None
            if latest is not None:
                problems.append(f"template: {ref.name!r} has no approved version for locale {draft.locale}; "
                                f"v{latest.version} is {latest.status} (approve it with "
                                f"`campaigns template approve {latest.id}`)")
            else:
                wanted = f"version {ref.version}" if ref.version is not None else "an approved version"
                problems.append(f"template: no template {ref.name!r} with {wanted} for locale {draft.locale} "
                                "(add and approve one with `campaigns template add FILE --approve`)")
            return None, None
        found = []
        if template.status != "approved":
            found.append(f"template: {ref.name!r} v{template.version} is {template.status}, not approved "
                         f"(approve it with `campaigns template approve {template.id}`)")
        if template.channel_kind != channel:
            found.append(f"template: {ref.name!r} is for {template.channel_kind}, not {channel}")
        found.extend(_variable_problems(draft.variables, ("template.body", template.body),
                                        ("template.subject", template.subject), template=ref.name))
        if channel == "email" and template.subject:  # one header line once rendered: refused now, not per recipient
            found.extend(email_subject_problems(template.subject, draft.variables, field="template.subject"))
        problems.extend(found)
        if found or problems:
            return None, None
        try:
            body = _substitute(template.body, draft.variables, Clean.HTML if channel == "email" else Clean.TEXT)
            subject = _substitute(template.subject, draft.variables, Clean.TEXT) if template.subject else None
            parameters = self._template_parameters(channel, template.name, template.body, draft.variables)
            header = self._template_parameters(channel, template.name, template.subject or "", draft.variables)
        except ValidationError as error:
            problems.extend(error.problems)
            return None, None
        problems.extend(_sms_problems(channel, body, draft.max_sms_segments))
        message = CampaignMessage(channel_kind=channel, locale=draft.locale, subject=subject, body=body,
                                  template_name=template.name, template_parameters=list(parameters),
                                  header_parameters=list(header))
        return message, template.id

    def _other_locales(
        self, session: Session, draft: CampaignDraft, template_id: int | None, problems: list[str]
    ) -> list[CampaignMessage]:
        """Content in the other locales the campaign's template has an approved version in (the newest each),
        so each recipient gets its own locale and the campaign's locale is the fallback
        (``campaigns.core.content.pick_locale``). None for inline content or a pinned template version."""
        if template_id is None or draft.template is None or draft.template.version is not None:
            return []
        channel = draft.channel.value
        messages = []
        for template in repo.approved_template_locales(session, draft.template.name, channel, draft.locale):
            field = f"template ({template.locale})"
            found = _variable_problems(draft.variables, (f"{field}.body", template.body),
                                       (f"{field}.subject", template.subject), template=template.name)
            if channel == "email" and template.subject:
                found.extend(email_subject_problems(template.subject, draft.variables, field=f"{field}.subject"))
            if found:
                problems.extend(found)
                continue
            try:
                parameters = self._template_parameters(channel, template.name, template.body, draft.variables)
                header = self._template_parameters(channel, template.name, template.subject or "", draft.variables)
            except ValidationError as error:
                problems.extend(error.problems)
                continue
            body = _substitute(template.body, draft.variables, Clean.HTML if channel == "email" else Clean.TEXT)
            problems.extend(_sms_problems(channel, body, draft.max_sms_segments))
            messages.append(CampaignMessage(
                channel_kind=channel, locale=template.locale, body=body, template_name=template.name,
                subject=_substitute(template.subject, draft.variables, Clean.TEXT) if template.subject else None,
                template_parameters=list(parameters), header_parameters=list(header)))
        return messages

    @staticmethod
    def _template_parameters(
        channel: str, name: str, body: str, variables: Mapping[str, str]
    ) -> tuple[str, ...]:
        """What fills a provider-side template's parameters, in the template's parameter order.

        Only WhatsApp renders templates at the provider (the Cloud API takes the template name and its
        body parameters {{1}}..{{n}}); SMS and email send the body rendered here, so they need none. A
        parameter from a campaign variable is its value, rendered now (an empty one is a create-time error:
        the Cloud API refuses empty parameters); one from the profile is the placeholder itself, rendered
        for each recipient at send time.
        """
        if channel != "whatsapp":
            return ()
        parameters, empty = [], []
        for placeholder in template_parameters_in_order(body):
            if placeholder.name in variables:
                value = compile_template(placeholder.source).render(variables)
                if not value.strip():
                    empty.append(placeholder.name)
                parameters.append(value)
            else:
                parameters.append(placeholder.source)
        if empty:
            raise ValidationError([f"variables.{n}: must not be empty: the WhatsApp template {name!r} "
                                   "sends it as a parameter, and the Cloud API refuses empty ones" for n in empty])
        return tuple(parameters)

    def content_estimate(self, actor: str, campaign_id: uuid.UUID) -> dict[str, Any] | None:
        """An SMS campaign's cost estimate: encoding and segments of the static text per locale (what every
        message costs at least; placeholders add what each recipient's values add), its
        ``max_sms_segments``, and segments x recipients once the audience is counted. None for other
        channels."""
        with transaction(self._sessions) as session:
            self._require(session, actor, "campaign_status")
            campaign = repo.get_campaign(session, campaign_id)
            if campaign is None:
                raise NotFound(f"campaign {campaign_id} does not exist")
            if campaign.channel_kind != "sms":
                return None
            return sms_estimate(repo.campaign_bodies(session, campaign_id), campaign.max_sms_segments,
                                campaign.total_recipients)

    # --- transitions -----------------------------------------------------------------------------

    def schedule_campaign(self, actor: str, campaign_id: uuid.UUID, start_at: datetime | None = None) -> int:
        """draft|scheduled -> scheduled at ``start_at``. Returns the new version.

        ``start_at`` None keeps the start time given at creation (or at an earlier schedule), else now.
        It must be timezone-aware and at most a year ahead.
        """
        with transaction(self._sessions) as session:
            return self._schedule_in(session, actor, campaign_id, start_at)

    def _schedule_in(
        self, session: Session, actor: str, campaign_id: uuid.UUID, start_at: datetime | None
    ) -> int:
        self._require(session, actor, "schedule_campaign")
        if start_at is not None:
            if start_at.tzinfo is None or start_at.utcoffset() is None:
                raise ValidationError("start_at: needs a timezone (e.g. 2026-01-01T09:00:00Z)")
            horizon = self._clock() + MAX_SCHEDULE_AHEAD
            if start_at > horizon:
                raise ValidationError(f"start_at: must be at most {MAX_SCHEDULE_AHEAD.days} days ahead "
                                      f"(before {horizon.isoformat()}), got {start_at.isoformat()}")
        extra = {} if start_at is None else {"start_at": start_at.astimezone(UTC)}
        return self._apply_in(session, actor, campaign_id, CampaignAction.SCHEDULE, None, extra=extra,
                              owner_check=True)

    def pause_campaign(self, actor: str, campaign_id: uuid.UUID) -> int:
        return self._apply(actor, campaign_id, CampaignAction.PAUSE, "pause_campaign")

    def resume_campaign(self, actor: str, campaign_id: uuid.UUID) -> int:
        """paused -> active (or scheduled if it never started). Expansion restarts from the first recipient:
        senders drop messages of paused campaigns, and the claims make re-producing the rest harmless."""
        return self._apply(actor, campaign_id, CampaignAction.RESUME, "resume_campaign",
                           extra=self._extra_for(CampaignAction.RESUME))

    def cancel_campaign(self, actor: str, campaign_id: uuid.UUID) -> int:
        """Any non-terminal state -> cancelled. The expansion stage then records every recipient not yet
        logged as ``cancelled`` (the sweep, from the first recipient), so the campaign still ends with one
        terminal row per recipient."""
        return self._apply(actor, campaign_id, CampaignAction.CANCEL, "cancel_campaign",
                           extra=self._extra_for(CampaignAction.CANCEL))

    def _extra_for(self, action: CampaignAction) -> dict[str, Any]:
        """Columns an operator's action sets besides status/version (the API and commands share this)."""
        if action == CampaignAction.RESUME:
            return {"expansion_cursor": None, "expanded_recipients": 0, "expansion_done": False}
        if action == CampaignAction.CANCEL:
            return {"expansion_cursor": None, "expanded_recipients": 0, "expansion_done": False,
                    "finished_at": self._clock()}
        return {}

    def activate_due(self, limit: int = 100) -> list[uuid.UUID]:
        """scheduled -> active for every campaign whose start time has come. Safe to run from several
        workers at once: the conditional UPDATE lets exactly one of them activate each campaign, and a
        campaign paused or cancelled since it was found is skipped."""
        now = self._clock()
        activated = []
        with transaction(self._sessions) as session:
            due = repo.due_campaign_ids(session, now, limit)
        for campaign_id in due:
            try:
                self._apply(SYSTEM_PRINCIPAL, campaign_id, CampaignAction.ACTIVATE, None,
                            extra={"activated_at": now})
            except TransitionNotAllowed:  # includes ConcurrentUpdate
                continue  # another worker (or a pause/cancel) got there first
            activated.append(campaign_id)
        return activated

    def finish_campaign(
        self, campaign_id: uuid.UUID, action: CampaignAction, detail: Mapping[str, Any]
    ) -> bool:
        """active -> completed|failed (completion or a breaker decides which). False if it lost a race or the
        campaign is no longer in a state that allows it (paused, cancelled, already finished)."""
        extra: dict[str, Any] = {"finished_at": self._clock()}
        if action == CampaignAction.FAIL:
            # The sweep then records every recipient never sent to as cancelled.
            extra.update(expansion_cursor=None, expanded_recipients=0, expansion_done=False)
        try:
            self._apply(SYSTEM_PRINCIPAL, campaign_id, action, None, extra=extra, detail=detail)
        except TransitionNotAllowed:  # includes ConcurrentUpdate
            return False
        return True

    def _apply(
        self, actor: str, campaign_id: uuid.UUID, action: CampaignAction, operation: str | None,
        extra: Mapping[str, Any] | None = None, detail: Mapping[str, Any] | None = None,
    ) -> int:
        with transaction(self._sessions) as session:
            return self._apply_in(session, actor, campaign_id, action, operation, extra, detail)

    def _apply_in(
        self, session: Session, actor: str, campaign_id: uuid.UUID, action: CampaignAction,
        operation: str | None, extra: Mapping[str, Any] | None = None,
        detail: Mapping[str, Any] | None = None, *, owner_check: bool = False,
    ) -> int:
        """Apply ``action`` inside the caller's transaction; RBAC for ``operation`` and the ownership rule unless
        it is None (internal actors) and ``owner_check`` is not set (schedule checks its RBAC before)."""
        now = self._clock()
        granted = self._require(session, actor, operation) if operation is not None else None
        campaign = repo.get_campaign(session, campaign_id)
        if campaign is None:
            raise NotFound(f"campaign {campaign_id} does not exist; check the id (`campaigns status ID`)")
        if operation is not None or owner_check:
            rbac.require_owner(actor, granted if granted is not None else self._granted(session, actor),
                               campaign.created_by, f"campaign {campaign_id}")
        if action == CampaignAction.SCHEDULE and campaign.content_approved_at is None:
            raise TransitionNotAllowed(
                f"campaign {campaign_id} has inline content nobody approved yet: an approver (templates.manage) "
                f"runs `campaigns approve {campaign_id}`, or use an approved template"
            )
        current = CampaignStatus(campaign.status)
        target = transition(current, action, was_activated=campaign.activated_at is not None)
        values = dict(extra or {})
        details = dict(detail or {})
        if action == CampaignAction.SCHEDULE:
            # No explicit time: keep the one given at creation (or at an earlier schedule), else now.
            values.setdefault("start_at", campaign.start_at or now)
            details.setdefault("start_at", values["start_at"].isoformat())
        version = repo.change_campaign_status(
            session, campaign_id, expected_version=campaign.version, expected_status=current.value,
            new_status=target.value, now=now, **values,
        )
        if version is None:
            raise ConcurrentUpdate(
                f"campaign {campaign_id} changed while {action.value} was being applied; "
                "read it again and retry"
            )
        self._event(session, campaign_id, _EVENT_FOR_ACTION[action], version, actor, now, details)
        repo.add_audit(session, principal=actor, action=operation or f"{action.value}_campaign",
                       campaign_id=campaign_id, detail={"from": current.value, "to": target.value, **details})
        return version

    def _event(
        self, session: Session, campaign_id: uuid.UUID, event_type: str, version: int, actor: str,
        now: datetime, detail: Mapping[str, Any],
    ) -> None:
        event_id = uuid.uuid4()
        repo.add_outbox_event(
            session, topic=EVENTS, key=str(campaign_id), event_type=event_type, event_id=event_id,
            payload={
                "event_id": str(event_id), "campaign_id": str(campaign_id), "event_type": event_type,
                "campaign_version": version, "occurred_at": to_millis(now),
                # The schema says null for system-driven changes (scheduler, completion).
                "actor": None if actor == SYSTEM_PRINCIPAL else actor,
                "detail_json": json.dumps(detail, default=str) if detail else None,
            },
        )

    # --- commands (campaign.commands) ------------------------------------------------------------

    def execute_command(self, command: CommandRequest) -> CommandResult:
        """Apply one upstream command exactly once, with the same RBAC and validation as the API.

        The command id is claimed (``processed_commands``) in the same transaction as the change, so a
        repeated id is a no-op returning ``outcome="duplicate"``, and two consumers racing on the same id
        serialise on the claim (the second waits, then sees the duplicate). Errors (ValidationError,
        PermissionDenied, NotFound, TransitionNotAllowed, ConcurrentUpdate) roll the claim back with the
        change; record a final rejection with :meth:`record_rejected_command`.
        """
        problems = []
        if not command.command_id or len(command.command_id) > COMMAND_ID_MAX:
            problems.append(f"command_id: 1..{COMMAND_ID_MAX} characters, got {len(command.command_id)}")
        if command.command_type not in COMMAND_TYPES:
            problems.append(
                f"command_type: must be one of {', '.join(COMMAND_TYPES)}, got {command.command_type!r}"
            )
        elif command.command_type != "CREATE" and command.campaign_id is None:
            problems.append(f"campaign_id: required for {command.command_type}")
        if problems:
            raise ValidationError(problems)
        with transaction(self._sessions) as session:
            campaign_id = command.campaign_id
            if command.command_type == "CREATE" and campaign_id is None:
                campaign_id = uuid.uuid4()
            assert campaign_id is not None
            detail = json.dumps({"campaign_id": str(campaign_id)})
            if not repo.claim_command(session, command.command_id, "applied", detail):
                previous = repo.processed_command(session, command.command_id)
                prev_outcome, prev_detail = previous if previous is not None else (None, None)
                return CommandResult(command.command_id, "duplicate",
                                     campaign_id=_detail_campaign(prev_detail), previous_outcome=prev_outcome)
            actor = command.principal
            if command.command_type == "CREATE":
                self._create_in(session, actor, command.payload, campaign_id)
                version = 1
            elif command.command_type == "SCHEDULE":
                version = self._schedule_in(session, actor, campaign_id, command.start_at)
            else:
                action = CampaignAction(command.command_type.lower())
                version = self._apply_in(session, actor, campaign_id, action, f"{action.value}_campaign",
                                         extra=self._extra_for(action))
            return CommandResult(command.command_id, "applied", campaign_id=campaign_id, version=version)

    def run_import(
        self,
        actor: str,
        operation: str,
        work: Callable[[Any], R],
        describe: Callable[[R], Mapping[str, Any]],
        *,
        command_id: str | None = None,
    ) -> tuple[Literal["applied", "duplicate"], R | None]:
        """Run a bulk write (an audience import) in ONE transaction: ``actor`` must hold ``operation``'s
        permission (checked first, before any input is read); with ``command_id`` the id is claimed
        (``processed_commands``) in the same transaction, and a repeated id returns ``("duplicate", None)``
        without running ``work``. ``work`` gets the transaction's psycopg2 cursor and must not commit; an
        exception from it rolls back everything, the claim included. An audit row (``describe(result)``) is
        written with the change."""
        if command_id is not None and (not command_id or len(command_id) > COMMAND_ID_MAX):
            raise ValidationError(f"command_id: 1..{COMMAND_ID_MAX} characters, got {len(command_id)}")
        with transaction(self._sessions) as session:
            self._require(session, actor, operation)
            if command_id is not None and not repo.claim_command(session, command_id, "applied", None):
                return "duplicate", None
            cursor = session.connection().connection.cursor()
            try:
                result = work(cursor)
            finally:
                cursor.close()
            detail = dict(describe(result))
            if command_id is not None:
                detail["command_id"] = command_id
            repo.add_audit(session, principal=actor, action=operation, campaign_id=None, detail=detail)
            return "applied", result

    def record_rejected_command(self, command_id: str, reason: str) -> bool:
        """Remember that ``command_id`` was rejected, so a repeat of it is a no-op too. False if the id was
        already recorded (applied or rejected) by someone else."""
        if not command_id or len(command_id) > COMMAND_ID_MAX:
            return False  # an id that cannot be stored cannot be deduplicated either
        with transaction(self._sessions) as session:
            return repo.claim_command(session, command_id, "rejected", reason[:2000])

    # --- reads -----------------------------------------------------------------------------------

    def get_campaign(self, actor: str, campaign_id: uuid.UUID) -> CampaignView:
        with transaction(self._sessions) as session:
            self._require(session, actor, "get_campaign")
            campaign = repo.get_campaign(session, campaign_id)
            if campaign is None:
                raise NotFound(f"campaign {campaign_id} does not exist")
            return CampaignView.of(campaign)

    def campaign_status(self, actor: str, campaign_id: uuid.UUID) -> CampaignStatusView:
        with transaction(self._sessions) as session:
            self._require(session, actor, "campaign_status")
            campaign = repo.get_campaign(session, campaign_id)
            if campaign is None:
                raise NotFound(f"campaign {campaign_id} does not exist")
            return CampaignStatusView(
                campaign=CampaignView.of(campaign),
                recipients=repo.recipient_status_counts(session, campaign_id),
                failures_by_reason=repo.failure_reasons(session, campaign_id),
                channel_paused=getattr(repo.enabled_channel(session, campaign.channel_kind), "paused_reason", None),
                sms=sms_estimate(repo.campaign_bodies(session, campaign_id), campaign.max_sms_segments,
                                 campaign.total_recipients) if campaign.channel_kind == "sms" else None,
                receipts=repo.receipt_totals(session, campaign_id),
            )

    # --- unsubscribe (RFC 8058 one-click) ---------------------------------------------------------

    def unsubscribe(self, token: str, secret: bytes) -> dict[str, Any]:
        """Apply a recipient's one-click unsubscribe: the token (``campaigns.core.unsubscribe``, made by the
        sender with ``secret``) is the only credential. The customer is opted out of the token's channel and
        its address suppressed there (reason ``unsubscribe``), with an audit row, in one transaction;
        repeating it changes nothing. A token not made with ``secret`` is :class:`PermissionDenied` and
        changes nothing; one for a customer that no longer exists is :class:`NotFound`."""
        claim = unsubscribe_core.verify(secret, token)
        if claim is None:
            raise PermissionDenied("(unsubscribe link)", "", "this unsubscribe link is not valid (altered, or "
                                   "signed with another key); use the link from the message as it was received")
        with transaction(self._sessions) as session:
            done = repo.opt_out(session, claim.customer_id, claim.channel,
                                source=f"one-click: campaign {claim.campaign_id}")
            if done is None:
                raise NotFound(f"customer {claim.customer_id} of this unsubscribe link no longer exists")
            _address, changed = done
            if changed:
                repo.add_audit(session, principal=UNSUBSCRIBE_PRINCIPAL, action="unsubscribe",
                               campaign_id=claim.campaign_id,
                               detail={"customer_id": claim.customer_id, "channel": claim.channel})
        return {"unsubscribed": True, "channel": claim.channel, "changed": changed}

    # --- receipts, principals, templates ---------------------------------------------------------

    def update_metrics(self, actor: str, campaign_id: uuid.UUID, metrics_delta: Mapping[str, int]) -> None:
        """External delivery receipts (delivered, read, clicked, bounced counts) enter the analytics path as
        DeliveryOutcome records on ``delivery.outcomes``, through the outbox (so exactly once per call)."""
        problems = [f"metrics.{k}: unknown receipt kind (use {', '.join(RECEIPT_KINDS)})"
                    for k in metrics_delta if k not in RECEIPT_KINDS]
        problems += [f"metrics.{k}: must be a non-negative integer, got {v!r}"
                     for k, v in metrics_delta.items()
                     if not isinstance(v, int) or isinstance(v, bool) or v < 0]
        if problems:
            raise ValidationError(problems)
        now = self._clock()
        with transaction(self._sessions) as session:
            self._require(session, actor, "update_metrics")
            if repo.get_campaign(session, campaign_id) is None:
                raise NotFound(f"campaign {campaign_id} does not exist")
            receipt_id = uuid.uuid4()
            for kind, count in metrics_delta.items():
                if count == 0:
                    continue
                event_id = uuid.uuid5(receipt_id, kind)
                repo.add_outbox_event(
                    session, topic=OUTCOMES, key=str(campaign_id), event_type=kind.upper(),
                    event_id=event_id,
                    payload={
                        "outcome_id": str(event_id), "message_id": str(receipt_id),
                        "campaign_id": str(campaign_id),
                        "recipient_id": "", "channel": "", "status": kind.upper(), "attempt": count,
                        "latency_ms": None, "failure_reason": None, "provider_message_id": None,
                        "occurred_at": to_millis(now),
                    },
                )
            repo.add_audit(session, principal=actor, action="update_metrics", campaign_id=campaign_id,
                           detail=dict(metrics_delta))

    def add_principal(self, actor: str, name: str, role: str) -> None:
        with transaction(self._sessions) as session:
            self._require(session, actor, "add_principal")
            self._add_principal(session, actor, name, role)

    def provision_principal(self, name: str, role: str) -> None:
        """Create (or re-role) a principal with no acting principal, as :data:`SYSTEM_PRINCIPAL`: for in-process
        programs that hold the database credentials (the demo, the bench harness, tests). The CLI never calls
        it: there, principals come from `campaigns bootstrap` (the first admin) and `campaigns principal add`."""
        with transaction(self._sessions) as session:
            self._add_principal(session, SYSTEM_PRINCIPAL, name, role)

    bootstrap_principal = provision_principal  # the earlier name

    def _add_principal(self, session: Session, actor: str, name: str, role: str) -> None:
        name = rbac.check_principal_name(name)
        if not repo.role_exists(session, role):
            raise ValidationError(f"role: unknown role {role!r} (admin, marketer, auditor)")
        repo.upsert_principal(session, name, role)
        repo.add_audit(session, principal=actor, action="add_principal", campaign_id=None,
                       detail={"name": name, "role": role})

    def add_template(
        self, actor: str | None, *, name: str, channel: str, body: str, subject: str | None = None,
        locale: str = "en", approve: bool = False,
    ) -> int:
        """Store a new template version (pending; approved at once with ``approve``). Returns its id.

        ``actor`` None means an in-process program with the database credentials (the demo, tests; audited as
        :data:`SYSTEM_PRINCIPAL`); the CLI always passes an authenticated principal. The body is
        sanitised when stored (HTML-sanitised for email), and its placeholders are the template's
        variables; a malformed placeholder is a ValidationError.
        """
        now = self._clock()
        with transaction(self._sessions) as session:
            if actor is not None:
                self._require(session, actor, "add_template")
            problems = []
            name = sanitize_text(name).strip() if isinstance(name, str) else ""
            if channel not in ("whatsapp", "sms", "email"):
                problems.append(f"channel: must be whatsapp, sms or email, got {channel!r}")
            if not name or len(name) > 128 or "\n" in name:
                problems.append("name: 1..128 characters on one line")
            if not isinstance(locale, str) or not locale or len(locale) > 16:
                problems.append("locale: a language tag of 1..16 characters, e.g. en or pt-BR")
            clean_body = (sanitize_html(body) if channel == "email" else sanitize_text(body)).strip() \
                if isinstance(body, str) else ""
            if not clean_body:
                problems.append("body: required, and must not be empty after sanitising")
            clean_subject = sanitize_text(subject).strip() if isinstance(subject, str) else None
            if channel == "email" and not clean_subject:
                problems.append("subject: required for email templates")
            elif channel == "sms" and clean_subject:
                problems.append("subject: only email templates (a subject) and WhatsApp templates (a text header) "
                                "have one, not sms")
            elif channel == "whatsapp" and clean_subject:
                problems.extend(_header_problems(clean_subject))
            if problems:
                raise ValidationError(problems)
            variables: frozenset[str] = frozenset()
            for text in (clean_body, clean_subject):
                if text:
                    variables |= template_variables(text)
            template = repo.add_template(
                session, name=name, channel_kind=channel, body=clean_body, subject=clean_subject,
                variables=sorted(variables), locale=locale,
            )
            if approve:
                repo.approve_template(session, template.id, actor or SYSTEM_PRINCIPAL, now)
            repo.add_audit(session, principal=actor or SYSTEM_PRINCIPAL, action="add_template", campaign_id=None,
                           detail={"name": name, "version": template.version, "approved": approve})
            return template.id

    def approve_template(self, actor: str | None, template_id: int) -> None:
        with transaction(self._sessions) as session:
            if actor is not None:
                self._require(session, actor, "approve_template")
            if not repo.approve_template(session, template_id, actor or SYSTEM_PRINCIPAL, self._clock()):
                raise NotFound(f"template {template_id} does not exist or is not pending")
            repo.add_audit(session, principal=actor or SYSTEM_PRINCIPAL, action="approve_template", campaign_id=None,
                           detail={"template_id": template_id})


_EVENT_FOR_ACTION = {
    CampaignAction.SCHEDULE: "SCHEDULED",
    CampaignAction.ACTIVATE: "ACTIVATED",
    CampaignAction.PAUSE: "PAUSED",
    CampaignAction.RESUME: "RESUMED",
    CampaignAction.CANCEL: "CANCELLED",
    CampaignAction.COMPLETE: "COMPLETED",
    CampaignAction.FAIL: "FAILED",
}


def _int_ids(values: tuple[str, ...], field_name: str, problems: list[str]) -> list[int]:
    """The ids as database integers (1..2**63-1); appends one problem naming the bad ones."""
    ids, bad = [], []
    for value in values:
        try:
            number = int(value)
        except ValueError:
            bad.append(value)
            continue
        if 0 < number <= _BIGINT_MAX:
            ids.append(number)
        else:
            bad.append(value)
    if bad:
        problems.append(f"{field_name}: ids must be positive integers, got {bad[:5]}")
    return ids


def _detail_campaign(detail: str | None) -> uuid.UUID | None:
    if not detail:
        return None
    try:
        value = json.loads(detail).get("campaign_id")
        return uuid.UUID(value) if value else None
    except (ValueError, AttributeError, TypeError):
        return None


def _variable_problems(
    variables: Mapping[str, str], *texts: tuple[str, str | None], template: str | None = None
) -> list[str]:
    """Why the texts cannot be rendered: a placeholder that is not a campaign variable, a profile field
    (:data:`~campaigns.core.templates.PROFILE_FIELDS`) or given a default; ``attributes.x`` without a default
    (attributes have no schema); a campaign variable whose value holds ``{{`` or ``}}`` (the stored text is
    rendered again per recipient, and a value must never become a placeholder); malformed placeholders."""
    problems: list[str] = []
    unknown: set[str] = set()
    for field_name, text in texts:
        if not text:
            continue
        try:
            placeholders = template_parameters_in_order(text)
        except ValidationError as error:
            problems.extend(p.replace("template:", f"{field_name}:", 1) for p in error.problems)
            continue
        for placeholder in placeholders:
            name = placeholder.name
            if name in variables:
                value = variables[name]
                if isinstance(value, str) and ("{{" in value or "}}" in value):
                    problems.append(f"variables.{name}: must not contain '{{{{' or '}}}}' (the message is rendered "
                                    "again for each recipient)")
            elif placeholder.default is None and name not in PROFILE_FIELDS:
                unknown.add(name)
    where = f"the template {template!r}" if template else "the content"
    for name in sorted(unknown):
        problems.append(
            f"variables.{name}: missing: {where} uses {{{{ {name} }}}}, which is neither a campaign variable (give "
            f"it in \"variables\"), a profile field ({', '.join(sorted(PROFILE_FIELDS))}) nor given a default "
            f"(e.g. {{{{ {name} | default: \"...\" }}}})"
        )
    return sorted(set(problems), key=problems.index)


WHATSAPP_HEADER_MAX = 60  # the Cloud API's text header limit


def _header_problems(header: str) -> list[str]:
    """Why ``header`` cannot be a WhatsApp template's text header (one line, at most 60 characters, at most one
    placeholder, as the Cloud API allows)."""
    problems = []
    if "\n" in header or "\t" in header:
        problems.append("subject: a WhatsApp header is one line")
    if len(header) > WHATSAPP_HEADER_MAX:
        problems.append(f"subject: a WhatsApp header has at most {WHATSAPP_HEADER_MAX} characters, got {len(header)}")
    try:
        if len(template_parameters_in_order(header)) > 1:
            problems.append("subject: a WhatsApp text header has at most one placeholder")
    except ValidationError as error:
        problems.extend(p.replace("template:", "subject:", 1) for p in error.problems)
    return problems


def _substitute(text: str, variables: Mapping[str, str], clean: Clean) -> str:
    """``text`` with the campaign's variables rendered and every profile placeholder kept."""
    return compile_template(text).substitute(variables, clean)


def _sms_problems(channel: str, body: str, max_segments: int | None) -> list[str]:
    if channel != "sms":
        return []
    static = sms_core.estimate(compile_template(body).static_text())
    limit = max_segments or sms_core.MAX_SEGMENTS
    if static.segments > limit:
        return [f"max_sms_segments: the text without its placeholders is already {static.segments} {static.encoding} "
                f"segments ({static.units} units), more than the {limit} allowed"]
    return []


def sms_estimate(
    messages: list[tuple[str, str]], max_segments: int | None, recipients: int | None
) -> dict[str, Any]:
    """The SMS cost estimate of content rows ``(locale, body)`` (see :meth:`CampaignService.content_estimate`)."""
    per_locale = {}
    for locale, body in messages:
        compiled = compile_template(body)
        static = sms_core.estimate(compiled.static_text())
        per_locale[locale] = {**static.as_dict(), "placeholders": len(compiled.placeholders)}
    worst = max((v["segments"] for v in per_locale.values()), default=1)
    return {
        "per_locale": per_locale,
        "segments": worst,
        "max_sms_segments": max_segments or sms_core.MAX_SEGMENTS,
        "estimated_segments_total": worst * recipients if recipients is not None else None,
        "note": "static text only: each recipient's values add to it; a message over max_sms_segments fails",
    }
