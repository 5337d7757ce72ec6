"""The ``campaigns`` CLI against the real test database: principals, templates, seed, create, schedule,
status, transitions and the exit codes of refusals.

Every command that acts as a principal authenticates with an API token, as a user's does: the tests bootstrap
an admin (``campaigns bootstrap``) and give each ``--as NAME`` the token of NAME (``--as`` itself is only a
check that the token is NAME's)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from app import cli
from campaigns.settings import load_settings
from producers.topics import all_topic_names

pytestmark = pytest.mark.postgres


_TOKENS: dict[str | None, str] = {}  # this test's API tokens by principal (None: the bootstrapped admin)


@pytest.fixture
def cli_env(database_settings, monkeypatch, capsys):
    """Points the CLI's settings at the session's test database (environment, as a user would) and bootstraps
    its first admin, whose token commands get unless they say ``--as`` someone else."""
    db = database_settings
    for key, value in {
        "HOST": db.host,
        "PORT": str(db.port),
        "USER": db.user,
        "PASSWORD": db.password.get_secret_value(),
        "NAME": db.name,
    }.items():
        monkeypatch.setenv(f"CAMPAIGNS_DATABASE__{key}", value)
    monkeypatch.delenv(cli.ACTOR_ENV, raising=False)
    monkeypatch.delenv(cli.TOKEN_FILE_ENV, raising=False)
    monkeypatch.setenv(cli.TOKEN_ENV, "")
    load_settings.cache_clear()
    tag = uuid.uuid4().hex[:8]
    _TOKENS.clear()
    assert cli.main(["bootstrap", f"root-{tag}"]) == 0
    _TOKENS[None] = capsys.readouterr().out.strip()
    yield tag
    load_settings.cache_clear()


def _token(capsys, principal: str | None) -> str:
    if principal not in _TOKENS:
        os.environ[cli.TOKEN_ENV] = _TOKENS[None]
        code = cli.main(["token", "create", principal])
        out = capsys.readouterr().out.strip()
        # An unknown principal has no token: it is asked for with the admin's, and --as refuses the mismatch.
        _TOKENS[principal] = out if code == 0 else _TOKENS[None]
    return _TOKENS[principal]


def _run(capsys, *argv: str, token: str | None = None) -> tuple[int, str, str]:
    actor = argv[argv.index("--as") + 1] if "--as" in argv else None
    os.environ[cli.TOKEN_ENV] = token or _token(capsys, actor)  # restored by cli_env's monkeypatch
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_operator_flow_create_schedule_status(cli_env, capsys, tmp_path):
    tag = cli_env
    admin, marketer, auditor = f"admin-{tag}", f"marketer-{tag}", f"auditor-{tag}"
    assert _run(capsys, "principal", "add", admin, "--role", "admin")[0] == 0  # by the bootstrapped admin
    assert _run(capsys, "principal", "add", marketer, "--role", "marketer", "--as", admin)[0] == 0
    assert _run(capsys, "principal", "add", auditor, "--role", "auditor", "--as", admin)[0] == 0
    code, _, err = _run(capsys, "principal", "add", f"x-{tag}", "--role", "admin", "--as", marketer)
    assert code == 3 and "principals.manage" in err
    code, _, err = _run(capsys, "principal", "add", f"x-{tag}", "--role", "overlord")
    assert code == 2 and "unknown role 'overlord'" in err

    assert _run(capsys, "channel", "add", "sms", "--rate", "50", "--burst", "10")[0] == 0
    code, _, err = _run(capsys, "channel", "add", "sms", "--id", f"other-{tag}")
    assert code == 2 and "only one per kind" in err

    template = json.loads(
        (cli.Path(__file__).resolve().parents[2] / "examples" / "template-sms.json").read_text()
    )
    template["name"] = f"sms-{tag}"
    template_file = tmp_path / "template.json"
    template_file.write_text(json.dumps(template))
    code, out, _ = _run(capsys, "template", "add", str(template_file), "--as", admin)
    template_id = int(out)
    assert code == 0

    first_id = random.randrange(10**12, 10**13)
    code, out, err = _run(
        capsys,
        "seed",
        "--customers",
        "40",
        "--segments",
        "2",
        "--first-id",
        str(first_id),
        "--prefix",
        f"cli-{tag}",
    )
    assert code == 0 and "seeded 40 customers" in err
    segments = json.loads(out)["segments"]
    assert len(segments) == 2

    payload = {
        "name": f"CLI {tag}",
        "channel": "sms",
        "template": {"name": f"sms-{tag}"},
        "variables": {"discount": "10%", "end_date": "Friday"},
        "segments": segments,
    }
    payload_file = tmp_path / "campaign.json"
    payload_file.write_text(json.dumps(payload))

    code, _, err = _run(capsys, "create", str(payload_file), "--as", marketer)
    assert code == 2 and f"template approve {template_id}" in err  # the template is still pending
    code, _, err = _run(capsys, "template", "approve", str(template_id), "--as", marketer)
    assert code == 3 and "templates.manage" in err
    assert _run(capsys, "template", "approve", str(template_id), "--as", admin)[0] == 0
    code, _, err = _run(capsys, "template", "approve", str(template_id), "--as", admin)
    assert code == 4 and "not pending" in err

    code, _, err = _run(capsys, "create", str(payload_file), "--as", auditor)
    assert code == 3 and "campaigns.create" in err
    code, out, err = _run(capsys, "create", str(payload_file), "--as", marketer, "--json")
    assert code == 0
    campaign_id = json.loads(out)["id"]
    # The SMS cost estimate: encoding and segments of the static text, on stderr and in the JSON answer.
    assert json.loads(out)["sms"]["segments"] == 1 and json.loads(out)["sms"]["per_locale"]["en"]["encoding"] == "GSM-7"
    assert "sms: 1 segment(s) per message from the static text (en: 1 x GSM-7" in err

    code, _, err = _run(capsys, "schedule", campaign_id, "--at", "now", "--as", marketer)
    assert code == 0 and "scheduled for" in err
    code, out, _ = _run(capsys, "status", campaign_id, "--json", "--as", auditor)
    status = json.loads(out)
    assert code == 0 and status["status"] == "scheduled" and status["version"] == 2
    assert status["name"] == f"CLI {tag}" and status["channel"] == "sms"
    code, out, _ = _run(capsys, "status", campaign_id, "--as", auditor)
    assert code == 0 and "scheduled (version 2)" in out
    assert "sms        1 segment(s) per message from the static text" in out and "at most 10" in out

    assert _run(capsys, "pause", campaign_id, "--as", marketer)[0] == 0
    assert _run(capsys, "cancel", campaign_id, "--as", marketer)[0] == 0
    code, _, err = _run(capsys, "resume", campaign_id, "--as", marketer)
    assert code == 4 and "terminal state" in err
    code, _, err = _run(capsys, "pause", campaign_id, "--as", auditor)
    assert code == 3 and "campaigns.send" in err
    code, _, err = _run(capsys, "status", str(uuid.uuid4()), "--as", auditor)
    assert code == 4 and "does not exist" in err
    code, _, err = _run(capsys, "status", campaign_id, "--as", "nobody-at-all")
    assert code == 3 and "the API token belongs to" in err and "not 'nobody-at-all'" in err


def test_seed_refuses_customer_ids_in_use(cli_env, capsys):
    first_id = random.randrange(10**12, 10**13)
    args = ("seed", "--customers", "5", "--first-id", str(first_id), "--prefix", f"dup-{cli_env}")
    assert _run(capsys, *args)[0] == 0
    code, _, err = _run(capsys, *args)
    assert code == 2 and "overlap existing customers" in err


def test_an_unreachable_database_is_exit_5_with_a_hint(cli_env, monkeypatch, capsys):
    monkeypatch.setenv("CAMPAIGNS_DATABASE__PORT", "1")  # nothing listens there
    load_settings.cache_clear()
    code, _, err = _run(capsys, "status", str(uuid.uuid4()), token=_TOKENS[None])
    assert code == 5 and "cannot be reached" in err and "make services" in err


@pytest.mark.kafka
def test_topics_create_is_idempotent(cli_env, kafka_settings, monkeypatch, capsys):
    monkeypatch.setenv("CAMPAIGNS_KAFKA__BOOTSTRAP_SERVERS", kafka_settings.bootstrap_servers)
    monkeypatch.setenv("CAMPAIGNS_KAFKA__TOPIC_PREFIX", f"cli{cli_env}.")
    monkeypatch.setenv("CAMPAIGNS_KAFKA__PARTITIONS", "2")
    load_settings.cache_clear()
    code, out, _ = _run(capsys, "topics", "create")
    assert code == 0 and sorted(out.split()) == sorted(all_topic_names(load_settings()))
    code, out, err = _run(capsys, "topics", "create")
    assert code == 0 and out == "" and "0 topics created" in err


# --- the real entry point in a subprocess, as a user runs it ---------------------------------------------

CAMPAIGNS = cli.Path(sys.executable).with_name("campaigns")


NO_TOKEN_COMMANDS = ("migrate", "bootstrap", "topics", "worker", "relay", "commands", "live", "demo", "bench")
_DB_TOKENS: dict[tuple[str, str], str] = {}  # (database, principal) -> API token
DB_ADMIN = "cli-admin"


def db_token(db, principal: str = DB_ADMIN) -> str:
    """An API token of ``principal`` in ``db`` (made in-process: what is tested here is the command using it)."""
    from campaigns.db.engine import make_engine, make_sessionmaker
    from campaigns.service import CampaignService

    key = (db.name, principal)
    if key not in _DB_TOKENS:
        engine = make_engine(db)
        try:
            service = CampaignService(make_sessionmaker(engine))
            if (db.name, DB_ADMIN) not in _DB_TOKENS:
                service.provision_principal(DB_ADMIN, "admin")
                _DB_TOKENS[(db.name, DB_ADMIN)] = service.create_token(DB_ADMIN, DB_ADMIN)[1]
            if principal != DB_ADMIN:
                _DB_TOKENS[key] = service.create_token(DB_ADMIN, principal)[1]
        finally:
            engine.dispose()
    return _DB_TOKENS[key]


def _env(db, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAMPAIGNS_")}
    env.update({
        "CAMPAIGNS_DATABASE__HOST": db.host, "CAMPAIGNS_DATABASE__PORT": str(db.port),
        "CAMPAIGNS_DATABASE__USER": db.user, "CAMPAIGNS_DATABASE__PASSWORD": db.password.get_secret_value(),
        "CAMPAIGNS_DATABASE__NAME": db.name, **extra,
    })
    return env


def _campaigns(db, *argv: str, **extra: str) -> subprocess.CompletedProcess[str]:
    """``campaigns ARGV`` as a subprocess; a command that acts as a principal gets the token of ``--as NAME``
    (or of an admin) unless ``extra`` brings one."""
    if argv and argv[0] not in NO_TOKEN_COMMANDS and "CAMPAIGNS_TOKEN" not in extra:
        extra["CAMPAIGNS_TOKEN"] = db_token(db, argv[argv.index("--as") + 1] if "--as" in argv else DB_ADMIN)
    return subprocess.run([str(CAMPAIGNS), *argv], env=_env(db, **extra), capture_output=True, text=True,
                          timeout=120)


def _one_line(done: subprocess.CompletedProcess[str]) -> str:
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    return lines[0]


def _head() -> str:
    from alembic.script import ScriptDirectory

    from campaigns.db.engine import alembic_config

    return ScriptDirectory.from_config(alembic_config(load_settings().database)).get_current_head()


def test_migrating_tables_without_an_alembic_version_says_what_to_do(database_settings):
    import psycopg2

    head = _head()
    with psycopg2.connect(database_settings.for_migrations().dsn()) as conn, conn.cursor() as cur:
        cur.execute("DROP TABLE alembic_version")  # the schema owner's to drop (the application role cannot)
    conn.close()
    done = _campaigns(database_settings, "migrate")
    line = _one_line(done)
    assert done.returncode == 2 and "has the project's tables but no Alembic version" in line
    assert f"campaigns migrate --stamp {head}" in line
    assert _campaigns(database_settings, "migrate", "--stamp", head).returncode == 0
    done = _campaigns(database_settings, "migrate")
    assert done.returncode == 0 and "migrated" in done.stderr


def test_downgrade_one_step_with_yes_and_back(database_settings):
    import psycopg2

    refused = _campaigns(database_settings, "migrate", "--downgrade")
    assert refused.returncode == 2 and "--revision" in _one_line(refused)
    refused = _campaigns(database_settings, "migrate", "--downgrade", "--revision", "-1")
    assert refused.returncode == 2 and "--yes" in _one_line(refused)
    done = _campaigns(database_settings, "migrate", "--downgrade", "--revision", "-1", "--yes")
    assert done.returncode == 0, done.stderr
    with psycopg2.connect(database_settings.dsn()) as conn, conn.cursor() as cur:
        cur.execute("SELECT version_num FROM alembic_version")
        assert cur.fetchone()[0] != _head()
        cur.execute("SELECT to_regclass('campaigns') IS NOT NULL")
        assert cur.fetchone()[0]  # one step back, not to base
    conn.close()
    unknown = _campaigns(database_settings, "migrate", "--revision", "nope")
    assert unknown.returncode == 2 and "--revision" in _one_line(unknown)
    assert _campaigns(database_settings, "migrate").returncode == 0


@pytest.fixture
def email_env(database_settings):
    """An email channel and a marketer in the test database, made with the CLI."""
    tag = uuid.uuid4().hex[:8]
    for argv in (("principal", "add", f"m-{tag}", "--role", "marketer"), ("channel", "add", "email"),
                 ("seed", "--customers", "3", "--first-id", str(random.randrange(10**12, 10**13)),
                  "--segments", "1", "--prefix", f"mail-{tag}")):
        done = _campaigns(database_settings, *argv)
        assert done.returncode == 0, done.stderr
    segment = json.loads(done.stdout)["segments"][0]
    return database_settings, f"m-{tag}", segment


def test_an_inline_email_subject_rendered_with_a_line_break_is_refused_at_create(email_env, tmp_path):
    db, marketer, segment = email_env
    payload = tmp_path / "campaign.json"
    payload.write_text(json.dumps({
        "name": "Header injection", "channel": "email", "segments": [segment],
        "content": {"subject": "Sale: {{ discount }} off", "body": "<p>{{ discount }} off</p>"},
        "variables": {"discount": "20%\nBcc: everyone@example.com"},
    }))
    done = _campaigns(db, "create", str(payload), "--as", marketer)
    line = _one_line(done)
    assert done.returncode == 2 and "variables.discount: contains a line break" in line
    assert done.stdout == ""  # no campaign id: nothing was created


def test_a_template_email_subject_rendered_with_a_line_break_is_refused_at_create(email_env, tmp_path):
    db, marketer, segment = email_env
    template = tmp_path / "template.json"
    template.write_text(json.dumps({"name": "sale_mail", "channel": "email", "subject": "Sale: {{ discount }} off",
                                    "body": "<p>{{ discount }} off</p>"}))
    assert _campaigns(db, "template", "add", str(template), "--approve").returncode == 0
    payload = tmp_path / "campaign.json"
    payload.write_text(json.dumps({
        "name": "Header injection", "channel": "email", "segments": [segment], "template": {"name": "sale_mail"},
        "variables": {"discount": "20%\nBcc: everyone@example.com"},
    }))
    done = _campaigns(db, "create", str(payload), "--as", marketer)
    assert done.returncode == 2 and "variables.discount: contains a line break" in _one_line(done)


@pytest.mark.kafka
def test_operators_read_campaign_events_and_rejected_commands_with_the_cli(settings, tmp_path):
    """What README's "Using it" and docs/runbook.md show: the campaign's events (published by the worker's
    relay stage) and the commands refused by its commands stage, read with `campaigns events list` and
    `campaigns rejected list`, filtered by campaign and time, as text and --json."""
    from confluent_kafka import Producer

    from producers.commands import SigningKey, send_command
    from producers.kafka import KafkaProducer
    from producers.topics import COMMANDS
    from tests.helpers import wait_for

    kafka = {"CAMPAIGNS_KAFKA__BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
             "CAMPAIGNS_KAFKA__TOPIC_PREFIX": settings.kafka.topic_prefix,
             "CAMPAIGNS_KAFKA__PARTITIONS": str(settings.kafka.partitions), "CAMPAIGNS_METRICS_PORT": "0"}
    db = settings.database

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        done = _campaigns(db, *argv, **kafka)
        assert done.returncode == 0, f"campaigns {' '.join(argv)}: {done.stderr}"
        return done

    tag = uuid.uuid4().hex[:8]
    run("topics", "create")
    run("principal", "add", f"m-{tag}", "--role", "marketer")
    run("principal", "add", f"a-{tag}", "--role", "auditor")
    run("channel", "add", "sms")
    template = tmp_path / "template.json"
    template.write_text(json.dumps({"name": f"t-{tag}", "channel": "sms", "body": "Hi, {{ discount }} off"}))
    run("template", "add", str(template), "--approve")
    seeded = run("seed", "--customers", "3", "--first-id", str(random.randrange(10**12, 10**13)), "--segments", "1",
                 "--prefix", f"ops-{tag}")
    payload = tmp_path / "campaign.json"
    payload.write_text(json.dumps({"name": "Ops", "channel": "sms", "template": {"name": f"t-{tag}"},
                                   "variables": {"discount": "5%"}, "segments": json.loads(seeded.stdout)["segments"]}))
    campaign_id = run("create", str(payload), "--as", f"m-{tag}").stdout.strip()
    later = (datetime.now(UTC) + timedelta(days=300)).isoformat()  # no scheduler runs here anyway
    run("schedule", campaign_id, "--at", later, "--as", f"m-{tag}")
    run("pause", campaign_id, "--as", f"m-{tag}")

    # An upstream system's commands: a pause by an auditor (refused: permission), one for an unknown campaign
    # (refused: not found), and bytes that are no command at all.
    publisher = KafkaProducer(settings.kafka)
    keys = {p: SigningKey(**{k: v for k, v in json.loads(run("command-key", "create", p, "--json").stdout).items()
                             if k != "principal"}) for p in (f"a-{tag}", f"m-{tag}")}
    send_command(publisher, settings, {"command_type": "CANCEL", "campaign_id": campaign_id, "principal": f"a-{tag}"},
                 key=keys[f"a-{tag}"])
    send_command(publisher, settings, {"command_type": "PAUSE", "campaign_id": str(uuid.uuid4()),
                                       "principal": f"m-{tag}"}, key=keys[f"m-{tag}"])
    raw = Producer(settings.kafka.as_librdkafka())
    raw.produce(settings.kafka.topic(COMMANDS), b"not a command", b"k")
    raw.flush(30)

    worker = subprocess.Popen([str(CAMPAIGNS), "worker", "--stages", "relay,commands"], env=_env(db, **kafka),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        def listed(*argv: str) -> list[dict]:
            return json.loads(run(*argv, "--json").stdout)

        def at_least(n: int, *argv: str) -> list[dict] | None:
            records = listed(*argv)
            return records if len(records) >= n else None

        events = wait_for(lambda: at_least(3, "events", "list", "--campaign", campaign_id), timeout=60,
                          interval=0.5, what="the campaign's three events")
        rejected = wait_for(lambda: at_least(3, "rejected", "list"), timeout=60, interval=0.5,
                            what="three rejected commands")
    finally:
        worker.send_signal(subprocess.signal.SIGINT)
        worker.wait(30)

    assert [e["event_type"] for e in events] == ["CREATED", "SCHEDULED", "PAUSED"]
    assert {e["campaign_id"] for e in events} == {campaign_id}
    assert events[0]["actor"] == f"m-{tag}" and events[1]["campaign_version"] == 2
    # The bytes that are no command at all are unsigned: refused before anything reads them.
    assert sorted(r["reason"] for r in rejected) == ["not_found", "permission_denied", "unauthenticated"]
    mine = listed("rejected", "list", "--campaign", campaign_id)
    assert [(r["reason"], r["command"]["command_type"], r["command"]["principal"]) for r in mine] == [
        ("permission_denied", "CANCEL", f"a-{tag}")]
    assert "original_value" not in mine[0]

    assert listed("events", "list", "--campaign", campaign_id, "--type", "paused")[0]["event_type"] == "PAUSED"
    assert len(listed("events", "list", "--campaign", campaign_id, "--since", "1h")) == 3
    assert listed("events", "list", "--since", "2099-01-01T00:00:00Z") == []

    text = run("events", "list", "--campaign", campaign_id).stdout.splitlines()
    assert text[-1] == "3 events: CREATED 1, PAUSED 1, SCHEDULED 1"
    assert "PAUSED" in text[2] and f"campaign={campaign_id}" in text[2] and f"actor=m-{tag}" in text[2]
    text = run("rejected", "list", "--limit", "1").stdout.splitlines()
    assert text[0] == "(2 earlier rejected commands not shown: raise --limit or narrow --since)"
    assert text[-1] == "3 rejected commands: not_found 1, permission_denied 1, unauthenticated 1"
    bad = _campaigns(db, "events", "list", "--since", "yesterday", **kafka)
    assert bad.returncode == 2 and "--since" in _one_line(bad)


def test_channel_breaker_list_and_close_by_hand(database_settings):
    """What an operator types when a provider refused the account: see the open breaker, close it."""
    import psycopg2

    db = database_settings
    assert _campaigns(db, "channel", "add", "email", "--rate", "50").returncode == 0
    with psycopg2.connect(db.dsn()) as conn, conn.cursor() as cur:
        cur.execute("UPDATE channels SET paused_reason = 'unauthorized', paused_at = now(), probe_at = now(), "
                    "failed_probes = 3 WHERE kind = 'email' AND enabled")
    conn.close()
    listed = _campaigns(db, "channel", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    email = next(row for row in json.loads(listed.stdout) if row["kind"] == "email")
    assert email["breaker"] == "open" and email["paused_reason"] == "unauthorized" and email["failed_probes"] == 3
    assert "breaker OPEN (unauthorized" in _campaigns(db, "channel", "list").stdout

    closed = _campaigns(db, "channel", "close", "email")
    assert closed.returncode == 0 and "breaker closed" in _one_line(closed)
    email = next(row for row in json.loads(_campaigns(db, "channel", "list", "--json").stdout)
                 if row["kind"] == "email")
    assert email["breaker"] == "closed" and email["paused_reason"] is None
    missing = _campaigns(db, "channel", "close", "nosuch")
    assert missing.returncode == 4 and "no enabled 'nosuch' channel" in _one_line(missing)
