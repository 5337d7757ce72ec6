"""CampaignService: how operators and upstream systems drive campaigns.

Every operation checks the actor's permission first (RBAC from the ``principals``/``role_permissions``
rows), runs in ONE database transaction, and writes its outbox event (published to ``campaign.events``
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
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy.orm import Session, sessionmaker

from campaigns.core import rbac
from campaigns.core.payload import (
    MAX_SCHEDULE_AHEAD,
    CampaignDraft,
    email_subject_problems,
    validate_create_payload,
)
from campaigns.core.states import CampaignAction, CampaignStatus, transition
from campaigns.core.templates import (
    render,
    sanitize_html,
    sanitize_text,
    template_variables,
    template_variables_in_order,
)
from campaigns.db import repository as repo
from campaigns.db.engine import transaction
from campaigns.db.models import Campaign, CampaignMessage
from campaigns.errors import ConcurrentUpdate, NotFound, TransitionNotAllowed, ValidationError

EVENTS_TOPIC = "campaign.events"
OUTCOMES_TOPIC = "delivery.outcomes"
SYSTEM_PRINCIPAL = "system"  # the scheduler and the analytics stage act as this (no RBAC: internal)
OPERATOR = "operator"  # who the audit log names for CLI calls made with database access but no --as
RECEIPT_KINDS = ("delivered", "read", "clicked", "bounced")
COMMAND_TYPES = ("CREATE", "SCHEDULE", "PAUSE", "RESUME", "CANCEL")
COMMAND_ID_MAX = 128  # processed_commands.command_id is VARCHAR(128)
_BIGINT_MAX = 2**63 - 1


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

    @classmethod
    def of(cls, c: Campaign) -> CampaignView:
        return cls(
            id=c.id, name=c.name, channel=c.channel_kind, status=c.status, version=c.version,
            start_at=c.start_at, created_by=c.created_by, total_recipients=c.total_recipients,
            skipped_recipients=c.skipped_recipients, expansion_done=c.expansion_done,
            activated_at=c.activated_at, finished_at=c.finished_at,
        )


@dataclass(frozen=True)
class CampaignStatusView:
    campaign: CampaignView
    recipients: Mapping[str, int] = field(default_factory=dict)
    failures_by_reason: Mapping[str, int] = field(default_factory=dict)
    channel_paused: str | None = None  # why the campaign's channel breaker is open, or None (sending)

    @property
    def terminal(self) -> int:
        return sum(self.recipients.get(s, 0) for s in ("sent", "failed", "skipped", "cancelled"))

    def as_dict(self) -> dict[str, Any]:
        c = self.campaign
        return {
            "id": str(c.id), "name": c.name, "channel": c.channel, "status": c.status, "version": c.version,
            "start_at": c.start_at.isoformat() if c.start_at else None,
            "created_by": c.created_by,
            "activated_at": c.activated_at.isoformat() if c.activated_at else None,
            "finished_at": c.finished_at.isoformat() if c.finished_at else None,
            "total_recipients": c.total_recipients, "skipped_recipients": c.skipped_recipients,
            "expansion_done": c.expansion_done, "recipients": dict(self.recipients),
            "terminal": self.terminal,
            "failures_by_reason": dict(self.failures_by_reason),
            "channel_paused": self.channel_paused,
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

    def _require(self, session: Session, actor: str, operation: str) -> None:
        granted = repo.principal_permissions(session, actor)
        known = {p.value for p in rbac.Permission}
        # A grant this code version does not know (added by hand, or by a newer version) grants nothing
        # here rather than crashing the check.
        permissions = (
            None if granted is None else frozenset(rbac.Permission(p) for p in granted if p in known)
        )
        rbac.require(actor, permissions, rbac.permission_for(operation))

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
        self._require(session, actor, "create_campaign")
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
        if problems or channel is None or message is None:
            raise ValidationError(problems or ["content: could not be rendered"])

        campaign = Campaign(
            id=campaign_id or uuid.uuid4(), name=draft.name, channel_kind=draft.channel.value,
            channel_id=channel.id, template_id=template_id, status=CampaignStatus.DRAFT.value, version=1,
            start_at=draft.start_at, batch_size=draft.batch_size, max_retries=draft.retry_policy.max_retries,
            backoff_base_s=draft.retry_policy.backoff_base_s, backoff_max_s=draft.retry_policy.backoff_max_s,
            retry_jitter=draft.retry_policy.jitter, failure_threshold=draft.failure_threshold,
            failure_min_sample=draft.failure_min_sample, locale=draft.locale, created_by=actor,
            created_at=now, updated_at=now,
        )
        repo.insert_campaign(session, campaign, segment_ids=segment_ids, manual_recipients=manual,
                             messages=[message])
        self._event(session, campaign.id, "CREATED", campaign.version, actor, now, {"name": draft.name})
        repo.add_audit(session, principal=actor, action="create_campaign", campaign_id=campaign.id,
                       detail={"name": draft.name, "channel": draft.channel.value})
        return campaign.id

    def _content(
        self, session: Session, draft: CampaignDraft, problems: list[str]
    ) -> tuple[CampaignMessage | None, int | None]:
        """The rendered message for ``draft`` and its template id; appends problems instead of raising."""
        channel = draft.channel.value
        if draft.content is not None:
            try:
                body = render(draft.content.body, draft.variables, escape_html=channel == "email")
                subject = render(draft.content.subject, draft.variables) if draft.content.subject else None
            except ValidationError as error:
                problems.extend(error.problems)
                return None, None
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
        found: list[str] = []
        if template.status != "approved":
            found.append(f"template: {ref.name!r} v{template.version} is {template.status}, not approved "
                         f"(approve it with `campaigns template approve {template.id}`)")
        if template.channel_kind != channel:
            found.append(f"template: {ref.name!r} is for {template.channel_kind}, not {channel}")
        missing = sorted(set(template.variables) - set(draft.variables))
        if missing:
            found.append(f"variables: the template {ref.name!r} needs {missing}; give them in \"variables\"")
        if channel == "email" and template.subject:  # one header line once rendered: refused now, not per recipient
            found.extend(email_subject_problems(template.subject, draft.variables, field="template.subject"))
        problems.extend(found)
        if found or problems:
            return None, None
        try:
            body = render(template.body, draft.variables, escape_html=channel == "email")
            subject = render(template.subject, draft.variables) if template.subject else None
            parameters = self._template_parameters(channel, template.name, template.body, draft.variables)
        except ValidationError as error:
            problems.extend(error.problems)
            return None, None
        message = CampaignMessage(channel_kind=channel, locale=draft.locale, subject=subject, body=body,
                                  template_name=template.name, template_parameters=list(parameters))
        return message, template.id

    @staticmethod
    def _template_parameters(
        channel: str, name: str, body: str, variables: Mapping[str, str]
    ) -> tuple[str, ...]:
        """The values a provider-side template is filled with, in the template's variable order.

        Only WhatsApp renders templates at the provider (the Cloud API takes the template name and its
        body parameters {{1}}..{{n}}); SMS and email send the body rendered here, so they need none. The
        Cloud API refuses an empty parameter, so an empty value is a create-time error, not a late
        per-recipient failure.
        """
        if channel != "whatsapp":
            return ()
        order = template_variables_in_order(body)
        empty = [n for n in order if not variables[n]]
        if empty:
            raise ValidationError([f"variables.{n}: must not be empty: the WhatsApp template {name!r} "
                                   "sends it as a parameter, and the Cloud API refuses empty ones" for n in empty])
        return tuple(variables[n] for n in order)

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
        return self._apply_in(session, actor, campaign_id, CampaignAction.SCHEDULE, None, extra=extra)

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
        """active -> completed|failed (the analytics stage decides which). False if it lost a race or the
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
        detail: Mapping[str, Any] | None = None,
    ) -> int:
        """Apply ``action`` inside the caller's transaction; RBAC for ``operation`` unless it is None."""
        now = self._clock()
        if operation is not None:
            self._require(session, actor, operation)
        campaign = repo.get_campaign(session, campaign_id)
        if campaign is None:
            raise NotFound(f"campaign {campaign_id} does not exist; check the id (`campaigns status ID`)")
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
            session, topic=EVENTS_TOPIC, key=str(campaign_id), event_type=event_type, event_id=event_id,
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
            )

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
                    session, topic=OUTCOMES_TOPIC, key=str(campaign_id), event_type=kind.upper(),
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

    def bootstrap_principal(self, name: str, role: str) -> None:
        """Create a principal without an acting principal: only for `campaigns principal add` run by an
        operator with database access (the first admin has to come from somewhere)."""
        with transaction(self._sessions) as session:
            self._add_principal(session, OPERATOR, name, role)

    def _add_principal(self, session: Session, actor: str, name: str, role: str) -> None:
        name = sanitize_text(name).strip()
        if not name or len(name) > 128:
            raise ValidationError("name: 1..128 characters")
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

        ``actor`` None means an operator with database access (the CLI without --as). The body is
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
            elif channel != "email" and clean_subject:
                problems.append(f"subject: only email templates have a subject, not {channel}")
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
                repo.approve_template(session, template.id, actor or OPERATOR, now)
            repo.add_audit(session, principal=actor or OPERATOR, action="add_template", campaign_id=None,
                           detail={"name": name, "version": template.version, "approved": approve})
            return template.id

    def approve_template(self, actor: str | None, template_id: int) -> None:
        with transaction(self._sessions) as session:
            if actor is not None:
                self._require(session, actor, "approve_template")
            if not repo.approve_template(session, template_id, actor or OPERATOR, self._clock()):
                raise NotFound(f"template {template_id} does not exist or is not pending")
            repo.add_audit(session, principal=actor or OPERATOR, action="approve_template", campaign_id=None,
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
