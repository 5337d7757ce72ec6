"""CampaignService on real PostgreSQL: one transaction per operation, outbox + audit with every change,
optimistic concurrency, RBAC, templates and command de-duplication."""

from __future__ import annotations

import json
import threading
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from campaigns.codec import get_codec
from campaigns.core.states import CampaignAction
from campaigns.errors import (
    ConcurrentUpdate,
    NotFound,
    PermissionDenied,
    TransitionNotAllowed,
    ValidationError,
)
from campaigns.service import CampaignService, CommandRequest
from tests.helpers import wait_for
from tests.integration.service_env import ServiceEnv, build_env

pytestmark = pytest.mark.postgres


@pytest.fixture
def env(database_settings):
    built = build_env(database_settings)
    yield built
    built.engine.dispose()


def _outbox(env: ServiceEnv, campaign_id: uuid.UUID) -> list[tuple]:
    return env.rows(
        "SELECT event_type, payload, topic, key FROM outbox WHERE key = :k ORDER BY id", k=str(campaign_id)
    )


def _audit(env: ServiceEnv, campaign_id: uuid.UUID) -> list[str]:
    return [
        r[0]
        for r in env.rows("SELECT action FROM audit_log WHERE campaign_id = :c ORDER BY id", c=campaign_id)
    ]


# --- create ------------------------------------------------------------------------------------


def test_create_writes_campaign_content_segments_outbox_and_audit_together(env):
    campaign_id = env.service.create_campaign(env.marketer, env.payload("sms", batch_size=250))

    row = env.rows(
        "SELECT status, version, channel_kind, batch_size, created_by FROM campaigns WHERE id = :c",
        c=campaign_id,
    )
    assert row == [("draft", 1, "sms", 250, env.marketer)]
    assert env.rows(
        "SELECT body, template_name FROM campaign_messages WHERE campaign_id = :c", c=campaign_id
    ) == [("Save 20% today!", env.templates["sms"])]
    assert env.rows("SELECT segment_id FROM campaign_segments WHERE campaign_id = :c", c=campaign_id) == [
        (env.segment_ids[0],)
    ]
    [(event_type, payload, topic, key)] = _outbox(env, campaign_id)
    assert (event_type, topic, key) == ("CREATED", "campaign.events", str(campaign_id))
    assert payload["campaign_version"] == 1 and payload["actor"] == env.marketer
    # The stored payload is a valid CampaignEvent: the relay will be able to publish it.
    decoded = get_codec().decode(get_codec().encode("CampaignEvent", payload), "CampaignEvent")
    assert decoded["event_type"] == "CREATED"
    assert _audit(env, campaign_id) == ["create_campaign"]


def test_email_body_is_html_escaped_and_template_html_sanitised(env):
    template_id = env.service.add_template(
        env.admin,
        name=f"html-{env.tag}",
        channel="email",
        subject="Hi {{ who }}",
        body='<p onclick="x()">Hello {{ who }}</p><script>alert(1)</script>',
        approve=True,
    )
    assert env.rows("SELECT body, variables FROM templates WHERE id = :i", i=template_id) == [
        ("<p>Hello {{ who }}</p>", ["who"])
    ]
    campaign_id = env.service.create_campaign(
        env.marketer,
        env.payload("email", template={"name": f"html-{env.tag}"}, variables={"who": "<b>Bob</b>"}),
    )
    [(subject, body)] = env.rows(
        "SELECT subject, body FROM campaign_messages WHERE campaign_id = :c", c=campaign_id
    )
    assert body == "<p>Hello &lt;b&gt;Bob&lt;/b&gt;</p>"
    assert subject == "Hi <b>Bob</b>"  # a subject is plain text, not HTML


class _FailsAfterInsert(CampaignService):
    """Fails after the campaign, its content and segments were inserted, before the outbox row."""

    def _event(self, *args, **kwargs):
        raise RuntimeError("simulated failure in the middle of create")


def test_a_failing_create_leaves_nothing_behind(env):
    counts = (
        "SELECT (SELECT count(*) FROM campaigns), (SELECT count(*) FROM outbox), "
        "(SELECT count(*) FROM campaign_messages), (SELECT count(*) FROM audit_log)"
    )
    before = env.rows(counts)
    failing = _FailsAfterInsert(env.sessions, clock=env.clock)
    payload = env.payload("sms")
    with pytest.raises(RuntimeError):
        failing.create_campaign(env.marketer, payload)
    with pytest.raises(ValidationError):
        env.service.create_campaign(env.marketer, env.payload("sms", segments=[987654321987]))
    assert env.rows(counts) == before
    assert env.scalar("SELECT count(*) FROM campaigns WHERE name = :n", n=payload["name"]) == 0


