"""The CLI's exit codes and messages for everything it can decide without a service."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from app import cli
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
    for name in (cli.ACTOR_ENV, cli.TOKEN_ENV, cli.TOKEN_FILE_ENV):
        monkeypatch.delenv(name, raising=False)


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


def test_commands_that_act_need_a_token(capsys, no_service):
    """No token: refused (exit 3) before any service is reached, saying where the token goes; --as alone is no
    credential."""
    campaign_id = str(uuid.uuid4())
    for argv in (["status", campaign_id], ["pause", campaign_id], ["schedule", campaign_id, "--at", "now"],
                 ["status", campaign_id, "--as", "alice"], ["principal", "add", "eve", "--role", "admin"],
                 ["channel", "add", "sms"], ["channel", "list"], ["seed", "--customers", "1"],
                 ["replay", "--topic", "campaign.messages.sms", "--dry-run"], ["dlq", "redrive"], ["dlq", "list"],
                 ["events", "list"], ["rejected", "list"], ["audit"], ["token", "create", "eve"],
                 ["token", "revoke", "--principal", "eve"], ["token", "list"], ["approve", campaign_id],
                 ["import", "customers", "people.csv"], ["import", "segment", "vip", "members.csv", "--replace"]):
        assert cli.main(argv) == 3, argv
        err = capsys.readouterr().err
        assert "no API token" in err and cli.TOKEN_ENV in err and "campaigns token create" in err, err


def test_import_checks_the_segment_name_before_any_service_call(capsys, no_service):
    assert cli.main(["import", "segment", " vip", "members.csv"]) == 2
    assert "segment: has leading or trailing spaces" in capsys.readouterr().err
    assert cli.main(["import", "segment", "vip"]) == 2  # the file is missing: a usage error


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


class FakeService:
    """Authenticates one token as ``auditor-1``."""

    def __init__(self, calls):
        self.calls = calls

    def authenticate(self, token):
        self.calls.append(("authenticate", token))
        if token != "good-token":
            raise PermissionDenied("(unauthenticated)", "a token")
        return "auditor-1"

    def campaign_status(self, actor, campaign_id):
        self.calls.append((actor, campaign_id))
        raise NotFound(f"campaign {campaign_id} does not exist")


@pytest.fixture
def fake_service(monkeypatch):
    from contextlib import contextmanager

    calls = []

    @contextmanager
    def fake():
        yield FakeService(calls)

    monkeypatch.setattr(cli, "_service", fake)
    return calls


def test_the_token_comes_from_the_environment_a_file_or_the_option(monkeypatch, capsys, tmp_path, fake_service):
    campaign_id = uuid.uuid4()
    monkeypatch.setenv(cli.TOKEN_ENV, "good-token")
    assert cli.main(["status", str(campaign_id)]) == 4
    assert fake_service == [("authenticate", "good-token"), ("auditor-1", campaign_id)]
    assert "does not exist" in capsys.readouterr().err
    monkeypatch.delenv(cli.TOKEN_ENV)
    token_file = tmp_path / "token"
    token_file.write_text("good-token\n")
    monkeypatch.setenv(cli.TOKEN_FILE_ENV, str(token_file))
    assert cli.main(["status", str(campaign_id)]) == 4
    assert fake_service[-2] == ("authenticate", "good-token")
    monkeypatch.delenv(cli.TOKEN_FILE_ENV)
    assert cli.main(["status", str(campaign_id), "--token", "bad-token"]) == 3
    assert fake_service[-1] == ("authenticate", "bad-token")


def test_as_only_checks_the_tokens_principal(monkeypatch, capsys, fake_service):
    campaign_id = uuid.uuid4()
    monkeypatch.setenv(cli.TOKEN_ENV, "good-token")
    assert cli.main(["status", str(campaign_id), "--as", "auditor-1"]) == 4
    assert cli.main(["status", str(campaign_id), "--as", "admin-1"]) == 3
    assert "the API token belongs to 'auditor-1', not 'admin-1'" in capsys.readouterr().err
    monkeypatch.setenv(cli.ACTOR_ENV, "admin-1")
    assert cli.main(["status", str(campaign_id)]) == 3
    assert ("admin-1", campaign_id) not in fake_service  # nothing ran as admin-1


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


# --- inputs that used to end in a traceback: the real entry point, as a user runs it ---------------------

CAMPAIGNS = Path(sys.executable).with_name("campaigns")


def run_cli(*argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """`campaigns ARGV...` in a subprocess whose services are unreachable (port 1): every case here must
    be decided before the CLI reaches for one."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAMPAIGNS_")}
    env.update(CAMPAIGNS_DATABASE__PORT="1", CAMPAIGNS_KAFKA__BOOTSTRAP_SERVERS="127.0.0.1:1")
    return subprocess.run([str(CAMPAIGNS), *argv], env=env, capture_output=True, text=True, timeout=timeout)


