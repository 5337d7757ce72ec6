"""The campaign state machine: the one place that decides which status changes are allowed.

Guarantees:

* :func:`transition` is total and pure: for every ``(status, action)`` pair it either returns the next
  status or raises :class:`~campaigns.errors.TransitionNotAllowed` whose message names the status, the
  action and the actions that *are* allowed from that status. It never reads the clock or any storage.
* Terminal states (:data:`TERMINAL`: completed, failed, cancelled) allow nothing.
* :func:`allowed_actions` agrees with :func:`transition` exactly (tested over every pair).

The rules::

    draft      --schedule-->  scheduled
    scheduled  --schedule-->  scheduled     (re-schedule to a new start time)
    scheduled  --activate-->  active
    scheduled  --pause----->  paused
    active     --pause----->  paused
    paused     --resume---->  active        if the campaign had been activated before the pause,
                              scheduled     otherwise (it goes back to waiting for its start time)
    active     --complete-->  completed
    active     --fail------>  failed
    paused     --fail------>  failed        (see below)
    any non-terminal --cancel--> cancelled

``paused -> failed`` is allowed on purpose: pausing stops new sends, but messages already handed to a
provider or sitting in a retry tier still produce outcomes, and those can push the campaign over its
failure threshold. Refusing the transition would leave a campaign "paused" that can never succeed.
``paused -> completed`` is *not* allowed: a paused campaign is completed after it is resumed, so an
operator's pause is never silently overridden by the completion detector.

Persisting a transition (with optimistic concurrency) is the caller's job; this module only decides.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from types import MappingProxyType

from campaigns.errors import TransitionNotAllowed

__all__ = [
    "TERMINAL",
    "CampaignAction",
    "CampaignStatus",
    "allowed_actions",
    "is_terminal",
    "transition",
]


class CampaignStatus(StrEnum):
    """Where a campaign is in its life. Values are the strings stored in the database and in events."""

    DRAFT = "draft"
    SCHEDULED = "scheduled"
    ACTIVE = "active"
    PAUSED = "paused"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class CampaignAction(StrEnum):
    """What can be asked of a campaign (by an operator, an upstream command, the scheduler or the
    analytics stream)."""

    SCHEDULE = "schedule"
    ACTIVATE = "activate"
    PAUSE = "pause"
    RESUME = "resume"
    CANCEL = "cancel"
    COMPLETE = "complete"
    FAIL = "fail"


TERMINAL: frozenset[CampaignStatus] = frozenset(
    {CampaignStatus.COMPLETED, CampaignStatus.FAILED, CampaignStatus.CANCELLED}
)
"""States a campaign never leaves."""

_S = CampaignStatus
_A = CampaignAction

# The static part of the table. ``resume`` is resolved in :func:`transition` because its target depends
# on whether the campaign had been activated; here it maps to the "never activated" target.
_RULES: Mapping[CampaignStatus, Mapping[CampaignAction, CampaignStatus]] = MappingProxyType(
    {
        _S.DRAFT: MappingProxyType({_A.SCHEDULE: _S.SCHEDULED, _A.CANCEL: _S.CANCELLED}),
        _S.SCHEDULED: MappingProxyType(
            {
                _A.SCHEDULE: _S.SCHEDULED,
                _A.ACTIVATE: _S.ACTIVE,
                _A.PAUSE: _S.PAUSED,
                _A.CANCEL: _S.CANCELLED,
            }
        ),
        _S.ACTIVE: MappingProxyType(
            {
                _A.PAUSE: _S.PAUSED,
                _A.COMPLETE: _S.COMPLETED,
                _A.FAIL: _S.FAILED,
                _A.CANCEL: _S.CANCELLED,
            }
        ),
        _S.PAUSED: MappingProxyType({_A.RESUME: _S.SCHEDULED, _A.FAIL: _S.FAILED, _A.CANCEL: _S.CANCELLED}),
        _S.COMPLETED: MappingProxyType({}),
        _S.FAILED: MappingProxyType({}),
        _S.CANCELLED: MappingProxyType({}),
    }
)


def is_terminal(status: CampaignStatus) -> bool:
    """True for completed, failed and cancelled."""
    return status in TERMINAL


def allowed_actions(status: CampaignStatus) -> frozenset[CampaignAction]:
    """Every action :func:`transition` accepts from ``status`` (empty for terminal states)."""
    rules = _RULES.get(status)
    return frozenset(rules) if rules is not None else frozenset()


def transition(
    status: CampaignStatus, action: CampaignAction, *, was_activated: bool = False
) -> CampaignStatus:
    """The status a campaign in ``status`` moves to when ``action`` is applied.

    ``was_activated`` matters only for ``resume`` from ``paused``: a campaign that had already started
    sending goes back to ``active``; one paused while still ``scheduled`` goes back to ``scheduled``.

    Raises :class:`TransitionNotAllowed` (naming the status, the action and what is allowed) when the
    state machine refuses the change.
    """
    rules = _RULES.get(status)
    target = rules.get(action) if rules is not None else None
    if target is None:
        raise TransitionNotAllowed(_refusal(status, action))
    if status == CampaignStatus.PAUSED and action == CampaignAction.RESUME and was_activated:
        return CampaignStatus.ACTIVE
    return target


def _refusal(status: object, action: object) -> str:
    status_text = str(status)
    action_text = str(action)
    try:
        known_status: CampaignStatus | None = CampaignStatus(status_text)
    except ValueError:
        known_status = None
    if known_status is None:
        known = ", ".join(s.value for s in CampaignStatus)
        return f"cannot {action_text} a campaign in unknown status {status_text!r} (known: {known})"
    if known_status in TERMINAL:
        return (
            f"cannot {action_text} a campaign that is {known_status.value}: "
            f"{known_status.value} is a terminal state and allows no actions"
        )
    allowed = ", ".join(a.value for a in CampaignAction if a in allowed_actions(known_status))
    return (
        f"cannot {action_text} a campaign that is {known_status.value}; "
        f"allowed from {known_status.value}: {allowed}"
    )