def test_unapproved_template_missing_variables_and_unknown_segment_are_clear_validation_errors(env):
    pending_id = env.service.add_template(
        env.admin, name=f"pending-{env.tag}", channel="sms", body="Hi {{ first }} {{ second }}"
    )
    with pytest.raises(ValidationError) as pending:
        env.service.create_campaign(
            env.marketer,
            env.payload(
                "sms",
                template={"name": f"pending-{env.tag}", "version": 1},
                variables={"first": "a", "second": "b"},
            ),
        )
    assert any(
        "is pending, not approved" in p and f"template approve {pending_id}" in p
        for p in pending.value.problems
    ), pending.value.problems

    with pytest.raises(ValidationError) as latest:  # without a version: only approved versions count
        env.service.create_campaign(env.marketer, env.payload("sms", template={"name": f"pending-{env.tag}"}))
    assert any(
        "has no approved version" in p and f"template approve {pending_id}" in p
        for p in latest.value.problems
    ), latest.value.problems

    env.service.approve_template(env.admin, pending_id)
    with pytest.raises(ValidationError) as missing:
        env.service.create_campaign(
            env.marketer,
            env.payload(
                "sms",
                template={"name": f"pending-{env.tag}"},
                variables={"first": "a"},
                segments=[env.segment_ids[0], 999_999_999_999],
            ),
        )
    problems = missing.value.problems
    assert any(p.startswith("variables.second: missing") and "pending-" in p for p in problems), problems
    assert any(p.startswith("segments: unknown segment ids [999999999999]") for p in problems), problems

    with pytest.raises(ValidationError) as wrong_channel:
        env.service.create_campaign(
            env.marketer, env.payload("whatsapp", template={"name": env.templates["sms"]})
        )
    assert any("is for sms, not whatsapp" in p for p in wrong_channel.value.problems)

    with pytest.raises(ValidationError) as inline:
        env.service.create_campaign(
            env.marketer, env.payload("sms", template=None, content={"body": "Hi {{ name }}"}, variables={})
        )
    assert any(p.startswith("variables.name: missing") for p in inline.value.problems)


# --- transitions -------------------------------------------------------------------------------


def test_every_transition_writes_an_outbox_event_and_an_audit_row(env):
    campaign_id = env.service.create_campaign(env.marketer, env.payload("whatsapp"))
    start = env.clock() + timedelta(minutes=5)
    assert env.service.schedule_campaign(env.marketer, campaign_id, start) == 2
    assert env.service.pause_campaign(env.marketer, campaign_id) == 3
    assert env.service.resume_campaign(env.marketer, campaign_id) == 4  # back to scheduled
    env.clock.advance(600)
    assert env.service.activate_due(limit=10_000).count(campaign_id) == 1
    assert env.service.pause_campaign(env.marketer, campaign_id) == 6
    assert env.service.resume_campaign(env.marketer, campaign_id) == 7  # back to active
    assert env.service.cancel_campaign(env.admin, campaign_id) == 8

    events = _outbox(env, campaign_id)
    assert [e[0] for e in events] == [
        "CREATED",
        "SCHEDULED",
        "PAUSED",
        "RESUMED",
        "ACTIVATED",
        "PAUSED",
        "RESUMED",
        "CANCELLED",
    ]
    assert [e[1]["campaign_version"] for e in events] == list(range(1, 9))
    assert events[4][1]["actor"] is None  # system-driven changes carry no actor
    assert json.loads(events[1][1]["detail_json"])["start_at"] == start.isoformat()
    assert _audit(env, campaign_id) == [
        "create_campaign",
        "schedule_campaign",
        "pause_campaign",
        "resume_campaign",
        "activate_campaign",
        "pause_campaign",
        "resume_campaign",
        "cancel_campaign",
    ]
    assert env.service.get_campaign(env.auditor, campaign_id).status == "cancelled"

    with pytest.raises(TransitionNotAllowed, match="cancelled is a terminal state"):
        env.service.resume_campaign(env.marketer, campaign_id)
    assert len(_outbox(env, campaign_id)) == 8  # a refused change writes nothing


