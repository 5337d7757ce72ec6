"""Doc tests: the commands of README.md's "Using it" block and the recipes of docs/runbook.md run as written,
in the order a user types them, as subprocesses on the real services.

The commands are parsed from the documents themselves, so a document and the CLI cannot drift apart: a
renamed option, a command that no longer exists or a new recipe nobody runs fails here. Substitutions are
the ones a user makes: ``ID`` (and ``0b7e...``) is the id ``create`` printed, ``...`` a time or a file,
``KIND``/``R``/``B``/``N`` values; the environment only points the commands at this test's database, topic
prefix and free ports (``CAMPAIGNS_*``, as README's Configuration describes). Long-running commands
(``worker``, ``status --watch``, the simulator) run in the background with deadlines.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg2
import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, ConfigResource

from app.cli import build_parser
from campaigns.settings import DatabaseSettings, Settings
from producers.commands import SigningKey, send_command
from producers.kafka import KafkaProducer
from producers.operate import dead_letters, rejected_commands
from tests.conftest import CI, _delete_topics_with_prefix
from tests.entrypoints.conftest import (
    FINISHED,
    REPO_ROOT,
    EntryPoints,
    analytics_totals,
    campaign_status,
    entry_points,
    metrics_up,
    query,
    recipient_counts,
    scrape,
    unpublished_outbox,
)
from tests.faults.history import analytics_consumed
from tests.faults.procs import Proc, Secrets, free_port
from tests.helpers import wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]

README = REPO_ROOT / "README.md"
RUNBOOK = REPO_ROOT / "docs" / "runbook.md"
KAFKA_LIBS = REPO_ROOT / "ops" / "kafka" / ".cache" / "libs"
DOC_BOOTSTRAP = "127.0.0.1:19092"  # the address the documents show


# --- parsing the documents ---------------------------------------------------------------------------------


def _block_commands(block: str) -> list[str]:
    """The commands of a shell block: comments and blank lines dropped, ``\\`` continuations joined."""
    commands, pending = [], ""
    for line in textwrap.dedent(block).splitlines():
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        line = pending + line
        pending = ""
        code = line.split(" #", 1)[0].strip() if not line.lstrip().startswith("#") else ""
        if code:
            commands.append(code)
    return commands


def readme_commands() -> list[list[str]]:
    """The "Using it" block of README.md, one argv per line."""
    section = README.read_text().split("\n## Using it\n", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block, "README.md: no ```sh block under '## Using it'"
    return [shlex.split(command) for command in _block_commands(block[1])]


_FENCE = re.compile(r"^([ \t]*)```[a-z]*\n(.*?)^\1```", re.S | re.M)
_COMMAND_SPAN = re.compile(r"^(campaigns |make |http://|DELETE |VACUUM$|CAMPAIGNS_[A-Z_]+$|--rate \d+ --burst \d+$)")


def runbook_commands() -> list[tuple[str, str]]:
    """docs/runbook.md's commands in document order, as (context, command).

    Commands are the shell blocks' lines and the inline code spans that are commands (``campaigns ...``,
    ``make ...``, a URL, SQL, a ``CAMPAIGNS_*`` variable to set). An option span after a command in the same
    bullet or paragraph (``--json``, ``--type PAUSED``) is that command with the option added. The context is the
    section title, and for the ``--rate R --burst B`` cells of the channel-limits table, the table row's channel.
    """
    text = RUNBOOK.read_text()
    out: list[tuple[str, str]] = []
    section = ""
    position = 0
    for fence in [*_FENCE.finditer(text), None]:
        prose = text[position:fence.start() if fence else len(text)]
        last_command = None
        for line in prose.splitlines():
            if line.startswith("## "):
                section = line[3:].strip()
            if not line.strip() or re.match(r"\s*(- |#|\||\d+\. )", line):
                last_command = None  # a new bullet, paragraph, heading or table row
            row_channel = line.split("|")[1].strip().lower() if line.startswith("| ") else ""
            for span in re.findall(r"`([^`\n]+)`", line):
                if _COMMAND_SPAN.match(span):
                    out.append((row_channel if span.startswith("--rate") else section, span))
                    if span.startswith("campaigns "):
                        last_command = span
                elif span.startswith("--") and last_command:
                    out.append((section, f"{last_command} {span}"))
        if fence is None:
            break
        out.extend((section, command) for command in _block_commands(fence[2]))
        position = fence.end()
    return out


def test_the_documents_parse_into_commands():
    """The parsers find what the documents show (so the scenarios below cannot pass on an empty list)."""
    readme = readme_commands()
    assert readme[0] == [".venv/bin/campaigns", "migrate"] and len(readme) >= 15
    runbook = [command for _, command in runbook_commands()]
    assert "campaigns status ID --watch" in runbook and "make clean" in runbook
    assert sum(c.startswith("campaigns replay") for c in runbook) == 5
    channels = [context for context, command in runbook_commands() if command.startswith("--rate")]
    assert channels[:2] == ["whatsapp", "sms, long code (us 10dlc)"], channels


def setting_default(variable: str) -> Any:
    """The default of the setting a ``CAMPAIGNS_*`` variable sets (AssertionError if no setting has that name)."""
    path = variable.removeprefix("CAMPAIGNS_").lower().split("__")
    value: Any = Settings.model_construct()
    for name in path:
        fields = type(value).model_fields
        assert name in fields, f"{variable}: no setting {name!r} (campaigns/settings.py has {sorted(fields)})"
        value = fields[name].get_default(call_default_factory=True)
    return value


def _value(text: str) -> Any:
    """A default as README shows it: JSON when it parses (numbers, lists), else the text."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def test_readme_configuration_names_real_settings_with_their_defaults():
    """Every variable of README's Configuration table is a setting, and a default shown is the setting's."""
    section = README.read_text().split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    checked = 0
    for row in (line for line in section.splitlines() if line.startswith("| `CAMPAIGNS_")):
        names_cell, default_cell = row.split("|")[1:3]
        names, variable = [], ""
        for token in re.findall(r"`([^`]+)`", names_cell):
            variable = token if token.startswith("CAMPAIGNS_") else variable.rsplit("__", 1)[0] + token
            names.append(variable)
        defaults = re.findall(r"`([^`]+)`", default_cell)
        for index, name in enumerate(names):
            if name in ("CAMPAIGNS_ACTOR", "CAMPAIGNS_TOKEN", "CAMPAIGNS_TOKEN_FILE"):  # the CLI's own, not settings
                continue
            if name.endswith("*"):  # a whole group, e.g. CAMPAIGNS_PROVIDERS__*
                assert name.removesuffix("__*").removeprefix("CAMPAIGNS_").lower() in Settings.model_fields, name
                continue
            default = setting_default(name)
            checked += 1
            if len(defaults) == len(names):
                shown = _value(defaults[index])
                actual = default.get_secret_value() if hasattr(default, "get_secret_value") else default
                actual = list(actual) if isinstance(actual, tuple) else actual
                assert shown == actual, f"README: {name} defaults to {shown!r}, the setting to {actual!r}"
    assert checked >= 10


