"""Issue 16 (parts 1, 4, 5) through the real ``campaigns`` entry point, as subprocesses, as a user runs it:

* the RBAC matrix: every default role x every operation the CLI exposes (allowed: exit 0; denied: exit 3 naming
  the permission), plus the ownership rule and the approval of inline content;
* API tokens: bootstrap (once), create, use, list (no secrets), revoke (by an admin or the owner), expiry;
* reserved principal names;
* PostgreSQL: a wrong password is refused (scram-sha-256), a password with spaces, quotes and ``=`` works.
"""

from __future__ import annotations

import json
import random
import subprocess
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg2
import pytest
from pydantic import SecretStr

from campaigns.db import repository as repo
from campaigns.db.engine import make_engine, make_sessionmaker, transaction
from campaigns.db.seed import SeedPlan, seed
from campaigns.service import CampaignService
from campaigns.settings import Settings
from tests.conftest import CI, REPO_ROOT
from tests.helpers import wait_for
from tests.integration.test_cli_integration import CAMPAIGNS, _env

pytestmark = pytest.mark.postgres

ROLES = ("admin", "marketer", "auditor")

# Which default role may do what, through the CLI (the product's intent, written out by hand; the unit test
# tests/unit/test_core_rbac.py holds the same for the operation table).
ALLOWED: dict[str, set[str]] = {
    "principal add": {"admin"},
    "principal list": {"admin"},
    "token create": {"admin"},
    "token list": {"admin"},
    "token revoke (another principal's)": {"admin"},
    "template add": {"admin"},
    "template approve": {"admin"},
    "approve (inline content)": {"admin"},
    "channel add": {"admin"},
    "channel close": {"admin"},
    "channel list": {"admin", "marketer", "auditor"},
    "seed": {"admin"},
    "create": {"admin", "marketer"},
    "schedule": {"admin", "marketer"},
    "pause": {"admin", "marketer"},
    "resume": {"admin", "marketer"},
    "cancel": {"admin", "marketer"},
    "status": {"admin", "marketer", "auditor"},
    "audit": {"admin", "auditor"},
    "dlq list": {"admin", "auditor"},
    "events list": {"admin", "auditor"},
    "rejected list": {"admin", "auditor"},
    "replay": {"admin"},
    "dlq redrive": {"admin"},
    "import customers": {"admin", "marketer"},
    "import segment": {"admin", "marketer"},
}
PERMISSION = {
    "principal add": "principals.manage", "principal list": "principals.manage", "token create": "principals.manage",
    "token list": "principals.manage", "token revoke (another principal's)": "principals.manage",
    "template add": "templates.manage", "template approve": "templates.manage",
    "approve (inline content)": "templates.manage", "channel add": "channels.manage",
    "channel close": "channels.manage", "channel list": "campaigns.read", "seed": "customers.manage",
    "create": "campaigns.create", "schedule": "campaigns.send", "pause": "campaigns.send",
    "resume": "campaigns.send", "cancel": "campaigns.send", "status": "campaigns.read", "audit": "campaigns.audit",
    "dlq list": "pipeline.read", "events list": "pipeline.read", "rejected list": "pipeline.read",
    "replay": "pipeline.replay", "dlq redrive": "pipeline.replay",
    "import customers": "customers.import", "import segment": "customers.import",
}