def test_schedule_without_a_time_keeps_the_payload_start_time_else_now(env):
    later = (env.clock() + timedelta(days=2)).replace(microsecond=0)
    with_time = env.service.create_campaign(env.marketer, env.payload(start_at=later.isoformat()))
    env.service.schedule_campaign(env.marketer, with_time)
    assert env.service.get_campaign(env.marketer, with_time).start_at == later

    without = env.service.create_campaign(env.marketer, env.payload())
    env.service.schedule_campaign(env.marketer, without)
    assert env.service.get_campaign(env.marketer, without).start_at == env.clock()

    with pytest.raises(ValidationError, match="needs a timezone"):
        env.service.schedule_campaign(env.marketer, without, datetime(2026, 5, 1, 9, 0))  # noqa: DTZ001
    with pytest.raises(ValidationError, match="at most 365 days ahead"):
        env.service.schedule_campaign(env.marketer, without, env.clock() + timedelta(days=400))


def test_finishing_a_campaign_that_was_cancelled_meanwhile_returns_false(env):
    campaign_id = env.service.create_campaign(env.marketer, env.payload())
    env.service.schedule_campaign(env.marketer, campaign_id, env.clock())
    assert campaign_id in env.service.activate_due(limit=10_000)
    env.service.cancel_campaign(env.marketer, campaign_id)
    assert env.service.finish_campaign(campaign_id, CampaignAction.COMPLETE, {"sent": 1}) is False
    assert env.service.get_campaign(env.marketer, campaign_id).status == "cancelled"


@pytest.mark.parametrize("first", ["pause", "cancel"])
def test_concurrent_pause_and_cancel_exactly_one_wins(env, first):
    """Both threads read the same version, then race on the conditional UPDATE: one commits, the other
    finds the version moved and gets ConcurrentUpdate. A row lock held by the test makes the race real:
    both UPDATEs queue behind it and are released together."""
    campaign_id = env.service.create_campaign(env.marketer, env.payload())
    env.service.schedule_campaign(env.marketer, campaign_id, env.clock() + timedelta(hours=1))
    results: dict[str, object] = {}

    def run(action: str) -> None:
        try:
            results[action] = getattr(env.service, f"{action}_campaign")(env.marketer, campaign_id)
        except Exception as exc:
            results[action] = exc

    with env.engine.connect() as blocker:
        blocker.execute(text("SELECT 1 FROM campaigns WHERE id = :c FOR UPDATE"), {"c": campaign_id})
        threads = [
            threading.Thread(target=run, args=(a,))
            for a in (first, "cancel" if first == "pause" else "pause")
        ]
        for started, thread in enumerate(threads, start=1):
            thread.start()
            # Start them one after the other so the queue order (and so the winner) is known.
            wait_for(
                lambda n=started: _lock_waiters(env, campaign_id) >= n,
                timeout=20,
                what="the UPDATE to wait for the row lock",
            )
        blocker.rollback()
    for thread in threads:
        thread.join(20)

    winner, loser = first, ("cancel" if first == "pause" else "pause")
    assert results[winner] == 3, results
    assert isinstance(results[loser], ConcurrentUpdate | TransitionNotAllowed), results
    assert "changed while" in str(results[loser])
    events = [e[0] for e in _outbox(env, campaign_id)]
    assert events == ["CREATED", "SCHEDULED", "PAUSED" if winner == "pause" else "CANCELLED"]
    assert env.service.get_campaign(env.marketer, campaign_id).version == 3


def _lock_waiters(env: ServiceEnv, campaign_id: uuid.UUID) -> int:
    return int(
        env.scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock' AND query LIKE 'UPDATE campaigns%'"
        )
    )


# --- RBAC --------------------------------------------------------------------------------------


def test_auditor_can_read_but_not_create_or_send(env):
    campaign_id = env.service.create_campaign(env.marketer, env.payload())
    assert env.service.campaign_status(env.auditor, campaign_id).campaign.status == "draft"
    assert env.service.get_campaign(env.auditor, campaign_id).id == campaign_id

    with pytest.raises(PermissionDenied) as create:
        env.service.create_campaign(env.auditor, env.payload())
    assert create.value.permission == "campaigns.create"
    assert f"principal {env.auditor!r} lacks permission 'campaigns.create'" in str(create.value)
    for action in ("schedule", "pause", "resume", "cancel"):
        with pytest.raises(PermissionDenied) as send:
            getattr(env.service, f"{action}_campaign")(env.auditor, campaign_id)
        assert send.value.permission == "campaigns.send"
    with pytest.raises(PermissionDenied, match=r"templates\.manage"):
        env.service.add_template(env.marketer, name=f"x-{env.tag}", channel="sms", body="x")
    assert [e[0] for e in _outbox(env, campaign_id)] == ["CREATED"]