# --- shared steps ------------------------------------------------------------------------------------------


def inject_poison(settings: Settings, channel: str = "sms") -> None:
    """One record that is not Avro on ``campaign.messages.<channel>``: the sender dead-letters it (undecodable)."""
    producer = Producer({"bootstrap.servers": settings.kafka.bootstrap_servers})
    producer.produce(settings.kafka.topic(f"campaign.messages.{channel}"), b"\x00not avro", b"poison")
    assert producer.flush(30) == 0


def send_refused_command(entry: EntryPoints, campaign_id: str, principal: str) -> None:
    """An upstream system acting as ``principal`` (without the permission) asks to pause the campaign: the worker's
    commands stage refuses it (``permission_denied``) onto ``campaign.commands.rejected``. Its command key comes
    from ``campaigns command-key create``, as an upstream system's does."""
    settings = entry.settings
    key_id, secret = entry.cli("command-key", "create", principal).stdout.split()
    producer = KafkaProducer(settings.kafka)
    try:
        send_command(producer, settings, {"command_type": "PAUSE", "campaign_id": campaign_id,
                                          "principal": principal}, key=SigningKey(key_id, secret))
    finally:
        producer.close()
    wait_for(lambda: rejected_commands(settings, campaign=campaign_id), timeout=60, interval=0.25,
             what="the refused command on campaign.commands.rejected")


def wait_dead_lettered(settings: Settings, worker: Proc | None) -> None:
    """Wait (bounded) for an undecodable dead letter; on timeout, say where the sender stands."""
    try:
        wait_for(lambda: dead_letters(settings, reason="undecodable"), timeout=60, interval=0.1,
                 what="the poison record dead-lettered")
    except AssertionError as exc:
        lag = scrape(worker.metrics_port, "campaigns_consumer_lag") if worker and worker.alive else None
        tail = worker.log_text()[-3000:] if worker else ""
        raise AssertionError(f"{exc}; consumer lag {lag}; worker log:\n{tail}") from None