class World:
    """One test database and topic prefix, its principals (one per role, plus a second marketer who owns
    campaigns the others try to touch) and their tokens; setup data made in-process (what is tested is the CLI)."""

    def __init__(self, settings: Settings, tmp_path: Path) -> None:
        self.settings, self.db, self.tmp = settings, settings.database, tmp_path
        self.kafka = {"CAMPAIGNS_KAFKA__BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
                      "CAMPAIGNS_KAFKA__TOPIC_PREFIX": settings.kafka.topic_prefix,
                      "CAMPAIGNS_KAFKA__PARTITIONS": str(settings.kafka.partitions)}
        self.engine = make_engine(self.db)
        self.service = CampaignService(make_sessionmaker(self.engine))
        self.tokens: dict[str, str] = {}
        self.first = self.campaigns("bootstrap", "root")
        assert self.first.returncode == 0, self.first.stderr
        self.tokens["root"] = self.first.stdout.strip()
        for role in ROLES:
            self.service.add_principal("root", f"{role}-1", role)
            self.tokens[role] = self.service.create_token("root", f"{role}-1")[1]
        self.service.add_principal("root", "owner-1", "marketer")
        with transaction(self.service._sessions) as session:
            repo.upsert_channel(session, id="sms", kind="sms", provider="simulator", rate_per_s=100, burst=10)
        self.template = f"promo-{uuid.uuid4().hex[:6]}"
        self.service.add_template("root", name=self.template, channel="sms", body="Save {{ discount }}", approve=True)
        plan = SeedPlan(customers=5, first_id=random.randrange(10**12, 10**13), segments=1, segment_prefix="s")
        self.segment = seed(self.db.dsn(), plan)[0]
        with psycopg2.connect(self.db.dsn()) as conn, conn.cursor() as cur:  # customers a segment file can name
            cur.execute("INSERT INTO customers (id, external_ref) SELECT 10^14 + n, 'ext-' || n "
                        "FROM generate_series(1, 3) n")
        conn.close()

    def campaigns(self, *argv: str, token: str | None = None, **env: str) -> subprocess.CompletedProcess[str]:
        extra = {**self.kafka, **env}
        if token is not None:
            extra["CAMPAIGNS_TOKEN"] = token
        return subprocess.run([str(CAMPAIGNS), *argv], env=_env(self.db, **extra), capture_output=True, text=True,
                              timeout=120, cwd=REPO_ROOT)

    def payload_file(self, *, inline: bool = False) -> str:
        payload = {"name": "matrix", "channel": "sms", "segments": [self.segment], "variables": {"discount": "5%"}}
        content = {"content": {"body": "Save {{ discount }}"}} if inline else {"template": {"name": self.template}}
        payload.update(content)
        path = self.tmp / f"payload-{uuid.uuid4().hex[:6]}.json"
        path.write_text(json.dumps(payload))
        return str(path)

    def campaign(self, owner: str, state: str = "draft", *, inline: bool = False) -> str:
        payload = json.loads(Path(self.payload_file(inline=inline)).read_text())
        campaign_id = self.service.create_campaign(owner, payload)
        later = datetime.now(UTC) + timedelta(days=30)  # no scheduler runs here, and none would start it
        if state in ("scheduled", "paused"):
            self.service.schedule_campaign(owner, campaign_id, later)
        if state == "paused":
            self.service.pause_campaign(owner, campaign_id)
        return str(campaign_id)

    def pending_template(self) -> str:
        return str(self.service.add_template("root", name=f"p-{uuid.uuid4().hex[:6]}", channel="sms", body="Hi"))


@pytest.fixture
def world(settings: Settings, tmp_path: Path):
    w = World(settings, tmp_path)
    created = w.campaigns("topics", "create")
    assert created.returncode == 0, created.stderr
    yield w
    w.engine.dispose()