def assert_one_line_exit_2(done: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_deeply_nested_json_is_one_line_not_a_recursion_error(tmp_path):
    for depth in (100_000, 100):
        deep = tmp_path / f"deep{depth}.json"
        deep.write_text("[" * depth + "]" * depth)
        assert_one_line_exit_2(run_cli("create", str(deep), "--as", "alice"), "nested more than 32 levels deep")


def test_an_integer_of_thousands_of_digits_is_one_line(tmp_path):
    big = tmp_path / "big.json"
    big.write_text('{"name": "x", "batch_size": ' + "9" * 5000 + "}")
    assert_one_line_exit_2(run_cli("create", str(big), "--as", "alice"), "an integer of 5000 digits")
    assert_one_line_exit_2(run_cli("template", "add", str(big)), "an integer of 5000 digits")


def test_a_file_over_one_mib_is_refused_and_dev_zero_is_not_read_to_the_end(tmp_path):
    large = tmp_path / "large.json"
    large.write_text('{"manual_recipients": [' + ",".join(["1234567"] * 150_000) + "]}")
    assert_one_line_exit_2(run_cli("create", str(large), "--as", "alice"), "larger than 1 MiB")
    # Read to the end, /dev/zero never ends: the timeout would fail the test.
    assert_one_line_exit_2(run_cli("create", "/dev/zero", "--as", "alice", timeout=20), "/dev/zero: larger than 1 MiB")


def test_unreadable_inputs_are_one_line(tmp_path):
    assert_one_line_exit_2(run_cli("create", str(tmp_path), "--as", "alice"), "cannot read it")
    latin1 = tmp_path / "latin1.json"
    latin1.write_bytes(b'{"name": "caf\xe9"}')
    assert_one_line_exit_2(run_cli("create", str(latin1), "--as", "alice"), "not UTF-8 text")


def test_an_email_template_subject_with_a_line_break_is_refused(tmp_path):
    spec = tmp_path / "t.json"
    spec.write_text(json.dumps({"name": "x", "channel": "email", "subject": "Sale\nBcc: all@example.com",
                                "body": "<p>hi</p>"}))
    assert_one_line_exit_2(run_cli("template", "add", str(spec)), "subject: must be a single line")


def test_downgrade_needs_an_explicit_revision_and_yes():
    assert_one_line_exit_2(run_cli("migrate", "--downgrade"), "--downgrade: give the target with --revision",
                           "nothing was changed")
    assert_one_line_exit_2(run_cli("migrate", "--downgrade", "--revision", "-1"), "run again with --yes")
    assert_one_line_exit_2(run_cli("migrate", "--downgrade", "--stamp", "0003"), "give one of them")


def test_invalid_settings_name_their_variable():
    env_run = subprocess.run(
        [str(CAMPAIGNS), "dlq", "list"], capture_output=True, text=True, timeout=30,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("CAMPAIGNS_")},
             "CAMPAIGNS_KAFKA__SESSION_TIMEOUT_MS": "400000"},
    )
    assert_one_line_exit_2(env_run, "invalid settings", "CAMPAIGNS_KAFKA__MAX_POLL_INTERVAL_MS")


def test_bench_takes_its_own_options_first():
    done = subprocess.run([str(CAMPAIGNS), "bench", "--quick", "--help"], capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 0 and "python -m bench" in done.stdout, done.stderr


def test_status_shows_delivery_receipt_rates():
    from app.cli import _status_text

    data = {"id": "c1", "name": "n", "status": "completed", "version": 3, "channel": "sms", "start_at": None,
            "total_recipients": 200, "expansion_done": True, "skipped_recipients": 0, "terminal": 200,
            "recipients": {"sent": 200}, "failures_by_reason": {}, "channel_paused": None,
            "receipts": {"sent": 200, "delivered": 180, "read": 90, "bounced": 10, "complained": 0}}
    text = _status_text(data)
    assert "receipts   delivered 180 (90.0%), read 90 (45.0%), bounced 10 (5.0%), complained 0 (0.0%) of sent" in text
    assert "receipts" not in _status_text({**data, "receipts": dict.fromkeys(data["receipts"], 0)})
