"""The CLI's exit codes and messages for everything it can decide without a service."""

from __future__ import annotations

import uuid

import pytest

from campaigns import cli
from campaigns.errors import (
    CampaignError,
    ConcurrentUpdate,
    NotFound,
    PermissionDenied,
    SchemaError,
    ServiceUnavailable,
    TransitionNotAllowed,
    ValidationError,
)


@pytest.fixture(autouse=True)
def no_actor(monkeypatch):
    monkeypatch.delenv(cli.ACTOR_ENV, raising=False)


@pytest.fixture
def no_service(monkeypatch):
    """Any attempt to reach the database fails the test: these paths must be decided before that."""

    def forbidden():
        raise AssertionError("the CLI reached for the service on an input it should have refused")

    monkeypatch.setattr(cli, "_service", forbidden)


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (ValidationError("x: bad"), 2),
        (PermissionDenied("bob", "campaigns.create"), 3),
        (NotFound("nope"), 4),
        (TransitionNotAllowed("no"), 4),
        (ConcurrentUpdate("raced"), 4),
        (ServiceUnavailable("down"), 5),
        (SchemaError("bytes"), 1),
        (CampaignError("other"), 1),
    ],
)
def test_exit_code_for_each_error(error, code):
    assert cli.exit_code_for(error) == code


def test_usage_errors_are_invalid_input_and_help_is_ok(capsys):
    assert cli.main([]) == 2
    assert cli.main(["frobnicate"]) == 2
    assert cli.main(["pause"]) == 2  # the campaign id is missing
    assert cli.main(["--help"]) == 0
    assert "create" in capsys.readouterr().out


def test_commands_that_act_need_an_actor(capsys, no_service):
    campaign_id = str(uuid.uuid4())
    for argv in (["status", campaign_id], ["pause", campaign_id], ["schedule", campaign_id, "--at", "now"]):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert "--as" in err and cli.ACTOR_ENV in err and "campaigns principal add" in err


def test_create_reports_a_missing_or_broken_file(tmp_path, capsys, no_service):
    assert cli.main(["create", str(tmp_path / "nope.json"), "--as", "alice"]) == 2
    assert "nope.json: no such file" in capsys.readouterr().err
    broken = tmp_path / "broken.json"
    broken.write_text('{"name": "x",\n  "channel": }')
    assert cli.main(["create", str(broken), "--as", "alice"]) == 2
    assert "broken.json: not valid JSON (line 2, column" in capsys.readouterr().err


def test_campaign_ids_and_times_are_checked_before_any_service_call(capsys, no_service):
    assert cli.main(["status", "12345", "--as", "alice"]) == 2
    assert "'12345' is not a UUID" in capsys.readouterr().err
    campaign_id = str(uuid.uuid4())
    assert cli.main(["schedule", campaign_id, "--at", "tomorrow", "--as", "alice"]) == 2
    assert "not an ISO-8601 date-time" in capsys.readouterr().err
    assert cli.main(["schedule", campaign_id, "--at", "2026-05-01T09:00:00", "--as", "alice"]) == 2
    assert "has no UTC offset; add one, e.g. 2026-05-01T09:00:00Z" in capsys.readouterr().err


def test_actor_can_come_from_the_environment(monkeypatch, capsys):
    calls = []

    class FakeService:
        def campaign_status(self, actor, campaign_id):
            calls.append((actor, campaign_id))
            raise NotFound(f"campaign {campaign_id} does not exist")

    from contextlib import contextmanager

    @contextmanager
    def fake():
        yield FakeService()

    monkeypatch.setattr(cli, "_service", fake)
    monkeypatch.setenv(cli.ACTOR_ENV, "auditor-from-env")
    campaign_id = uuid.uuid4()
    assert cli.main(["status", str(campaign_id)]) == 4
    assert calls == [("auditor-from-env", campaign_id)]
    assert "does not exist" in capsys.readouterr().err


def test_template_files_are_checked(tmp_path, capsys, no_service):
    spec = tmp_path / "t.json"
    spec.write_text('{"name": "x", "channel": "sms", "bodyy": "typo", "locale": 5}')
    assert cli.main(["template", "add", str(spec)]) == 2
    err = capsys.readouterr().err
    assert "bodyy: unknown field" in err and "body: required" in err and "locale: must be a string" in err
    spec.write_text("[1, 2]")
    assert cli.main(["template", "add", str(spec)]) == 2
    assert "must hold a JSON object" in capsys.readouterr().err


def test_seed_and_channel_arguments_are_checked(capsys):
    assert cli.main(["seed", "--customers", "0"]) == 2
    assert "--customers: must be >= 1" in capsys.readouterr().err
    assert cli.main(["channel", "add", "pigeon", "--rate", "0"]) == 2
    err = capsys.readouterr().err
    assert "kind: must be one of whatsapp, sms, email" in err and "--rate" in err