def command_for(world: World, operation: str, role: str) -> list[str]:
    """The CLI command of ``operation`` as ``role`` would type it, on objects that let it succeed when allowed
    (its own campaigns in the state the transition needs; for roles that cannot create, an admin's)."""
    me = f"{role}-1"
    owner = me if role in ("admin", "marketer") else "admin-1"
    tag = uuid.uuid4().hex[:6]
    template_file = world.tmp / f"template-{tag}.json"
    template_file.write_text(json.dumps({"name": f"t-{tag}", "channel": "sms", "body": "Hello {{ x }}"}))
    customers_file = world.tmp / f"customers-{tag}.csv"
    customers_file.write_text(f"external_id,email,first_name\nc-{tag},c-{tag}@example.com,Ana\n")
    members_file = world.tmp / f"members-{tag}.csv"
    members_file.write_text("external_id\next-1\next-2\n")
    return {
        "principal add": ["principal", "add", f"new-{tag}", "--role", "auditor"],
        "principal list": ["principal", "list"],
        "token create": ["token", "create", "owner-1"],
        "token list": ["token", "list"],
        "token revoke (another principal's)": ["token", "revoke", "--principal", "owner-1"],
        "template add": ["template", "add", str(template_file)],
        "template approve": ["template", "approve", world.pending_template()],
        "approve (inline content)": ["approve", world.campaign("owner-1", inline=True)],
        "channel add": ["channel", "add", "sms", "--rate", "90", "--burst", "9"],
        "channel close": ["channel", "close", "sms"],
        "channel list": ["channel", "list"],
        "seed": ["seed", "--customers", "2", "--segments", "1", "--first-id", str(random.randrange(10**12, 10**13)),
                 "--prefix", f"m-{tag}"],
        "create": ["create", world.payload_file()],
        "schedule": ["schedule", world.campaign(owner), "--at", (datetime.now(UTC) + timedelta(days=30)).isoformat()],
        "pause": ["pause", world.campaign(owner, "scheduled")],
        "resume": ["resume", world.campaign(owner, "paused")],
        "cancel": ["cancel", world.campaign(owner)],
        "status": ["status", world.campaign("owner-1")],
        "audit": ["audit", "--since", "1h"],
        "dlq list": ["dlq", "list"],
        "events list": ["events", "list", "--since", "1h"],
        "rejected list": ["rejected", "list"],
        "replay": ["replay", "--topic", "campaign.messages.sms", "--dry-run"],
        "dlq redrive": ["dlq", "redrive", "--dry-run"],
        "import customers": ["import", "customers", str(customers_file)],
        "import segment": ["import", "segment", f"vip-{tag}", str(members_file)],
    }[operation]


def test_rbac_matrix_every_role_every_operation_through_the_cli(world: World):
    # Every cell acts on objects of its own (command_for), so the cells' subprocesses run two at a time: the
    # verdict of a cell does not depend on the others, and the 78 CLI start-ups take half as long on two cores.
    cells = [(operation, role, command_for(world, operation, role)) for operation in ALLOWED for role in ROLES]
    with ThreadPoolExecutor(max_workers=2) as pool:
        runs = list(pool.map(lambda cell: world.campaigns(*cell[2], token=world.tokens[cell[1]]), cells))
    problems = []
    for (operation, role, _), done in zip(cells, runs, strict=True):
        if role in ALLOWED[operation]:
            if done.returncode != 0:
                problems.append(f"{role} {operation}: exit {done.returncode}, expected 0: {done.stderr.strip()}")
        elif done.returncode != 3 or PERMISSION[operation] not in done.stderr:
            problems.append(f"{role} {operation}: exit {done.returncode}, expected 3 naming "
                            f"{PERMISSION[operation]}: {done.stderr.strip()}")
    assert not problems, "\n".join(problems)
    # Refusals are not silent: the audit log has every allowed change, nothing from the refused ones.
    actions = {r["action"] for r in world.service.audit_log("root", principal="marketer-1")}
    assert actions == {"create_campaign", "schedule_campaign", "pause_campaign", "resume_campaign", "cancel_campaign",
                       "import_customers", "import_segment"}


def test_ownership_a_marketer_manages_only_its_own_campaigns_an_admin_any(world: World):
    for action, state in (("schedule", "draft"), ("pause", "scheduled"), ("resume", "paused"), ("cancel", "draft")):
        theirs = world.campaign("owner-1", state)
        done = world.campaigns(action, theirs, token=world.tokens["marketer"])
        assert done.returncode == 3, done.stderr
        assert "belongs to 'owner-1'" in done.stderr and "campaigns.manage_any" in done.stderr
        assert world.campaigns(action, theirs, token=world.tokens["admin"]).returncode == 0
    assert world.campaigns("status", world.campaign("owner-1"), token=world.tokens["marketer"]).returncode == 0