def test_unknown_principal_is_denied_naming_the_permission(env):
    campaign_id = env.service.create_campaign(env.marketer, env.payload())
    with pytest.raises(PermissionDenied) as denied:
        env.service.campaign_status("mallory", campaign_id)
    assert denied.value.permission == "campaigns.read"
    assert "unknown principal 'mallory'" in str(denied.value) and "campaigns.read" in str(denied.value)
    with pytest.raises(PermissionDenied, match=r"unknown principal 'mallory'.*campaigns\.create"):
        env.service.create_campaign("mallory", env.payload())
    # RBAC comes before validation: an unknown principal learns nothing about the payload or campaign.
    with pytest.raises(PermissionDenied):
        env.service.create_campaign("mallory", {"junk": True})
    with pytest.raises(PermissionDenied):
        env.service.pause_campaign("mallory", uuid.uuid4())
    with pytest.raises(NotFound):
        env.service.pause_campaign(env.marketer, uuid.uuid4())


# --- commands ----------------------------------------------------------------------------------


def test_a_repeated_command_id_is_a_no_op_and_a_failed_one_leaves_no_claim(env):
    campaign_id = uuid.uuid4()
    create = CommandRequest(
        command_id=f"c-{uuid.uuid4()}",
        command_type="CREATE",
        principal=env.marketer,
        campaign_id=campaign_id,
        payload=env.payload(),
    )
    first = env.service.execute_command(create)
    again = env.service.execute_command(create)
    assert (first.outcome, first.campaign_id, first.version) == ("applied", campaign_id, 1)
    assert (again.outcome, again.campaign_id, again.previous_outcome) == ("duplicate", campaign_id, "applied")
    assert env.scalar("SELECT count(*) FROM campaigns WHERE id = :c", c=campaign_id) == 1

    pause = CommandRequest(
        command_id=f"p-{uuid.uuid4()}", command_type="PAUSE", principal=env.marketer, campaign_id=campaign_id
    )
    with pytest.raises(TransitionNotAllowed):  # a draft cannot be paused
        env.service.execute_command(pause)
    assert (
        env.scalar("SELECT count(*) FROM processed_commands WHERE command_id = :i", i=pause.command_id) == 0
    )

    schedule = CommandRequest(
        command_id=f"s-{uuid.uuid4()}",
        command_type="SCHEDULE",
        principal=env.marketer,
        campaign_id=campaign_id,
    )
    assert env.service.execute_command(schedule).version == 2
    assert env.service.execute_command(pause).version == 3
    assert env.service.execute_command(pause).outcome == "duplicate"
    assert [e[0] for e in _outbox(env, campaign_id)] == ["CREATED", "SCHEDULED", "PAUSED"]

    assert env.service.record_rejected_command("r-1-" + env.tag, "invalid: x") is True
    assert env.service.record_rejected_command("r-1-" + env.tag, "invalid: x") is False


def test_concurrent_duplicate_commands_apply_once(env):
    campaign_id = env.service.create_campaign(env.marketer, env.payload())
    env.service.schedule_campaign(env.marketer, campaign_id, env.clock() + timedelta(hours=1))
    command = CommandRequest(
        command_id=f"cc-{uuid.uuid4()}", command_type="PAUSE", principal=env.marketer, campaign_id=campaign_id
    )
    barrier = threading.Barrier(4)
    outcomes: list[object] = []

    def run() -> None:
        barrier.wait(10)
        try:
            outcomes.append(env.service.execute_command(command).outcome)
        except Exception as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(map(str, outcomes)) == ["applied", "duplicate", "duplicate", "duplicate"]
    assert [e[0] for e in _outbox(env, campaign_id)] == ["CREATED", "SCHEDULED", "PAUSED"]


def test_created_at_is_stored_timezone_aware(env):
    campaign_id = env.service.create_campaign(env.marketer, env.payload())
    created = env.scalar("SELECT created_at FROM campaigns WHERE id = :c", c=campaign_id)
    assert created == env.clock() and created.tzinfo is not None
    assert env.clock().tzinfo is UTC