def check_listing(args: list[str], stdout: str) -> Any:
    """``events list`` / ``rejected list`` output: JSON with ``--json``, else records and a summary line."""
    if "--json" in args:
        records = json.loads(stdout)
        assert isinstance(records, list), stdout
        return records
    what = "events" if args[0] == "events" else "rejected commands"
    summary = re.search(rf"^(\d+) {what}(: (.*))?$", stdout, re.M)
    assert summary, stdout
    return {k: int(v) for k, v in re.findall(r"(\w+) (\d+)", summary[3] or "")}


def topic_config(settings: Settings, topic: str, key: str) -> str:
    admin = AdminClient({"bootstrap.servers": settings.kafka.bootstrap_servers})
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    configs = admin.describe_configs([resource])[resource].result(timeout=30)
    return configs[key].value


def start_watch(entry: EntryPoints, args: list[str], **env: str) -> Proc:
    return entry.start("status-watch", *args, **env)


def watch_shows(proc: Proc, text: str) -> None:
    """``status --watch`` (still running) has printed ``text``."""
    try:
        wait_for(lambda: text in proc.log_text() or not proc.alive, timeout=30, interval=0.25,
                 what=f"status --watch showing {text!r}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; its output:\n{proc.log_text()[-2000:]}") from None
    assert text in proc.log_text() and proc.alive, proc.log_text()[-2000:]


def watch_output_ends(proc: Proc, status: str, timeout: float = 30.0) -> str:
    """``status --watch`` exits 0 by itself once the campaign is ``status``; returns its output."""
    try:
        proc.popen.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"status --watch still running {timeout}s after the campaign became {status}:\n"
                             f"{proc.log_text()[-2000:]}") from None
    text = proc.log_text()
    assert proc.popen.returncode == 0, text[-2000:]
    assert re.findall(r"^status\s+(\w+)", text, re.M)[-1] == status, text[-2000:]
    return text


def no_stage_restarts(entry: EntryPoints, *workers: Proc) -> None:
    for worker in workers:
        if worker.alive:
            restarts = scrape(worker.metrics_port, "campaigns_stage_restarts_total")
            assert all(v == 0 for v in restarts.values()), f"{worker.name}: stages restarted: {restarts}"
    assert entry.crashed_stages() == []


# --- README.md ---------------------------------------------------------------------------------------------


@pytest.fixture
def fresh_install(settings: Settings, empty_database: DatabaseSettings, secrets: Secrets,
                  tmp_path: Path) -> Iterator[EntryPoints]:
    """A user's environment on a fresh install: an empty database, the default partition count, no provider
    credentials; only addresses, the topic prefix and free ports differ from the defaults."""
    user = settings.model_copy(update={
        "database": empty_database, "kafka": settings.kafka.model_copy(update={"partitions": 6}),
    })
    # README's commands bring their own API token (`export CAMPAIGNS_TOKEN=$(... bootstrap ...)`), none the harness's.
    with entry_points(user, secrets, tmp_path / "logs", canaries=False, auto_token=False) as procs:
        yield procs