def test_inline_content_needs_approval_unless_the_creator_may_send_unapproved_content(world: World):
    created = world.campaigns("create", world.payload_file(inline=True), token=world.tokens["marketer"])
    assert created.returncode == 0, created.stderr
    campaign_id = created.stdout.strip()
    assert f"campaigns approve {campaign_id}" in created.stderr
    refused = world.campaigns("schedule", campaign_id, token=world.tokens["marketer"])
    assert refused.returncode == 4 and "nobody approved" in refused.stderr
    assert world.campaigns("approve", campaign_id, token=world.tokens["marketer"]).returncode == 3
    assert world.campaigns("approve", campaign_id, token=world.tokens["admin"]).returncode == 0
    again = world.campaigns("approve", campaign_id, token=world.tokens["admin"])
    assert again.returncode == 4 and "already approved (by admin-1)" in again.stderr
    assert world.campaigns("schedule", campaign_id, token=world.tokens["marketer"]).returncode == 0
    # An admin holds content.send_unapproved: its inline content is approved by itself at creation.
    mine = world.campaigns("create", world.payload_file(inline=True), token=world.tokens["admin"]).stdout.strip()
    assert world.campaigns("schedule", mine, token=world.tokens["admin"]).returncode == 0
    status = json.loads(world.campaigns("status", mine, "--json", token=world.tokens["auditor"]).stdout)
    assert status["content_approved_by"] == "admin-1"


def test_token_lifecycle_create_use_list_revoke_expire(world: World):
    root = world.tokens["root"]
    created = world.campaigns("token", "create", "auditor-1", token=root)
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    token_id = token.split("_")[1]
    assert token.startswith("cmpt_") and token_id in created.stderr and token not in created.stderr
    assert world.campaigns("audit", token=token, CAMPAIGNS_ACTOR="auditor-1").returncode == 0
    mismatch = world.campaigns("audit", "--as", "root", token=token)
    assert mismatch.returncode == 3 and "belongs to 'auditor-1', not 'root'" in mismatch.stderr
    listed = world.campaigns("token", "list", "--json", token=root)
    rows = json.loads(listed.stdout)
    mine = next(r for r in rows if r["id"] == token_id)
    assert mine["principal"] == "auditor-1" and mine["last_used_at"] and mine["revoked_at"] is None
    assert token.split("_", 2)[2] not in listed.stdout  # no secret is ever shown again
    with psycopg2.connect(world.db.dsn()) as conn, conn.cursor() as cur:
        cur.execute("SELECT secret_hash FROM api_tokens WHERE id = %s", (token_id,))
        stored = cur.fetchone()[0]
    conn.close()
    assert len(stored) == 64 and token.split("_", 2)[2] not in stored
    # Revoked: refused at once, with the same words as a made-up token (nothing tells which part was wrong).
    assert world.campaigns("token", "revoke", token_id, token=root).returncode == 0
    for bad in (token, "cmpt_0000000000000000_" + "A" * 43, "not-a-token"):
        refused = world.campaigns("audit", token=bad)
        assert refused.returncode == 3 and "invalid, expired or revoked API token" in refused.stderr
    again = world.campaigns("token", "revoke", token_id, token=root)
    assert again.returncode == 4 and "no live token" in again.stderr
    # A principal may revoke its own token without principals.manage; not anyone else's.
    own = world.campaigns("token", "create", "marketer-1", token=root).stdout.strip()
    other = world.campaigns("token", "revoke", "--principal", "auditor-1", token=own)
    assert other.returncode == 3 and "principals.manage" in other.stderr
    assert world.campaigns("token", "revoke", own, token=own).returncode == 0
    assert world.campaigns("channel", "list", token=own).returncode == 3
    # Expiry.
    short = world.campaigns("token", "create", "auditor-1", "--expires-in", "2s", token=root).stdout.strip()
    assert world.campaigns("audit", token=short).returncode == 0
    wait_for(lambda: world.campaigns("audit", token=short).returncode == 3, timeout=20, interval=0.5,
             what="the 2 s token expired")
    assert world.campaigns("token", "create", "auditor-1", "--expires-in", "soon", token=root).returncode == 2
    assert world.campaigns("token", "create", "nobody", token=root).returncode == 4
    # No token at all: refused before anything runs.
    none = world.campaigns("channel", "list", CAMPAIGNS_TOKEN="")
    assert none.returncode == 3 and "no API token" in none.stderr


