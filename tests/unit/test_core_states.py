"""The campaign state machine: every (status, action) pair, allowed or refused."""

from __future__ import annotations

import itertools

import pytest

from campaigns.core.states import (
    TERMINAL,
    CampaignAction,
    CampaignStatus,
    allowed_actions,
    is_terminal,
    transition,
)
from campaigns.errors import TransitionNotAllowed

S = CampaignStatus
A = CampaignAction

# (status, action) -> target for was_activated=False and was_activated=True. Everything else is refused.
EXPECTED: dict[tuple[CampaignStatus, CampaignAction], tuple[CampaignStatus, CampaignStatus]] = {
    (S.DRAFT, A.SCHEDULE): (S.SCHEDULED, S.SCHEDULED),
    (S.DRAFT, A.CANCEL): (S.CANCELLED, S.CANCELLED),
    (S.SCHEDULED, A.SCHEDULE): (S.SCHEDULED, S.SCHEDULED),
    (S.SCHEDULED, A.ACTIVATE): (S.ACTIVE, S.ACTIVE),
    (S.SCHEDULED, A.PAUSE): (S.PAUSED, S.PAUSED),
    (S.SCHEDULED, A.CANCEL): (S.CANCELLED, S.CANCELLED),
    (S.ACTIVE, A.PAUSE): (S.PAUSED, S.PAUSED),
    (S.ACTIVE, A.COMPLETE): (S.COMPLETED, S.COMPLETED),
    (S.ACTIVE, A.FAIL): (S.FAILED, S.FAILED),
    (S.ACTIVE, A.CANCEL): (S.CANCELLED, S.CANCELLED),
    (S.PAUSED, A.RESUME): (S.SCHEDULED, S.ACTIVE),
    (S.PAUSED, A.FAIL): (S.FAILED, S.FAILED),
    (S.PAUSED, A.CANCEL): (S.CANCELLED, S.CANCELLED),
}

ALL_PAIRS = list(itertools.product(CampaignStatus, CampaignAction))


def test_enum_values_are_the_stored_strings() -> None:
    assert [s.value for s in CampaignStatus] == [
        "draft",
        "scheduled",
        "active",
        "paused",
        "completed",
        "failed",
        "cancelled",
    ]
    assert [a.value for a in CampaignAction] == [
        "schedule",
        "activate",
        "pause",
        "resume",
        "cancel",
        "complete",
        "fail",
    ]


def test_terminal_states() -> None:
    assert frozenset({S.COMPLETED, S.FAILED, S.CANCELLED}) == TERMINAL
    assert all(is_terminal(s) == (s in TERMINAL) for s in CampaignStatus)


@pytest.mark.parametrize(("status", "action"), ALL_PAIRS, ids=[f"{s}-{a}" for s, a in ALL_PAIRS])
@pytest.mark.parametrize("was_activated", [False, True])
def test_every_pair(status: CampaignStatus, action: CampaignAction, was_activated: bool) -> None:
    expected = EXPECTED.get((status, action))
    if expected is None:
        with pytest.raises(TransitionNotAllowed) as info:
            transition(status, action, was_activated=was_activated)
        message = str(info.value)
        assert status.value in message
        assert action.value in message
        for allowed in allowed_actions(status):
            assert allowed.value in message
        if status in TERMINAL:
            assert "terminal" in message
    else:
        assert transition(status, action, was_activated=was_activated) == expected[int(was_activated)]


@pytest.mark.parametrize("status", list(CampaignStatus))
def test_allowed_actions_agrees_with_transition(status: CampaignStatus) -> None:
    expected = {action for (s, action) in EXPECTED if s == status}
    assert allowed_actions(status) == expected


def test_terminal_states_allow_nothing() -> None:
    for status in TERMINAL:
        assert allowed_actions(status) == frozenset()


def test_cancel_from_every_non_terminal_state() -> None:
    for status in set(CampaignStatus) - TERMINAL:
        assert transition(status, A.CANCEL) == S.CANCELLED


def test_resume_depends_on_whether_the_campaign_had_started() -> None:
    assert transition(S.PAUSED, A.RESUME) == S.SCHEDULED
    assert transition(S.PAUSED, A.RESUME, was_activated=True) == S.ACTIVE


def test_refusal_message_says_what_is_allowed() -> None:
    with pytest.raises(TransitionNotAllowed) as info:
        transition(S.DRAFT, A.RESUME)
    assert str(info.value) == "cannot resume a campaign that is draft; allowed from draft: schedule, cancel"


def test_terminal_refusal_message() -> None:
    with pytest.raises(TransitionNotAllowed, match="completed is a terminal state"):
        transition(S.COMPLETED, A.RESUME)


def test_plain_strings_from_storage_work() -> None:
    assert transition(CampaignStatus("paused"), CampaignAction("resume"), was_activated=True) == S.ACTIVE
    assert transition("paused", "resume", was_activated=True) == S.ACTIVE  # type: ignore[arg-type]


def test_unknown_status_is_refused_with_the_known_ones() -> None:
    with pytest.raises(TransitionNotAllowed, match="unknown status 'archived'"):
        transition("archived", A.CANCEL)  # type: ignore[arg-type]