@dataclass
class ReadmeUser:
    """Types README's commands one after the other; long-running ones go to "another terminal" (background)."""

    entry: EntryPoints
    campaign_id: str | None = None
    background: dict[str, Proc] = field(default_factory=dict)

    @property
    def settings(self) -> Settings:
        return self.entry.settings

    def substitute(self, arg: str) -> str:
        if arg == "ID":
            assert self.campaign_id, "README uses ID before `create` printed one"
            return self.campaign_id
        if arg == "...":  # --to-time ...: now (or the end of the documented day if the clock is before it)
            return max(datetime.now(UTC), datetime(2026, 11, 29, 10, 15, tzinfo=UTC)).isoformat()
        return arg

    def type(self, argv: list[str]) -> None:
        line = " ".join(argv)
        program, args = argv[0], [self.substitute(a) for a in argv[1:]]
        if program == "export":
            self.export(line)
        elif program == ".venv/bin/python" and args[:2] == ["-m", "simulator"]:
            self.simulator(args)
        elif program != ".venv/bin/campaigns":
            raise AssertionError(f"README: no doc test for {line!r} (teach tests/entrypoints/test_docs.py)")
        elif args[0] == "worker":
            self.worker(args)
        elif args[0] == "status" and "--watch" in args:
            self.watch(args)
        elif args[0] == "bench":
            # Not run: the harness takes minutes (and first needs `make bench`'s extras); tests/e2e/test_bench_smoke.py
            # runs its quick scenario. `campaigns bench` hands everything after it to the harness, whose parser
            # must accept the documented arguments.
            from bench.cli import _parser as bench_parser

            assert "bench" in build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
            bench_parser().parse_args(args[1:])
        else:
            self.command(args)

    def export(self, line: str) -> None:
        """``export NAME=$(.venv/bin/campaigns ...)``: the command's output becomes NAME for every later command."""
        match = re.fullmatch(r"export ([A-Z_]+)=\$\((.+)\)", line)
        assert match, f"README: no doc test for {line!r} (teach tests/entrypoints/test_docs.py)"
        inner = shlex.split(match[2])
        assert inner[0] == ".venv/bin/campaigns", line
        value = self.entry.cli(*[self.substitute(a) for a in inner[1:]]).stdout.strip()
        assert value, f"{line}: printed nothing"
        self.entry.extra_env[match[1]] = value

    def simulator(self, args: list[str]) -> None:
        # The documented default ports (18080, 18025, where the provider settings point) may be taken on a
        # shared machine: the simulator gets free ones and the commands typed after it are pointed there.
        http_port, smtp_port = free_port(), free_port()
        proc = self.entry.spawn("simulator", [sys.executable, *args, "--http-port", str(http_port),
                                              "--smtp-port", str(smtp_port)])
        wait_for(lambda: get_ok(f"http://127.0.0.1:{http_port}/_control/health") or not proc.alive, timeout=30,
                 interval=0.1, what="the simulator up")
        assert proc.alive, proc.log_text()[-3000:]
        self.entry.point_providers_at(f"127.0.0.1:{http_port}", smtp_port)
        self.background["simulator"] = proc

    def worker(self, args: list[str]) -> None:
        port = free_port()
        proc = self.entry.start("worker", *args, CAMPAIGNS_METRICS_PORT=str(port))
        proc.metrics_port = port
        wait_for(lambda: metrics_up(port) or not proc.alive, timeout=60, interval=0.2, what="the worker's /metrics")
        assert proc.alive, proc.log_text()[-3000:]
        self.background["worker"] = proc

    def watch(self, args: list[str]) -> None:
        proc = self.background["watch"] = start_watch(self.entry, args)
        settings, campaign_id = self.settings, self.campaign_id
        # The campaign runs: every recipient expanded (about 38,000, as README says) and sends flowing.
        wait_for(lambda: query(settings, "SELECT expansion_done FROM campaigns WHERE id = %s", campaign_id)[0][0],
                 timeout=120, interval=0.25, what="expansion done")
        total = int(query(settings, "SELECT total_recipients FROM campaigns WHERE id = %s", campaign_id)[0][0])
        assert 37_000 <= total <= 39_000, f"README says about 38,000 recipients; the campaign has {total}"
        wait_for(lambda: recipient_counts(settings, campaign_id).get("sent", 0) >= 50, timeout=60, interval=0.25,
                 what="messages sent through the simulator")
        watch_shows(proc, "status     active")

    def command(self, args: list[str]) -> None:
        settings, name = self.settings, args[0]
        if args[:2] == ["dlq", "list"]:
            inject_poison(settings)  # something for the dead-letter commands to find
            wait_dead_lettered(settings, self.background.get("worker"))
        elif name == "events":  # the worker's relay publishes within moments of each change
            wait_for(lambda: unpublished_outbox(settings) == 0, timeout=30, interval=0.25, what="outbox published")
        elif name == "rejected":
            self.entry.cli("principal", "add", "bob", "--role", "auditor")
            send_refused_command(self.entry, self.campaign_id, "bob")
        result = self.entry.cli(*args, timeout=300)
        if name == "migrate":
            assert query(settings, "SELECT count(*) FROM alembic_version")[0][0] == 1
        elif name == "seed":
            assert json.loads(result.stdout)["customers"] == 100_000
        elif args[:2] == ["import", "customers"]:  # examples/customers.csv: four new customers
            assert json.loads(result.stdout) | {"seconds": 0} == {
                "kind": "customers", "rows": 4, "inserted": 4, "updated": 0, "unchanged": 0, "seconds": 0}
            assert query(settings, "SELECT first_name, attributes FROM customers WHERE external_ref = 'crm-1001'") == [
                ("Lucía", {"plan": "gold"})]
        elif args[:2] == ["import", "segment"]:
            got = json.loads(result.stdout)
            assert (got["segment"], got["created"], got["inserted"]) == ("vip", True, 2), got
        elif name == "create":
            self.campaign_id = str(uuid.UUID(result.stdout.strip()))
        elif name == "schedule":
            assert campaign_status(settings, self.campaign_id) in ("scheduled", "active")
        elif name in ("pause", "resume", "cancel"):
            expected = {"pause": "paused", "resume": "active", "cancel": "cancelled"}[name]
            assert campaign_status(settings, self.campaign_id) == expected
            if name == "cancel":
                watch_output_ends(self.background["watch"], "cancelled")
        elif args[:2] == ["dlq", "list"]:
            assert re.search(r"^\d+ dead letters: .*undecodable \d+", result.stdout, re.M), result.stdout
        elif args[:2] == ["dlq", "redrive"]:
            assert re.match(r"[1-9]\d* dead letters matched; re-drove [1-9]", result.stdout), result.stdout
        elif name == "events":
            types = check_listing(args, result.stdout)
            assert set(types) == {"CREATED", "SCHEDULED", "ACTIVATED", "PAUSED", "RESUMED", "CANCELLED"}, types
        elif name == "rejected":
            records = check_listing(args, result.stdout)
            assert [r["reason"] for r in records] == ["permission_denied"], records
        elif name == "audit":  # the README's admin did all of it, under its own name
            assert re.search(r"^\S+\s+root\s+cancel_campaign\s", result.stdout, re.M), result.stdout
        elif name == "replay":
            since = datetime.fromisoformat(args[args.index("--from-time") + 1])
            sent = r"[1-9]\d*" if since < datetime.now(UTC) else r"\d+"  # this run's messages are in the range
            assert re.match(rf"read \d+ records from \S+; would re-drive {sent}$", result.stdout.strip()), result.stdout