def test_bootstrap_makes_the_first_admin_once(world: World, settings: Settings, empty_migrated_database):
    again = world.campaigns("bootstrap", "second-admin")
    assert again.returncode == 3 and "already has principals" in again.stderr and again.stdout == ""
    db = empty_migrated_database
    reserved = subprocess.run([str(CAMPAIGNS), "bootstrap", "system"], env=_env(db), capture_output=True, text=True,
                              timeout=60)
    assert reserved.returncode == 2 and "reserved" in reserved.stderr
    first = subprocess.run([str(CAMPAIGNS), "bootstrap", "ops-admin"], env=_env(db), capture_output=True, text=True,
                           timeout=60)
    assert first.returncode == 0, first.stderr
    token = first.stdout.strip()
    listed = subprocess.run([str(CAMPAIGNS), "principal", "list", "--json"], env=_env(db, CAMPAIGNS_TOKEN=token),
                            capture_output=True, text=True, timeout=60)
    assert json.loads(listed.stdout) == [{"name": "ops-admin", "role": "admin"}]
    second = subprocess.run([str(CAMPAIGNS), "bootstrap", "ops-admin-2"], env=_env(db), capture_output=True,
                            text=True, timeout=60)
    assert second.returncode == 3 and "already has principals" in second.stderr


RESERVED_OR_MALFORMED = ["system", "operator", "SYSTEM", "Operator", "system.scheduler", "operator-2", "anonymous",
                         "al ice", "eve\u0301"]


def test_reserved_and_malformed_names_cannot_be_registered(world: World):
    # One world for all the names: each is its own CLI call, and a refused one leaves nothing behind to differ by.
    for name in RESERVED_OR_MALFORMED:
        done = world.campaigns("principal", "add", name, "--role", "admin", token=world.tokens["root"])
        assert done.returncode == 2 and "name:" in done.stderr, (name, done.stderr)
        with psycopg2.connect(world.db.dsn()) as conn, conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM principals WHERE lower(name) = lower(%s)", (name,))
            assert cur.fetchone()[0] == 0, name
        conn.close()


@pytest.fixture
def empty_migrated_database(database_server):
    """A new database at head with no principals (as after `campaigns migrate` on a fresh install)."""
    from campaigns.db.engine import upgrade

    name = f"campaigns_boot_{uuid.uuid4().hex[:8]}"
    admin = psycopg2.connect(database_server.for_migrations().model_copy(update={"name": "postgres"}).dsn())
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    db = database_server.model_copy(update={"name": name})
    try:
        upgrade(db)
        yield db
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


# --- PostgreSQL authentication -------------------------------------------------------------------------------


