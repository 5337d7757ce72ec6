"""The entry points users run, as subprocesses on the real services.

Everything here goes through what a user types: the ``campaigns`` console script that ``pip install`` put next
to the interpreter (``.venv/bin/campaigns``), ``python -m simulator``, configured only by ``CAMPAIGNS_*``
environment variables. Nothing is wired in-process, so a stage that crashes at start, a missing dependency or a
documented command that no longer parses fails here although the in-process tests pass.

Fixtures build on ``tests/conftest.py``: ``settings`` (a fresh database cloned from the migrated template, a
unique topic prefix whose topics are deleted afterwards, services that fail under ``CI`` instead of skipping)
and on the process handling of ``tests/faults/procs.py`` (:class:`~tests.faults.procs.Proc`: a log file per
process, signals by pid). Every process a test starts is ended in the fixture's ``finally``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg2
import pytest
from pydantic import BaseModel, SecretStr

from campaigns.codec import get_codec
from campaigns.settings import DatabaseSettings, Settings
from tests.faults.procs import REPO_ROOT, Cluster, Proc, Secrets, free_port
from tests.helpers import consume_to_end, wait_for

# The console script of the installed package, as a user runs it (`.venv/bin/campaigns`).
CAMPAIGNS = Path(sys.executable).with_name("campaigns")
TERMINAL = ("sent", "failed", "skipped", "cancelled")
FINISHED = ("completed", "failed", "cancelled")
HARNESS_ADMIN = "harness-admin"  # the admin whose token commands get when a test names no actor
# Commands that run with the services' own credentials, not as a principal: they take no API token.
NO_TOKEN_COMMANDS = ("migrate", "bootstrap", "topics", "worker", "relay", "commands", "live", "demo", "bench")


class EntryPoints(Cluster):
    """The processes of one test, started the way users start them.

    A :class:`Cluster` (its simulator, pid-based shutdown, crash and secret-leak checks) whose commands are
    ``campaigns ...``: :meth:`cli` runs one to completion (bounded), :meth:`start` runs a long-running one in
    the background with its own log file. The environment is what a user sets: the services' addresses, the
    test's topic prefix and database, where the providers are; with ``canaries`` also the provider credentials
    as canary strings (see :class:`Secrets`). Nothing else: production defaults apply (claim lease 60 s, ...).

    Commands that act as a principal get an API token (``CAMPAIGNS_TOKEN``), as a user has one: the token of
    ``actor`` (or ``CAMPAIGNS_ACTOR``), made with ``campaigns token create``, else the token of the harness's own
    admin, :data:`HARNESS_ADMIN` (provisioned on first use). A command whose environment already has a token
    keeps it. ``auto_token=False`` turns this off (README's own commands bring their tokens).
    """

    def __init__(self, settings: Settings, secrets: Secrets, log_dir: Path, *, canaries: bool = True,
                 auto_token: bool = True, **env: str) -> None:
        super().__init__(settings, secrets, log_dir, extra_env=env)
        self.canaries = canaries
        self.auto_token = auto_token
        self._tokens: dict[str, str] = {}
        assert CAMPAIGNS.exists(), f"{CAMPAIGNS} is missing: `pip install -e '.[dev]'` installs the console script"

    def env(self, **overrides: str) -> dict[str, str]:
        s = self.settings
        env = {k: v for k, v in os.environ.items() if not k.startswith("CAMPAIGNS_")}
        env.update({
            "PYTHONUNBUFFERED": "1",
            "CAMPAIGNS_KAFKA__BOOTSTRAP_SERVERS": s.kafka.bootstrap_servers,
            "CAMPAIGNS_KAFKA__TOPIC_PREFIX": s.kafka.topic_prefix,
            "CAMPAIGNS_KAFKA__PARTITIONS": str(s.kafka.partitions),
            **_group_env("CAMPAIGNS_DATABASE__", s.database),  # host, port, user, password, name and the rest
        })
        if self.canaries:
            env.update({
                "CAMPAIGNS_PROVIDERS__WHATSAPP_TOKEN": self.secrets.whatsapp_token,
                "CAMPAIGNS_PROVIDERS__SMS_AUTH_TOKEN": self.secrets.sms_auth_token,
                "CAMPAIGNS_PROVIDERS__SMTP_USERNAME": "campaigns-relay",
                "CAMPAIGNS_PROVIDERS__SMTP_PASSWORD": self.secrets.smtp_password,
            })
        env.update(self.provider_urls)
        env.update(self.extra_env)
        env.update(overrides)
        return env

    def cli(self, *args: str, expect: int | None = 0, timeout: float = 120.0, actor: str | None = None,
            **env: str) -> subprocess.CompletedProcess[str]:
        """``campaigns ARGS`` to completion; asserts the exit code (unless ``expect`` is None)."""
        extra = {"CAMPAIGNS_ACTOR": actor} if actor else {}
        extra.update(self._token_env(args, {**extra, **env}))
        result = subprocess.run([str(CAMPAIGNS), *args], env=self.env(**extra, **env), cwd=REPO_ROOT,
                                capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        if expect is not None:
            assert result.returncode == expect, (
                f"`campaigns {' '.join(args)}` exited {result.returncode}, expected {expect}\n"
                f"stdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-3000:]}"
            )
        return result

    def start(self, name: str, *args: str, **env: str) -> Proc:
        """``campaigns ARGS`` in the background (logs in ``<log_dir>/<name>-N.log``)."""
        return self.spawn(name, [str(CAMPAIGNS), *args], **self._token_env(args, env), **env)

    def _token_env(self, args: tuple[str, ...], env: dict[str, str]) -> dict[str, str]:
        """``CAMPAIGNS_TOKEN`` for a command that acts as a principal and has no token in its environment."""
        if not self.auto_token or not args or args[0] in NO_TOKEN_COMMANDS or "--help" in args:
            return {}
        if "CAMPAIGNS_TOKEN" in env or "CAMPAIGNS_TOKEN" in self.extra_env:
            return {}
        actor = env.get("CAMPAIGNS_ACTOR") or self.extra_env.get("CAMPAIGNS_ACTOR")
        return {"CAMPAIGNS_TOKEN": self.token_for(actor)}

    def token_for(self, principal: str | None = None) -> str:
        """An API token of ``principal`` (None: the harness's admin), made once per principal: the admin's
        in-process (the database may already have principals, so `campaigns bootstrap` could refuse), every
        other with ``campaigns token create`` as the admin (the principal must exist by then)."""
        name = principal or HARNESS_ADMIN
        if name in self._tokens:
            return self._tokens[name]
        if name == HARNESS_ADMIN:
            from campaigns.db.engine import make_engine, make_sessionmaker
            from campaigns.service import CampaignService

            engine = make_engine(self.settings.database)
            try:
                service = CampaignService(make_sessionmaker(engine))
                service.provision_principal(HARNESS_ADMIN, "admin")
                self._tokens[name] = service.create_token(HARNESS_ADMIN, HARNESS_ADMIN)[1]
            finally:
                engine.dispose()
        else:
            created = self.cli("token", "create", name, CAMPAIGNS_TOKEN=self.token_for(None))
            self._tokens[name] = created.stdout.strip()
        return self._tokens[name]

    def spawn(self, name: str, argv: list[str], **env: str) -> Proc:
        """Any program in the background, in the repository root, with this test's environment."""
        name = self._name(name)
        proc = Proc(name, argv, self.env(**env), self.log_dir / f"{name}.log")
        self.procs.append(proc)
        return proc

    def start_worker(self, *args: str, name: str = "worker", **env: str) -> Proc:  # type: ignore[override]
        """``campaigns worker ARGS`` (default: every stage) with its /metrics on a free port."""
        port = free_port()
        proc = self.start(name, "worker", *args, CAMPAIGNS_METRICS_PORT=str(port), **env)
        proc.metrics_port = port
        return proc

    def close(self) -> None:
        super().close()
        for proc in self.procs:
            if not proc._log.closed:
                proc._log.close()


@pytest.fixture
def secrets() -> Secrets:
    return Secrets()


def _group_env(prefix: str, group: BaseModel) -> dict[str, str]:
    """``CAMPAIGNS_<GROUP>__<FIELD>`` for every field of a settings group that is set (secrets unwrapped), so a
    subprocess sees exactly the settings the test's fixtures chose."""
    env = {}
    for name in type(group).model_fields:
        value = getattr(group, name)
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if value is not None:
            env[f"{prefix}{name.upper()}"] = json.dumps(value) if isinstance(value, list | dict) else str(value)
    return env


@contextmanager
def entry_points(settings: Settings, secrets: Secrets, log_dir: Path, **options: Any) -> Iterator[EntryPoints]:
    """:class:`EntryPoints` whose processes are all ended on exit; their logs must not hold a canary secret."""
    log_dir.mkdir(parents=True, exist_ok=True)
    procs = EntryPoints(settings, secrets, log_dir, **options)
    try:
        yield procs
    finally:
        procs.close()
    leaks = procs.leaked_secrets()
    assert not leaks, f"secrets leaked into process logs: {leaks} (logs in {log_dir})"


@pytest.fixture
def entry(settings: Settings, secrets: Secrets, tmp_path: Path) -> Iterator[EntryPoints]:
    """Entry points configured for this test's database and topic prefix; every process is ended afterwards."""
    with entry_points(settings, secrets, tmp_path / "logs") as procs:
        yield procs


@pytest.fixture
def empty_database(database_server: DatabaseSettings) -> Iterator[DatabaseSettings]:
    """A database with nothing in it (not even the schema), as on a fresh install; made (and dropped afterwards)
    by the migration role, which owns the schema ``campaigns migrate`` creates, as ``make services`` sets it up."""
    name = f"campaigns_empty_{uuid.uuid4().hex[:10]}"
    admin = psycopg2.connect(database_server.for_migrations().model_copy(update={"name": "postgres"}).dsn())
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    try:
        yield database_server.model_copy(update={"name": name})
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture
def live_datadir(settings: Settings) -> Iterator[Path]:
    """The default data dir of this test's live app (``<tmp>/campaigns-live/<prefix>campaigns-live``), removed
    afterwards; the test checks it is the one used when nothing is configured."""
    path = Path(tempfile.gettempdir()) / "campaigns-live" / settings.kafka.topic("campaigns-live")
    yield path
    shutil.rmtree(path, ignore_errors=True)


# --- reading what happened ---------------------------------------------------------------------------------


def query(settings: Settings, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg2.connect(settings.database.dsn()) as conn, conn.cursor() as cur:
        cur.execute(sql, params)
        rows = cur.fetchall() if cur.description else []
    conn.close()
    return rows


def campaign_status(settings: Settings, campaign_id: str) -> str:
    return query(settings, "SELECT status FROM campaigns WHERE id = %s", campaign_id)[0][0]


def wait_finished(settings: Settings, campaign_id: str, *, timeout: float, procs: EntryPoints) -> str:
    """Wait (bounded) for a terminal campaign state; on timeout, say what the processes logged."""
    try:
        return wait_for(lambda: (s := campaign_status(settings, campaign_id)) in FINISHED and s, timeout=timeout,
                        interval=0.25, what=f"campaign {campaign_id} finished")
    except AssertionError as exc:
        tails = {p.name: p.log_text()[-1500:] for p in procs.procs}
        raise AssertionError(f"{exc}; crashes: {procs.crashed_stages()[-5:]}; logs: {tails}") from None


def total_recipients(settings: Settings, campaign_id: str) -> int:
    return int(query(settings, "SELECT total_recipients FROM campaigns WHERE id = %s", campaign_id)[0][0])


def recipient_counts(settings: Settings, campaign_id: str) -> dict[str, int]:
    rows = query(settings, "SELECT status, count(*) FROM campaign_recipient_log WHERE campaign_id = %s "
                 "GROUP BY status", campaign_id)
    return {status: int(n) for status, n in rows}


def analytics_totals(settings: Settings, campaign_id: str) -> dict[str, int]:
    """The running-totals row of ``campaign_analytics`` (the authority the live view must match)."""
    rows = query(settings, "SELECT sent, failed, retried, skipped, cancelled, delivered, read, clicked, bounced "
                 "FROM campaign_analytics WHERE campaign_id = %s AND window_start IS NULL", campaign_id)
    names = ("sent", "failed", "retried", "skipped", "cancelled", "delivered", "read", "clicked", "bounced")
    return dict(zip(names, map(int, rows[0]), strict=True)) if rows else {}


def unpublished_outbox(settings: Settings) -> int:
    return int(query(settings, "SELECT count(*) FROM outbox WHERE published_at IS NULL")[0][0])


def campaign_events(settings: Settings) -> list[dict[str, Any]]:
    """Every CampaignEvent on ``campaign.events`` (decoded), in partition order."""
    codec = get_codec()
    records = consume_to_end(settings.kafka.bootstrap_servers, settings.kafka.topic("campaign.events"))
    return [codec.decode(record.value(), "CampaignEvent") for record in records]


def event_types(settings: Settings, campaign_id: str) -> list[str]:
    return [e["event_type"] for e in campaign_events(settings) if e["campaign_id"] == campaign_id]


def outbox_events(settings: Settings, campaign_id: str) -> list[tuple[str, str]]:
    """(event_id, event_type) of the campaign's ``campaign.events`` outbox rows, in id order."""
    return [(str(event_id), event_type) for event_id, event_type in query(
        settings, "SELECT event_id::text, event_type FROM outbox WHERE topic = 'campaign.events' AND key = %s "
        "ORDER BY id", campaign_id)]


_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>[^}]*)\})?\s+(?P<value>\S+)")


def scrape(port: int, name: str) -> dict[str, float]:
    """Samples of metric ``name`` on ``127.0.0.1:port/metrics``: labels text -> value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    out = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match and match["name"] == name:
            out[match["labels"] or ""] = float(match["value"])
    return out


def metrics_up(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


def get_json(url: str, timeout: float = 2.0) -> tuple[int, Any]:
    """(status, JSON body) of a GET; (0, None) when nothing answers yet."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, None
    except OSError:
        return 0, None