def test_readme_using_it_runs_as_written(fresh_install: EntryPoints):
    user = ReadmeUser(fresh_install)
    for argv in readme_commands():
        user.type(argv)
    assert set(user.background) == {"simulator", "worker", "watch"}, "README lost a long-running step"
    worker = user.background["worker"]
    no_stage_restarts(fresh_install, worker)
    assert worker.terminate(timeout=45) == 0, worker.log_text()[-3000:]


# --- docs/runbook.md ---------------------------------------------------------------------------------------

# Recipes that act on the machine's shared services; running them would stop or wipe them for everyone.
NOT_RUN = {
    "make services": "starts the shared Kafka/PostgreSQL (they are running; tests/integration/test_services_smoke.py)",
    "make services-stop": "stops the shared services every other test and engineer uses",
    "make clean": "deletes every topic and the database of the shared services",
}


@dataclass
class RunbookState:
    entry: EntryPoints
    settings: Settings
    tmp_path: Path
    segments: list[int] = field(default_factory=list)
    campaign_id: str | None = None
    worker: Proc | None = None
    watch: Proc | None = None
    extra_prefixes: list[str] = field(default_factory=list)
    done: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def actor_env(self) -> dict[str, str]:
        return {"CAMPAIGNS_ACTOR": "oncall"}  # the runbook's commands leave --as to $CAMPAIGNS_ACTOR

    def cli(self, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        return self.entry.cli(*args, **self.actor_env, **kwargs)

    def start_worker(self, **env: str) -> Proc:
        port = free_port()
        worker = self.entry.start("worker", "worker", CAMPAIGNS_METRICS_PORT=str(port), **env)
        worker.metrics_port = port
        wait_for(lambda: metrics_up(port) or not worker.alive, timeout=60, interval=0.2, what="worker /metrics")
        assert worker.alive, worker.log_text()[-3000:]
        self.worker = worker
        return worker

    def new_campaign(self, segments: list[int] | None = None) -> str:
        """The SMS example (its template was approved at set-up) to the last of ``segments`` (default: the 3,000
        seeded customers'), scheduled now."""
        payload = json.loads((REPO_ROOT / "examples" / "campaign-sms.json").read_text())
        payload["segments"] = [(segments or self.segments)[-1]]
        path = self.tmp_path / f"campaign-{uuid.uuid4().hex[:6]}.json"
        path.write_text(json.dumps(payload))
        campaign_id = self.cli("create", str(path)).stdout.strip()
        self.cli("schedule", campaign_id, "--at", "now")
        self.campaign_id = campaign_id
        return campaign_id

    def sending(self, at_least: int = 20) -> None:
        wait_for(lambda: recipient_counts(self.settings, self.campaign_id).get("sent", 0) >= at_least, timeout=60,
                 interval=0.2, what=f"campaign {self.campaign_id} sending")

    def substitute(self, command: str) -> list[str]:
        argv = shlex.split(command)
        subs = {"ID": self.campaign_id, "0b7e...": self.campaign_id, "KIND": "sms", "R": "50", "B": "10",
                "N": "100", "...": str(REPO_ROOT / "examples" / "template-sms.json")}
        if "redrive" in argv:
            subs["R"] = "undecodable"
        return [subs.get(a) or a for a in argv]

    def java(self, argv: list[str]) -> subprocess.CompletedProcess[str]:
        """A Kafka tool from the jars `make services` fetched, pointed at this test's broker and topics."""
        out = []
        for previous, arg in zip(["", *argv], argv, strict=False):
            if arg == DOC_BOOTSTRAP:
                arg = self.settings.kafka.bootstrap_servers
            elif previous in ("--topic", "--entity-name"):
                arg = self.settings.kafka.topic(arg)
            out.append(arg)
        return subprocess.run(out, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)


WATCHED_RATE = 20  # messages/s of the watched campaign's channel (see run_recipe)


def test_runbook_recipes_run_as_written(settings: Settings, secrets: Secrets, tmp_path: Path):
    settings = settings.model_copy(update={"kafka": settings.kafka.model_copy(update={"partitions": 6})})
    commands = runbook_commands()
    # "set 10000 for recovery in about 10 s" (A worker crashed): the crash below recovers that fast.
    with entry_points(settings, secrets, tmp_path / "logs", CAMPAIGNS_KAFKA__SESSION_TIMEOUT_MS="10000") as entry:
        state = RunbookState(entry, settings, tmp_path)
        try:
            entry.cli("principal", "add", "oncall", "--role", "admin")  # the operator the runbook is for
            entry.cli("template", "add", str(REPO_ROOT / "examples" / "template-sms.json"), "--approve")
            state.segments = json.loads(entry.cli("seed", "--customers", "3000").stdout)["segments"]
            entry.start_simulator()
            for context, command in commands:
                run_recipe(state, context, command)
            no_stage_restarts(entry, *(p for p in entry.procs if p.name.startswith("worker")))
        finally:
            for prefix in state.extra_prefixes:
                _delete_topics_with_prefix(settings.kafka.bootstrap_servers, prefix)
    print("runbook recipes run:", *state.done, sep="\n  ")
    print("not run:", *(f"{c}: {why}" for c, why in {**NOT_RUN, **state.skipped}.items()), sep="\n  ")
    assert not (CI and state.skipped), f"recipes not run in CI: {state.skipped}"


def run_recipe(state: RunbookState, context: str, command: str) -> None:
    entry, settings = state.entry, state.settings
    argv = state.substitute(command)
    if command in NOT_RUN:
        return
    if re.fullmatch(r"CAMPAIGNS_[A-Z_]+", command):
        # A variable the runbook tells operators to set: it must be one the programs read.
        if command not in ("CAMPAIGNS_ACTOR", "CAMPAIGNS_TOKEN", "CAMPAIGNS_TOKEN_FILE"):  # the CLI's; others: settings
            setting_default(command)
        if command == "CAMPAIGNS_KAFKA__RETENTION_MS":  # "recreate with a shorter CAMPAIGNS_KAFKA__RETENTION_MS"
            prefix = f"t{uuid.uuid4().hex[:10]}."
            state.extra_prefixes.append(prefix)
            entry.cli("topics", "create", CAMPAIGNS_KAFKA__TOPIC_PREFIX=prefix, CAMPAIGNS_KAFKA__RETENTION_MS="3600000")
            assert topic_config(settings, f"{prefix}campaign.messages.sms", "retention.ms") == "3600000"
        state.done.append(command)
        return
    if command.startswith("--rate"):  # a "start with" cell of the channel-limits table
        kind = next(k for k in ("whatsapp", "sms", "email") if context.startswith(k))
        entry.cli("channel", "add", kind, *argv)
        rate, burst = float(argv[1]), int(argv[3])
        assert query(settings, "SELECT rate_per_s, burst FROM channels WHERE kind = %s AND enabled",
                     kind) == [(rate, burst)]
        state.done.append(f"campaigns channel add {kind} {command}")
        return
    if command.startswith("http://"):
        assert command == "http://127.0.0.1:9108/metrics", command
        assert state.worker is not None
        assert scrape(state.worker.metrics_port, "campaigns_messages_sent_total"), "no send counter on /metrics"
        state.done.append(command)
        return
    if command.startswith(("DELETE ", "VACUUM")):
        conn = psycopg2.connect(settings.database.dsn())
        conn.autocommit = True  # VACUUM cannot run in a transaction (and `with conn` would open one)
        try:
            with conn.cursor() as cur:
                cur.execute(command)
        finally:
            conn.close()
        state.done.append(command)
        return
    if argv[0] == "make":
        result = subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr
        state.done.append(command)
        return
    if argv[0] == "java":
        if shutil.which("java") is None or not KAFKA_LIBS.is_dir():
            state.skipped[command] = "no java or no Kafka jars here (`make services` fetches them)"
            return
        result = state.java(argv)
        assert result.returncode == 0, f"{command}\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
        if "--add-config" in argv:
            key, _, value = argv[argv.index("--add-config") + 1].partition("=")
            topic = settings.kafka.topic(argv[argv.index("--entity-name") + 1])
            wait_for(lambda: topic_config(settings, topic, key) == value, timeout=30, interval=0.25,
                     what=f"{topic} {key}={value}")  # the broker applies a config change asynchronously
        state.done.append(command)
        return
    assert argv[0] == "campaigns", f"runbook: no doc test for {command!r} (teach tests/entrypoints/test_docs.py)"
    args = argv[1:]
    if args[:2] == ["channel", "add"]:
        entry.cli(*args)
        assert query(settings, "SELECT rate_per_s, burst FROM channels WHERE kind = 'sms' AND enabled") == [(50, 10)]
    elif args[0] == "status" and "--watch" in args:
        # The campaign watched, paused, resumed and cancelled (the 3,000 customers' segment, ~1,150 recipients) goes
        # out at 20/s: it runs ~1 min, so it is still active when the recipes reach `cancel` (~20 s after it starts
        # on a busy 2-core machine). At the runbook's 100/s it took ~12 s and could complete before `pause` on a slow
        # machine. The channel's rate goes back to the runbook's short-code row after the cancel, for the crash
        # recipe's campaign, which must complete.
        entry.cli("channel", "add", "sms", "--rate", str(WATCHED_RATE), "--burst", str(WATCHED_RATE))
        state.start_worker()
        state.new_campaign()
        args = state.substitute(command)[1:]  # ID is known now
        state.watch = start_watch(entry, args, **state.actor_env)
        state.sending()
        watch_shows(state.watch, "status     active")
    elif args[0] in ("pause", "resume", "cancel"):
        state.cli(*args)
        expected = {"pause": "paused", "resume": "active", "cancel": "cancelled"}[args[0]]
        assert campaign_status(settings, state.campaign_id) == expected
        if args[0] == "cancel":
            watch_output_ends(state.watch, "cancelled")

            def cancelled_and_settled() -> bool:
                counts = recipient_counts(settings, state.campaign_id)
                return counts.get("cancelled", 0) > 0 and not {"claimed", "retrying"} & set(counts)

            wait_for(cancelled_and_settled, timeout=60, interval=0.25,
                     what="recipients not yet sent to recorded cancelled, nothing left in flight")
            entry.cli("channel", "add", "sms", "--rate", "100", "--burst", "20")
    elif args[:2] == ["events", "list"]:
        wait_for(lambda: unpublished_outbox(settings) == 0, timeout=30, interval=0.25, what="outbox published")
        listed = check_listing(args, state.cli(*args).stdout)
        if "--json" in args:
            assert listed and {e["campaign_id"] for e in listed} == {state.campaign_id}, listed
        elif "--type" not in args:
            assert {"CREATED", "SCHEDULED", "ACTIVATED"} <= set(listed), listed
    elif args[:2] == ["rejected", "list"]:
        if not rejected_commands(settings, campaign=state.campaign_id):
            entry.cli("principal", "add", "auditor-1", "--role", "auditor")
            send_refused_command(entry, state.campaign_id, "auditor-1")
        listed = check_listing(args, state.cli(*args).stdout)
        if "--json" in args:
            assert [r["reason"] for r in listed] == ["permission_denied"], listed
        else:
            assert listed == {"permission_denied": 1}, listed
    elif args[:2] == ["template", "add"]:
        before = int(query(settings, "SELECT max(id) FROM templates")[0][0])
        assert int(state.cli(*args).stdout.strip()) > before
    elif args[0] == "status":
        # "A worker crashed ... start it again. Check: `campaigns status ID` shows `claimed` going to zero after
        # the lease." A worker is SIGKILLed mid-campaign and another started with a short lease.
        state.new_campaign()
        args = state.substitute(command)[1:]
        state.sending()
        state.worker.kill()
        state.start_worker(CAMPAIGNS_SENDER__CLAIM_LEASE_S="2")

        # Waited for in the database (each `campaigns status` is a process start, a second of CPU the recovering
        # worker would share), then checked with the recipe's command itself.
        wait_for(lambda: campaign_status(settings, state.campaign_id) in FINISHED, timeout=120, interval=0.25,
                 what="the campaign finished after the crash")
        status = json.loads(state.cli(*args, "--json").stdout)
        assert status["status"] == "completed" and not status["recipients"].get("claimed"), status
        assert status["terminal"] == status["total_recipients"], status
    elif args[:2] == ["dlq", "list"]:
        if not dead_letters(settings, reason="undecodable"):
            inject_poison(settings)
            wait_dead_lettered(settings, state.worker)
        expanded = [[a for a in args if not a.startswith("[") and not a.endswith("]")]]  # no optional filters
        optional = re.findall(r"\[([^]]+)\]", command.replace("ID", state.campaign_id or "ID"))
        expanded += [[*expanded[0], *shlex.split(o)] for o in optional]  # each filter alone
        for variant in expanded:
            result = state.cli(*variant)
            assert re.search(r"^\d+ dead letters: ", result.stdout, re.M), result.stdout
        assert "undecodable 1" in state.cli("dlq", "list", "--reason", "undecodable").stdout
    elif args[:2] == ["dlq", "redrive"]:
        result = state.cli(*args)
        assert result.stdout.startswith("1 dead letters matched; re-drove 1"), result.stdout
    elif args[0] == "replay":
        topic = args[args.index("--topic") + 1]
        def caught_up() -> bool:  # the worker's default analytics: the Faust app's forwarder, then the app
            return analytics_consumed(settings)

        def counted_as_logged() -> dict[str, int] | None:
            """The totals once the analytics count what the recipient log holds (the flush follows the lag)."""
            totals = analytics_totals(settings, state.campaign_id)
            logged = dict(query(settings, "SELECT status, count(*) FROM campaign_recipient_log WHERE campaign_id = %s "
                                          "GROUP BY status", state.campaign_id))
            terminal = ("sent", "failed", "skipped", "cancelled")
            return totals if caught_up() and all(totals.get(s, 0) == logged.get(s, 0) for s in terminal) else None

        if topic == "delivery.outcomes":
            before = wait_for(counted_as_logged, timeout=60, interval=0.25,
                              what="analytics caught up with the recipient log before the replay")
        result = state.cli(*args)
        assert re.match(r"read \d+ records from \S+; (would re-drive|re-drove) \d+", result.stdout), result.stdout
        replayed = int(re.search(r"(\d+)(?: \(campaign .*\))?$", result.stdout.strip())[1])
        if topic == "delivery.outcomes":  # "replayed outcomes are counted once": nothing changes
            assert replayed > 0, result.stdout
            wait_for(caught_up, timeout=60, interval=0.25, what="analytics consumed the replayed outcomes")
            assert analytics_totals(settings, state.campaign_id) == before
        if "--to" in args:
            assert replayed >= 1, result.stdout
    else:
        raise AssertionError(f"runbook: no doc test for {command!r} (teach tests/entrypoints/test_docs.py)")
    state.done.append(command)


def get_ok(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


def test_runbook_commands_are_all_handled():
    """Every command the runbook shows is run above or listed in NOT_RUN with the reason (no silent gaps)."""
    commands = [command for _, command in runbook_commands()]
    for command in NOT_RUN:
        assert command in commands, f"NOT_RUN lists {command!r}, which the runbook no longer shows"
    unknown = [c for c in commands if c not in NOT_RUN and not c.startswith(
        ("campaigns ", "java ", "make services-status", "http://", "DELETE ", "VACUUM", "CAMPAIGNS_", "--rate"))]
    assert unknown == []