def superuser_connection(database_server):
    """A superuser connection to make a throwaway login role: the project's local cluster keeps its superuser
    password in .state/ (ops/postgres/postgres.sh); elsewhere the configured role must be a superuser."""
    password_file = REPO_ROOT / ".state" / "postgres-superuser.password"
    candidates = []
    if password_file.exists():
        candidates.append(database_server.model_copy(update={
            "user": "postgres", "password": SecretStr(password_file.read_text().strip()), "name": "postgres"}))
    candidates.append(database_server.model_copy(update={"name": "postgres"}))
    for candidate in candidates:
        try:
            conn = psycopg2.connect(candidate.dsn())
        except psycopg2.OperationalError:
            continue
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
            if cur.fetchone()[0]:
                return conn
        conn.close()
    message = "no superuser to create a test role with (the local cluster's .state/postgres-superuser.password)"
    if CI:
        pytest.fail(message)
    pytest.skip(message)


def test_a_wrong_postgres_password_is_refused(database_settings, world: World):
    wrong = database_settings.model_copy(update={"password": SecretStr("not-the-password")})
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        psycopg2.connect(wrong.dsn()).close()
    done = world.campaigns("channel", "list", token=world.tokens["admin"], CAMPAIGNS_DATABASE__PASSWORD="nope")
    assert done.returncode == 5 and "password authentication failed" in done.stderr
    migrate = world.campaigns("migrate", CAMPAIGNS_DATABASE__MIGRATION_PASSWORD="nope")
    assert migrate.returncode == 5 and "password authentication failed" in migrate.stderr


def test_a_password_with_spaces_quotes_and_equals_signs_works(database_server, world: World):
    role = f"campaigns_pw_{uuid.uuid4().hex[:8]}"
    password = "two words = one 'secret' host=198.51.100.1 dbname=postgres \\ end"
    admin = superuser_connection(database_server)
    try:
        with admin.cursor() as cur:
            cur.execute(f'CREATE ROLE "{role}" LOGIN PASSWORD %s IN ROLE "{world.db.user}"', (password,))
        settings = world.db.model_copy(update={"user": role, "password": SecretStr(password)})
        with psycopg2.connect(settings.dsn()) as conn, conn.cursor() as cur:  # libpq parses make_dsn's quoting
            cur.execute("SELECT current_user, inet_server_addr()::text")
            assert cur.fetchone() == (role, "127.0.0.1/32")  # the host= inside the password injected nothing
        conn.close()
        engine = make_engine(settings)  # SQLAlchemy's URL from parts
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT current_user").scalar() == role
        engine.dispose()
        done = world.campaigns("channel", "list", "--json", token=world.tokens["admin"],
                               CAMPAIGNS_DATABASE__USER=role, CAMPAIGNS_DATABASE__PASSWORD=password)
        assert done.returncode == 0, done.stderr
        assert [c["kind"] for c in json.loads(done.stdout)] == ["sms"]
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP ROLE IF EXISTS "{role}"')
        admin.close()


def test_the_application_role_owns_nothing_and_cannot_change_the_schema(database_settings):
    with psycopg2.connect(database_settings.dsn()) as conn, conn.cursor() as cur:
        cur.execute("SELECT rolsuper, rolcreaterole, rolcreatedb FROM pg_roles WHERE rolname = current_user")
        flags = cur.fetchone()
        if database_settings.migration_user is None:
            pytest.skip("one role for everything here (a container's superuser): nothing to separate")
        assert flags == (False, False, False)
        cur.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND tableowner = current_user")
        assert cur.fetchone()[0] == 0
        for statement in ("DROP TABLE campaigns", "ALTER TABLE campaigns ADD COLUMN x int", "CREATE TABLE x (i int)",
                          "DELETE FROM audit_log", "UPDATE alembic_version SET version_num = 'x'"):
            cur.execute("SAVEPOINT s")
            with pytest.raises(psycopg2.errors.InsufficientPrivilege):
                cur.execute(statement)
            cur.execute("ROLLBACK TO SAVEPOINT s")
        cur.execute("SELECT count(*) FROM campaigns")  # and it does read and write data
        cur.execute("INSERT INTO audit_log (principal, action) VALUES ('t', 't')")
    conn.close()
