"""The ``campaigns`` command line.

Exit codes: 0 ok, 1 unexpected failure, 2 invalid input, 3 permission denied, 4 not found or transition
not allowed, 5 a service (Kafka, PostgreSQL) unreachable.

Every command that reads or changes the application's data authenticates with an API token: the
environment variable ``CAMPAIGNS_TOKEN`` (or a file named by ``CAMPAIGNS_TOKEN_FILE``, or ``--token``, which
other users of the machine can see in the process list). The token's principal is the actor, with its role's
permissions; ``--as NAME`` (or ``CAMPAIGNS_ACTOR``) only checks that the token is NAME's. Tokens come from
``campaigns bootstrap NAME`` (the first admin, on a database without principals) and ``campaigns token create
NAME`` (an admin). Infrastructure commands (``migrate``, ``topics create``, ``worker``, ``relay``,
``commands``, ``live``, ``api``, ``demo``, ``bench``) run with the services' own credentials (the database roles,
Kafka) and take no token.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from campaigns.errors import (
    AccessRefused,
    CampaignError,
    NotFound,
    PermissionDenied,
    ServiceUnavailable,
    TransitionNotAllowed,
    ValidationError,
)

if TYPE_CHECKING:
    from campaigns.service import CampaignService

EXIT_OK, EXIT_FAILURE, EXIT_INVALID, EXIT_DENIED, EXIT_NOT_FOUND, EXIT_UNAVAILABLE = 0, 1, 2, 3, 4, 5
ACTOR_ENV = "CAMPAIGNS_ACTOR"
TOKEN_ENV = "CAMPAIGNS_TOKEN"  # noqa: S105 (the variable's name, not a secret)
TOKEN_FILE_ENV = "CAMPAIGNS_TOKEN_FILE"  # noqa: S105

Handler = Callable[[argparse.Namespace], int]


def exit_code_for(error: CampaignError) -> int:
    if isinstance(error, ValidationError):
        return EXIT_INVALID
    if isinstance(error, PermissionDenied):
        return EXIT_DENIED
    if isinstance(error, NotFound | TransitionNotAllowed):
        return EXIT_NOT_FOUND
    if isinstance(error, ServiceUnavailable):
        return EXIT_UNAVAILABLE
    return EXIT_FAILURE


# --- helpers -------------------------------------------------------------------------------------


def _out(text: str) -> None:
    print(text, flush=True)


def _info(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _token(args: argparse.Namespace) -> str:
    """The API token: ``--token``, else $CAMPAIGNS_TOKEN, else the file $CAMPAIGNS_TOKEN_FILE names (read here,
    at the process edge). None of them: :class:`PermissionDenied`, before any service is reached."""
    token = getattr(args, "token", None) or os.environ.get(TOKEN_ENV) or None
    if token is None and os.environ.get(TOKEN_FILE_ENV):
        path = Path(os.environ[TOKEN_FILE_ENV])
        try:
            token = path.read_text(encoding="utf-8").strip() or None
        except OSError as exc:
            raise ValidationError(f"{TOKEN_FILE_ENV}: cannot read {path} ({exc.strerror or exc})") from None
    if token is None:
        raise AccessRefused(
            f"no API token: set {TOKEN_ENV} (or {TOKEN_FILE_ENV}, or pass --token) to the token an admin created "
            "for you with `campaigns token create NAME` (on an empty database, `campaigns bootstrap NAME` creates "
            "the first admin and its token)"
        )
    return token


@contextmanager
def _authenticated(args: argparse.Namespace) -> Iterator[tuple[CampaignService, str]]:
    """A service and the principal the API token authenticates. ``--as``/$CAMPAIGNS_ACTOR, when given, must
    name the same principal (a check, never a way to act as someone else). Invalid settings are reported
    before a missing token (they are what is wrong)."""
    from campaigns.settings import load_settings

    load_settings()
    token = _token(args)
    with _service() as service:
        actor = service.authenticate(token)
        claimed = getattr(args, "actor", None) or os.environ.get(ACTOR_ENV) or None
        if claimed is not None and claimed != actor:
            raise AccessRefused(
                f"--as {claimed} (or {ACTOR_ENV}): the API token belongs to {actor!r}, not {claimed!r}; use "
                f"{claimed}'s own token", claimed,
            )
        yield service, actor


@contextmanager
def _authorized(args: argparse.Namespace, operation: str) -> Iterator[tuple[CampaignService, str]]:
    """:func:`_authenticated`, and the principal holds the permission ``operation`` needs."""
    with _authenticated(args) as (service, actor):
        service.authorize(actor, operation)
        yield service, actor


JSON_MAX_BYTES = 1024 * 1024  # payload and template files: far above any real one (100,000 recipients ~ 1 MiB)
JSON_MAX_DEPTH = 32  # payloads nest 3 levels; the parser itself recurses and would crash near 1,000
JSON_MAX_DIGITS = 40  # no field takes a longer integer (ids are 64-bit: 19 digits)


class _TooManyDigits(ValueError):
    def __init__(self, digits: int) -> None:
        super().__init__(digits)
        self.digits = digits


def _bounded_int(text: str) -> int:
    digits = len(text.lstrip("-"))
    if digits > JSON_MAX_DIGITS:
        raise _TooManyDigits(digits)  # before int(): Python refuses over 4,300 digits, slowly
    return int(text)


def _read_json(path: str) -> Any:
    """The JSON document in ``path``, or a :class:`ValidationError` saying in one line what is wrong: a
    missing or unreadable file, more than ``JSON_MAX_BYTES`` (only that much plus one byte is ever read,
    so ``/dev/zero`` is refused, not slurped), invalid JSON, nesting deeper than ``JSON_MAX_DEPTH``, or an
    integer of more than ``JSON_MAX_DIGITS`` digits."""
    try:
        with Path(path).open("rb") as file:  # read() below is bounded: a device or FIFO has no size to stat
            data = file.read(JSON_MAX_BYTES + 1)
    except FileNotFoundError:
        raise ValidationError(f"{path}: no such file") from None
    except OSError as exc:
        raise ValidationError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    if len(data) > JSON_MAX_BYTES:
        raise ValidationError(f"{path}: larger than {JSON_MAX_BYTES / 2**20:g} MiB; a payload or template file "
                              "is far smaller (a long recipient list belongs in a segment, not in the payload)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValidationError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    try:
        document = json.loads(text, parse_int=_bounded_int)
    except json.JSONDecodeError as exc:
        raise ValidationError(
            f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"
        ) from None
    except _TooManyDigits as exc:
        raise ValidationError(
            f"{path}: an integer of {exc.digits} digits; no field takes more than {JSON_MAX_DIGITS}"
        ) from None
    except RecursionError:
        raise ValidationError(f"{path}: nested more than {JSON_MAX_DEPTH} levels deep") from None
    if _depth_exceeds(document, JSON_MAX_DEPTH):
        raise ValidationError(f"{path}: nested more than {JSON_MAX_DEPTH} levels deep")
    return document


def _depth_exceeds(document: Any, limit: int) -> bool:
    """True when arrays/objects nest more than ``limit`` levels (iterative: no recursion on user input)."""
    stack = [(document, 0)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict | list):
            if depth >= limit:
                return True
            stack.extend((item, depth + 1) for item in (value.values() if isinstance(value, dict) else value))
    return False


def _campaign_id(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise ValidationError(
            f"campaign id: {text!r} is not a UUID (use the id `campaigns create` printed)"
        ) from None


def _parse_at(text: str | None) -> datetime | None:
    """``--at``: ``now``, or an ISO-8601 date-time with a UTC offset; None when not given."""
    if text is None:
        return None
    if text.strip().lower() == "now":
        return datetime.now(UTC)
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValidationError(
            f"--at: {text!r} is not an ISO-8601 date-time "
            "(e.g. 2026-05-01T09:00:00+02:00 or 2026-05-01T07:00:00Z) or 'now'"
        ) from None
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValidationError(f"--at: {text!r} has no UTC offset; add one, e.g. {text}Z or {text}+02:00")
    return moment


@contextmanager
def _service() -> Iterator[CampaignService]:
    """A CampaignService on the configured database; the engine is disposed afterwards."""
    from campaigns.db.engine import make_engine, make_sessionmaker
    from campaigns.service import CampaignService
    from campaigns.settings import load_settings

    engine = make_engine(load_settings().database)
    try:
        yield CampaignService(make_sessionmaker(engine))
    finally:
        engine.dispose()


def _stop_on_signals() -> threading.Event:
    """An event set by Ctrl-C or SIGTERM, so long-running commands stop cleanly (offsets committed)."""
    stop = threading.Event()

    def handler(signum: int, frame: object) -> None:
        _info(f"stopping ({signal.Signals(signum).name}) ...")
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return stop


def _setup_logging() -> None:
    from campaigns.settings import load_settings

    logging.basicConfig(
        level=load_settings().log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


# --- handlers ------------------------------------------------------------------------------------


PROJECT_TABLE = "campaigns"  # a table every revision of the schema has


def cmd_migrate(args: argparse.Namespace) -> int:
    """Upgrade (default: to head), downgrade (an explicit revision and --yes), or stamp a revision.

    Refuses, with exit 2 and what to do: a downgrade without --revision (to ``base`` it drops every
    table), a downgrade without --yes, and an upgrade of a database that has the project's tables but no
    Alembic version (the first migration would fail on the existing tables)."""
    from alembic.util.exc import CommandError

    from campaigns.db.engine import alembic_config, downgrade, upgrade
    from campaigns.settings import load_settings

    db = load_settings().database
    where = f"database {db.name} at {db.host}:{db.port}"
    if args.downgrade and args.stamp:
        raise ValidationError("--stamp and --downgrade: give one of them")
    if args.downgrade and not args.revision:
        raise ValidationError(
            "--downgrade: give the target with --revision (e.g. --revision -1 for one step back; "
            "--revision base drops every table and its data); nothing was changed"
        )
    if args.downgrade and not args.yes:
        raise ValidationError(
            f"--downgrade --revision {args.revision}: downgrading drops the tables and columns of the later "
            f"revisions, with their data, in {where}; run again with --yes to do it"
        )
    try:
        if args.stamp:
            from alembic import command

            command.stamp(alembic_config(db), args.stamp)
            _info(f"{where} recorded as being at revision {args.stamp} (no schema change)")
            return EXIT_OK
        if args.downgrade:
            downgrade(db, args.revision)
        else:
            _refuse_unversioned_tables(db, where)
            upgrade(db, args.revision or "head")
    except CommandError as exc:  # an unknown revision, an impossible step
        raise ValidationError(f"--revision: {exc}") from None
    _info(f"{where} migrated")
    return EXIT_OK


def _refuse_unversioned_tables(db: Any, where: str) -> None:
    """A database with the project's tables but no Alembic version was made some other way (or lost its
    ``alembic_version`` table): migrating it would fail on the first CREATE TABLE."""
    from sqlalchemy import inspect, text

    from campaigns.db.engine import make_engine

    engine = make_engine(db)
    try:
        with engine.connect() as conn:
            tables = set(inspect(conn).get_table_names())
            versioned = "alembic_version" in tables and conn.execute(
                text("SELECT count(*) FROM alembic_version")).scalar_one() > 0
    finally:
        engine.dispose()
    if PROJECT_TABLE in tables and not versioned:
        from alembic.script import ScriptDirectory

        from campaigns.db.engine import alembic_config

        head = ScriptDirectory.from_config(alembic_config(db)).get_current_head()
        raise ValidationError(
            f"{where} has the project's tables but no Alembic version, so migrations cannot tell which schema "
            f"it has; if it is the latest ({head}), record that with `campaigns migrate --stamp {head}` (an "
            "older one: its revision id from migrations/versions), then migrate again; otherwise migrate a "
            "new, empty database (CAMPAIGNS_DATABASE__NAME)"
        )


def cmd_principal_add(args: argparse.Namespace) -> int:
    with _authenticated(args) as (service, actor):
        service.add_principal(actor, args.name, args.role)
    _info(f"principal {args.name} has role {args.role}; give it a token with `campaigns token create {args.name}`")
    return EXIT_OK


def cmd_principal_list(args: argparse.Namespace) -> int:
    with _authenticated(args) as (service, actor):
        rows = service.list_principals(actor)
    if args.json:
        _out(json.dumps([{"name": n, "role": r} for n, r in rows]))
    for name, role in [] if args.json else rows:
        _out(f"{name:<32} {role}")
    return EXIT_OK


def cmd_bootstrap(args: argparse.Namespace) -> int:
    with _service() as service:
        token = service.bootstrap(args.name)
    _out(token)
    _info(f"admin {args.name} created with an API token (printed above, shown only this once): keep it secret, "
          f"e.g. `export {TOKEN_ENV}=...`; bootstrap refuses from now on")
    return EXIT_OK


def _duration(text: str, option: str) -> timedelta:
    value = text.strip().lower()
    if len(value) >= 2 and value[-1] in _DURATION and value[:-1].isdigit() and len(value) <= 12 and int(value[:-1]):
        return timedelta(seconds=int(value[:-1]) * _DURATION[value[-1]])
    raise ValidationError(f"{option}: {text!r} is not a duration (e.g. 90d, 12h, 30m)")


def cmd_token_create(args: argparse.Namespace) -> int:
    expires_in = _duration(args.expires_in, "--expires-in") if args.expires_in else None
    with _authenticated(args) as (service, actor):
        token_id, token = service.create_token(actor, args.principal, expires_in=expires_in)
    _out(token)
    _info(f"token {token_id} for {args.principal} (printed above, shown only this once; revoke it with "
          f"`campaigns token revoke {token_id}`)")
    return EXIT_OK


def cmd_command_key_create(args: argparse.Namespace) -> int:
    with _authenticated(args) as (service, actor):
        key_id, secret = service.create_command_key(actor, args.principal)
    _out(json.dumps({"key_id": key_id, "secret": secret, "principal": args.principal}) if args.json
         else f"{key_id} {secret}")
    _info(f"command key {key_id}: commands signed with it act as {args.principal} (the secret is shown only this "
          f"once; sign records as docs/security.md says; revoke it with `campaigns command-key revoke {key_id}`)")
    return EXIT_OK


def cmd_command_key_revoke(args: argparse.Namespace) -> int:
    with _authenticated(args) as (service, actor):
        service.revoke_command_key(actor, args.key_id)
    _info(f"command key {args.key_id} revoked: commands signed with it are refused from now on")
    return EXIT_OK


def cmd_token_revoke(args: argparse.Namespace) -> int:
    if (args.token_id is None) == (args.principal is None):
        raise ValidationError("token revoke: give a token id (or the token) or --principal NAME, not both")
    with _authenticated(args) as (service, actor):
        revoked = service.revoke_tokens(actor, token_id=args.token_id, principal=args.principal)
    _info(f"revoked {len(revoked)} token(s): {', '.join(revoked)}")
    return EXIT_OK


def cmd_token_list(args: argparse.Namespace) -> int:
    with _authenticated(args) as (service, actor):
        rows = service.list_tokens(actor, args.principal)
    if args.json:
        _out(json.dumps(rows, default=str))
        return EXIT_OK
    for r in rows:
        state = f"revoked {_when(r['revoked_at'])} by {r['revoked_by']}" if r["revoked_at"] else (
            f"expires {_when(r['expires_at'])}" if r["expires_at"] else "live")
        _out(f"{r['id']}  {r['principal']:<24} created {_when(r['created_at'])} by {r['created_by']}  {state}  "
             f"last used {_when(r['last_used_at'])}")
    _out(f"{len(rows)} tokens")
    return EXIT_OK


def cmd_audit(args: argparse.Namespace) -> int:
    campaign_id = _campaign_id(args.campaign) if args.campaign else None
    since = _parse_since(args.since)
    if args.limit < 1:
        raise ValidationError(f"--limit: must be >= 1, got {args.limit}")
    with _authenticated(args) as (service, actor):
        rows = service.audit_log(actor, campaign_id=campaign_id, principal=args.principal, since=since,
                                 limit=args.limit)
    if args.json:
        _out(json.dumps(rows, default=str))
        return EXIT_OK
    for r in rows:
        campaign = f" campaign={r['campaign_id']}" if r["campaign_id"] else ""
        _out(f"{_when(r['occurred_at'])}  {r['principal']:<20} {r['action']:<22}{campaign}  "
             f"{json.dumps(r['detail'], sort_keys=True, default=str)[:160]}")
    _out(f"{len(rows)} audit entries")
    return EXIT_OK


def cmd_approve(args: argparse.Namespace) -> int:
    campaign_id = _campaign_id(args.id)
    with _authenticated(args) as (service, actor):
        service.approve_content(actor, campaign_id)
    _info(f"campaign {campaign_id}: content approved; schedule it with `campaigns schedule {campaign_id}`")
    return EXIT_OK


TEMPLATE_FILE_KEYS = ("name", "channel", "body", "subject", "locale")


def cmd_template_add(args: argparse.Namespace) -> int:
    spec = _read_json(args.file)
    if not isinstance(spec, dict):
        raise ValidationError(f"{args.file}: must hold a JSON object with {', '.join(TEMPLATE_FILE_KEYS)}")
    problems = [
        f"{key}: unknown field (allowed: {', '.join(TEMPLATE_FILE_KEYS)})"
        for key in spec
        if key not in TEMPLATE_FILE_KEYS
    ]
    problems += [f"{key}: required" for key in ("name", "channel", "body") if not spec.get(key)]
    problems += [
        f"{key}: must be a string"
        for key in TEMPLATE_FILE_KEYS
        if spec.get(key) is not None and not isinstance(spec[key], str)
    ]
    if spec.get("channel") == "email" and isinstance(spec.get("subject"), str):
        from campaigns.core.payload import email_subject_problems

        problems += email_subject_problems(spec["subject"], {}, field="subject")
    if problems:
        raise ValidationError([f"{args.file}: {p}" for p in problems])
    with _authenticated(args) as (service, actor):
        template_id = service.add_template(
            actor,
            name=spec["name"],
            channel=spec["channel"],
            body=spec["body"],
            subject=spec.get("subject"),
            locale=spec.get("locale") or "en",
            approve=args.approve,
        )
    _info(
        f"template {spec['name']!r} stored as id {template_id}"
        + (" (approved)" if args.approve else f" (pending: `campaigns template approve {template_id}`)")
    )
    _out(str(template_id))
    return EXIT_OK


def cmd_template_approve(args: argparse.Namespace) -> int:
    with _authenticated(args) as (service, actor):
        service.approve_template(actor, args.id)
    _info(f"template {args.id} approved")
    return EXIT_OK


def cmd_channel_add(args: argparse.Namespace) -> int:
    from campaigns.core.vocabulary import CHANNELS

    problems = []
    if args.kind not in CHANNELS:
        problems.append(f"kind: must be one of {', '.join(CHANNELS)}, got {args.kind!r}")
    if not args.rate > 0:
        problems.append(f"--rate: messages per second, must be > 0, got {args.rate}")
    if args.burst < 1:
        problems.append(f"--burst: must be >= 1, got {args.burst}")
    if problems:
        raise ValidationError(problems)
    with _authenticated(args) as (service, actor):
        channel_id = service.add_channel(actor, kind=args.kind, channel_id=args.id, provider=args.provider,
                                         rate_per_s=args.rate, burst=args.burst)
    _info(f"channel {channel_id} ({args.kind} via {args.provider}, {args.rate}/s, burst {args.burst})")
    return EXIT_OK


def cmd_channel_list(args: argparse.Namespace) -> int:
    with _authenticated(args) as (service, actor):
        rows = service.list_channels(actor)
    if args.json:
        _out(json.dumps(rows, sort_keys=True))
    for row in [] if args.json else rows:
        state = f"OPEN ({row['paused_reason']} since {row['paused_at']}, {row['failed_probes']} failed probes)" \
            if row["paused_reason"] else "closed"
        _out(f"{row['kind']:<9} {row['id']:<12} {row['rate_per_s']:g}/s burst {row['burst']:<5} breaker {state}")
    return EXIT_OK


def cmd_channel_close(args: argparse.Namespace) -> int:
    with _authenticated(args) as (service, actor):
        service.close_channel(actor, args.kind)
    _info(f"channel {args.kind}: breaker closed; senders use it again within a second")
    return EXIT_OK


def cmd_create(args: argparse.Namespace) -> int:
    payload = _read_json(args.file)
    with _authenticated(args) as (service, actor):
        campaign_id = service.create_campaign(actor, payload)
        approved = service.get_campaign(actor, campaign_id).content_approved
        estimate = service.content_estimate(actor, campaign_id)
    created: dict[str, Any] = {"id": str(campaign_id), "status": "draft"}
    if estimate is not None:
        created["sms"] = estimate
    _out(json.dumps(created) if args.json else str(campaign_id))
    if estimate is not None:
        _info(_sms_text(estimate))
    _info(
        f"campaign {campaign_id} created (draft); "
        + (f"schedule it with `campaigns schedule {campaign_id} --at now`" if approved else
           f"its inline content needs an approver (templates.manage): `campaigns approve {campaign_id}`, "
           "then schedule it")
    )
    return EXIT_OK


def cmd_schedule(args: argparse.Namespace) -> int:
    campaign_id = _campaign_id(args.id)
    start_at = _parse_at(args.at)
    with _authenticated(args) as (service, actor):
        version = service.schedule_campaign(actor, campaign_id, start_at)
        view = service.get_campaign(actor, campaign_id)
    when = view.start_at.isoformat() if view.start_at else "now"
    _info(f"campaign {campaign_id} scheduled for {when} (version {version})")
    return EXIT_OK


def _transition(action: str) -> Handler:
    def handler(args: argparse.Namespace) -> int:
        campaign_id = _campaign_id(args.id)
        with _authenticated(args) as (service, actor):
            version = getattr(service, f"{action}_campaign")(actor, campaign_id)
            status = service.get_campaign(actor, campaign_id).status
        _info(f"campaign {campaign_id} is {status} (version {version})")
        return EXIT_OK

    return handler


def cmd_status(args: argparse.Namespace) -> int:
    campaign_id = _campaign_id(args.id)
    previous: tuple[float, int] | None = None
    with _authenticated(args) as (service, actor):
        while True:
            data = service.campaign_status(actor, campaign_id).as_dict()
            now = time.monotonic()
            if previous is not None and now > previous[0]:
                data["rate_per_s"] = round((data["terminal"] - previous[1]) / (now - previous[0]), 1)
                remaining = (data["total_recipients"] or 0) - data["terminal"]
                if data["rate_per_s"] > 0 and data["total_recipients"]:
                    data["eta_s"] = round(remaining / data["rate_per_s"])
            previous = (now, data["terminal"])
            _out(json.dumps(data, sort_keys=True) if args.json else _status_text(data))
            if not getattr(args, "watch", False) or data["status"] in ("completed", "failed", "cancelled"):
                return EXIT_OK
            time.sleep(2.0)


def _sms_text(estimate: dict[str, Any]) -> str:
    """One line: the SMS cost estimate (campaigns.service.sms_estimate)."""
    per_locale = ", ".join(f"{locale}: {e['segments']} x {e['encoding']} ({e['units']} units"
                           + (f" + {e['placeholders']} placeholders)" if e["placeholders"] else ")")
                           for locale, e in estimate["per_locale"].items())
    total = estimate.get("estimated_segments_total")
    return (f"sms: {estimate['segments']} segment(s) per message from the static text ({per_locale}), at most "
            f"{estimate['max_sms_segments']}" + (f"; about {total} segments in all" if total is not None else ""))


def _status_text(data: dict[str, Any]) -> str:
    lines = [
        f"campaign   {data['id']}  {data['name']!r}",
        f"status     {data['status']} (version {data['version']}), channel {data['channel']}",
        f"start at   {data['start_at'] or '-'}",
        f"recipients {data['total_recipients'] if data['total_recipients'] is not None else '-'} "
        f"(expanded: {'yes' if data['expansion_done'] else 'no'}, skipped {data['skipped_recipients']})",
        f"progress   {data['terminal']} terminal: "
        + (", ".join(f"{k} {v}" for k, v in sorted(data["recipients"].items())) or "none yet"),
    ]
    if "rate_per_s" in data:
        eta = f", ETA {data['eta_s']} s" if "eta_s" in data else ""
        lines.append(f"rate       {data['rate_per_s']}/s{eta}")
    receipts = data.get("receipts") or {}
    if any(receipts.get(k) for k in ("delivered", "read", "bounced", "complained")):
        sent = receipts.get("sent") or 0

        def rate(name: str) -> str:
            share = f" ({100.0 * receipts[name] / sent:.1f}%)" if sent else ""
            return f"{name} {receipts[name]}{share}"

        lines.append("receipts   " + ", ".join(rate(k) for k in ("delivered", "read", "bounced", "complained"))
                     + " of sent")
    if data["failures_by_reason"]:
        lines.append("failures   " + ", ".join(f"{k}: {v}" for k, v in data["failures_by_reason"].items()))
    if data.get("sms"):
        lines.append("sms        " + _sms_text(data["sms"]).removeprefix("sms: "))
    if data.get("channel_paused"):
        lines.append(f"channel    PAUSED by its breaker ({data['channel_paused']}): nothing is sent; "
                     f"`campaigns channel close {data['channel']}` once the provider account works")
    return "\n".join(lines)


def cmd_seed(args: argparse.Namespace) -> int:
    from campaigns.db.seed import SeedPlan, seed
    from campaigns.settings import load_settings

    problems = []
    if args.customers < 1:
        problems.append(f"--customers: must be >= 1, got {args.customers}")
    if args.segments < 1:
        problems.append(f"--segments: must be >= 1, got {args.segments}")
    if args.first_id < 1:
        problems.append(f"--first-id: must be >= 1, got {args.first_id}")
    if problems:
        raise ValidationError(problems)
    import psycopg2

    plan = SeedPlan(
        customers=args.customers, first_id=args.first_id, segments=args.segments, segment_prefix=args.prefix
    )
    with _authorized(args, "seed_customers") as (service, actor):
        started = time.perf_counter()
        try:
            segment_ids = seed(load_settings().database.dsn(), plan)
        except psycopg2.errors.UniqueViolation:
            last = args.first_id + args.customers - 1
            raise ValidationError(
                f"--first-id: customer ids {args.first_id}..{last} overlap existing customers; "
                "choose a free range with --first-id"
            ) from None
        elapsed = time.perf_counter() - started
        service.record(actor, "seed_customers", {"customers": args.customers, "first_id": args.first_id,
                                                 "segments": segment_ids})
    names = ", ".join(f"{args.prefix}-{i}={sid}" for i, sid in enumerate(segment_ids))
    _info(
        f"seeded {args.customers} customers (ids {args.first_id}..{args.first_id + args.customers - 1}) "
        f"in {elapsed:.2f}s ({args.customers / max(elapsed, 1e-9):,.0f}/s); segments: {names}"
    )
    _out(json.dumps({"segments": segment_ids, "customers": args.customers, "seconds": round(elapsed, 3)}))
    return EXIT_OK


IMPORT_PROBLEMS_SHOWN = 50  # problems printed by a refused import (the total is always given)


@contextmanager
def _csv_lines(path: str) -> Iterator[Any]:
    """The file's lines, read lazily (never the whole file): UTF-8 (a BOM is skipped); an invalid byte becomes
    U+FFFD, which the row checks report with its line."""
    try:
        file = Path(path).open(encoding="utf-8-sig", errors="replace", newline="")
    except FileNotFoundError:
        raise ValidationError(f"{path}: no such file") from None
    except OSError as exc:
        raise ValidationError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    with file:
        yield file


def _import(args: argparse.Namespace, operation: str, run: Callable[[Any, Any], Any]) -> int:
    """Read ``args.file`` and import it in one transaction (``run(cursor, lines)`` via the service), then print the
    counts; a refused import prints its problems (``line N: column: problem``) and exits 2."""
    from campaigns.core.importing import format_problems
    from campaigns.errors import ImportRejected

    started = time.perf_counter()
    with _authorized(args, operation) as (service, actor), _csv_lines(args.file) as lines:
        try:
            outcome, counts = service.run_import(
                actor, operation, lambda cur: run(cur, lines), lambda c: {**c.as_dict(), "file": Path(args.file).name}
            )
        except ImportRejected as rejected:
            for line in format_problems(rejected.problems, rejected.total, IMPORT_PROBLEMS_SHOWN):
                _info(line)
            _info(f"error: {args.file}: {rejected.total} problem(s); nothing was imported")
            return EXIT_INVALID
    assert outcome == "applied" and counts is not None
    seconds = time.perf_counter() - started
    result = {**counts.as_dict(), "seconds": round(seconds, 3)}
    if counts.kind == "segment":
        _info(f"segment {counts.segment!r} (id {counts.segment_id}{', created' if counts.created else ''}): "
              f"{counts.rows} rows, {counts.inserted} added, {counts.unchanged} already members, {counts.removed} "
              f"removed, in {seconds:.2f}s")
    else:
        _info(f"{counts.rows} customers: {counts.inserted} inserted, {counts.updated} updated, {counts.unchanged} "
              f"unchanged, in {seconds:.2f}s")
    _out(json.dumps(result))
    return EXIT_OK


def cmd_import_customers(args: argparse.Namespace) -> int:
    from sinks.customers import import_customer_csv

    return _import(args, "import_customers", import_customer_csv)


def cmd_import_segment(args: argparse.Namespace) -> int:
    from campaigns.core.importing import check_segment_name
    from sinks.customers import import_segment_csv

    problems = check_segment_name(args.name)
    if problems:
        raise ValidationError([str(p) for p in problems])
    return _import(args, "import_segment",
                   lambda cur, lines: import_segment_csv(cur, args.name, lines, replace=args.replace))


def cmd_topics_create(args: argparse.Namespace) -> int:
    from campaigns.settings import load_settings
    from producers.topics import all_topic_names, ensure_topics

    settings = load_settings()
    created = ensure_topics(settings)
    names = all_topic_names(settings)
    _info(
        f"{len(created)} topics created, {len(names) - len(created)} already existed "
        f"({settings.kafka.partitions} partitions each on {settings.kafka.bootstrap_servers})"
    )
    for name in created:
        _out(name)
    return EXIT_OK


def cmd_relay(args: argparse.Namespace) -> int:
    from campaigns.db.engine import make_engine
    from campaigns.settings import load_settings
    from producers.kafka import KafkaProducer
    from producers.outbox_relay import OutboxRelay

    _setup_logging()
    settings = load_settings()
    engine = make_engine(settings.database)
    relay = OutboxRelay(settings, engine, KafkaProducer(settings.kafka))
    stop = _stop_on_signals()
    _info(f"outbox relay publishing to {settings.kafka.bootstrap_servers}; Ctrl-C to stop")
    try:
        relay.run_forever(stop)
    finally:
        relay.close()
        engine.dispose()
    _info(f"relay stopped after publishing {relay.published} events")
    return EXIT_OK


def cmd_commands(args: argparse.Namespace) -> int:
    """The command consumer on its own: the worker's ``commands`` stage (so the worker's restart policy rides out a
    PostgreSQL or Kafka outage), without its /metrics endpoint."""
    from campaigns.settings import load_settings
    from producers.topics import COMMANDS
    from streams.worker import Worker

    _setup_logging()
    settings = load_settings().model_copy(update={"metrics_enabled": False})
    stop = _stop_on_signals()
    worker = Worker(settings, stages=("commands",)).start()
    _info(f"applying commands from {settings.kafka.topic(COMMANDS)}; Ctrl-C to stop")
    while not stop.wait(0.5) and not worker.stop_event.is_set():
        pass
    worker.stop()
    if worker.failed:
        _info(f"error: {worker.failed}")
        return EXIT_FAILURE
    consumer = worker.commands  # the last one built (a restart starts its counts afresh)
    if consumer is not None:
        _info(f"stopped: {consumer.applied} applied, {consumer.duplicates} repeats, {consumer.rejected} rejected")
    return EXIT_OK


# --- parser --------------------------------------------------------------------------------------


def _add_actor(parser: argparse.ArgumentParser) -> None:
    """The authentication options of a command that acts as a principal."""
    parser.add_argument("--token", help=f"API token (default: ${TOKEN_ENV}, or the file ${TOKEN_FILE_ENV}; an "
                                        "option is visible to other users in the process list)")
    parser.add_argument("--as", dest="actor", metavar="PRINCIPAL",
                        help=f"check that the token is PRINCIPAL's (default: ${ACTOR_ENV}); never a way to act "
                             "as someone else")


def cmd_worker(args: argparse.Namespace) -> int:
    from streams.worker import main as worker_main

    argv = ["--channels", args.channels]
    if args.stages:  # else the worker's own default (streams.worker.STAGES)
        argv += ["--stages", args.stages]
    if args.no_rate_limits:
        argv.append("--no-rate-limits")
    return worker_main(argv)


def cmd_demo(args: argparse.Namespace) -> int:
    from app.demo import run_demo
    from campaigns.settings import load_settings

    logging.basicConfig(level=logging.WARNING)
    return run_demo(load_settings(), quick=args.quick)


def _span(args: argparse.Namespace) -> Any:
    from producers.operate import Range

    if (args.from_offset is not None or args.to_offset is not None) and (args.from_time or args.to_time):
        raise ValidationError("give offsets (--from-offset/--to-offset) or times (--from-time/--to-time), not both")
    return Range(partition=args.partition, from_offset=args.from_offset, to_offset=args.to_offset,
                 from_time=_parse_at(args.from_time), to_time=_parse_at(args.to_time))


def cmd_replay(args: argparse.Namespace) -> int:
    from campaigns.settings import load_settings
    from producers.operate import replay

    settings = load_settings()
    topic = settings.kafka.topic(args.topic)
    span = _span(args)
    with _authorized(args, "replay") as (service, actor):
        report = replay(settings, topic, span, campaign=args.campaign,
                        to_topic=settings.kafka.topic(args.to) if args.to else None, dry_run=args.dry_run,
                        rate_per_s=args.rate)
        if not args.dry_run:
            service.record(actor, "replay", {"topic": args.topic, "to": args.to, "campaign": args.campaign,
                                             "read": report.read, "re_driven": report.matched,
                                             "from_offset": args.from_offset, "to_offset": args.to_offset,
                                             "from_time": args.from_time, "to_time": args.to_time})
    verb = "would re-drive" if args.dry_run else "re-drove"
    _out(f"read {report.read} records from {topic}; {verb} {report.matched}"
         + (f" (campaign {args.campaign})" if args.campaign else ""))
    return EXIT_OK


def cmd_dlq_list(args: argparse.Namespace) -> int:
    from campaigns.settings import load_settings
    from producers.operate import dead_letters

    with _authorized(args, "list_dead_letters"):
        records = dead_letters(load_settings(), campaign=args.campaign, reason=args.reason)
    if args.json:
        _out(json.dumps([{k: v for k, v in r.items() if k != "original_value"} for r in records], default=str))
        return EXIT_OK
    by_reason: dict[str, int] = {}
    for r in records:
        by_reason[r.get("reason", "?")] = by_reason.get(r.get("reason", "?"), 0) + 1
        if len(records) <= args.limit or by_reason[r.get("reason", "?")] <= 3:
            _out(f"{r['_position']:>10}  {r.get('reason')}  campaign={r.get('campaign_id')} "
                 f"recipient={r.get('recipient_id')}  {str(r.get('detail') or '')[:80]}")
    _out(f"{len(records)} dead letters: " + (", ".join(f"{k} {v}" for k, v in sorted(by_reason.items())) or "none"))
    return EXIT_OK


_DURATION = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _parse_since(text: str | None) -> datetime | None:
    """``--since``: a duration back from now (``30s``, ``15m``, ``2h``, ``7d``) or an ISO-8601 date-time
    with a UTC offset; None when not given."""
    if text is None:
        return None
    value = text.strip().lower()
    if len(value) >= 2 and value[-1] in _DURATION and value[:-1].isdigit() and len(value) <= 12:
        return datetime.now(UTC) - timedelta(seconds=int(value[:-1]) * _DURATION[value[-1]])
    try:
        return _parse_at(text)
    except ValidationError:
        raise ValidationError(
            f"--since: {text!r} is neither a duration (30s, 15m, 2h, 7d) nor an ISO-8601 date-time with a "
            "UTC offset (e.g. 2026-05-01T07:00:00Z)"
        ) from None


def _when(value: Any) -> str:
    return value.isoformat(timespec="seconds").replace("+00:00", "Z") if isinstance(value, datetime) else "-"


def _print_records(records: list[dict[str, Any]], limit: int, line: Callable[[dict[str, Any]], str],
                   what: str, summary_key: str) -> None:
    """The newest ``limit`` records one per line (oldest first), then a count per ``summary_key``."""
    if limit < 0:
        raise ValidationError(f"--limit: must be >= 0, got {limit}")
    shown = records[-limit:] if limit else []
    if len(records) > len(shown):
        _out(f"({len(records) - len(shown)} earlier {what} not shown: raise --limit or narrow --since)")
    for record in shown:
        _out(line(record))
    counts: dict[str, int] = {}
    for record in records:
        key = str(record.get(summary_key) or "undecodable")
        counts[key] = counts.get(key, 0) + 1
    _out(f"{len(records)} {what}" + (": " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
                                     if counts else ""))


def _json_records(records: list[dict[str, Any]]) -> str:
    return json.dumps([{k: v for k, v in r.items() if k != "original_value"} for r in records], default=str)


def _show_records(args: argparse.Namespace, records: list[dict[str, Any]], line: Callable[[dict[str, Any]], str],
                  what: str, summary_key: str) -> int:
    """Print decoded topic records as JSON or one line each (undecodable ones say where they are)."""
    if args.json:
        _out(_json_records(records))
        return EXIT_OK

    def any_line(r: dict[str, Any]) -> str:
        if "undecodable" in r:
            return f"{_when(r['_timestamp'])}  undecodable at {r['_position']}: {r['undecodable'][:100]}"
        return line(r)

    _print_records(records, args.limit, any_line, what, summary_key)
    return EXIT_OK


def cmd_events_list(args: argparse.Namespace) -> int:
    from campaigns.settings import load_settings
    from producers.operate import campaign_events

    since = _parse_since(args.since)
    with _authorized(args, "list_events"):
        events = campaign_events(load_settings(), campaign=args.campaign, since=since, event_type=args.type)

    def line(e: dict[str, Any]) -> str:
        detail = f"  {e['detail_json'][:100]}" if e.get("detail_json") else ""
        return (f"{_when(e.get('occurred_at'))}  {e.get('event_type'):<9}  campaign={e.get('campaign_id')} "
                f"v{e.get('campaign_version')} actor={e.get('actor') or 'system'}{detail}")

    return _show_records(args, events, line, "events", "event_type")


def cmd_rejected_list(args: argparse.Namespace) -> int:
    from campaigns.settings import load_settings
    from producers.operate import rejected_commands

    since = _parse_since(args.since)
    with _authorized(args, "list_rejected_commands"):
        records = rejected_commands(load_settings(), campaign=args.campaign, since=since, reason=args.reason)

    def line(r: dict[str, Any]) -> str:
        command = r.get("command") or {}
        what = f"{command.get('command_type')} by {command.get('principal')}" if command else "undecodable command"
        return (f"{_when(r.get('failed_at'))}  {r.get('reason')}  command={r.get('message_id') or '-'} ({what}) "
                f"campaign={r.get('campaign_id') or '-'} at {r.get('source_partition')}@{r.get('source_offset')}"
                f"  {str(r.get('detail') or '')[:120]}")

    return _show_records(args, records, line, "rejected commands", "reason")


def cmd_dlq_redrive(args: argparse.Namespace) -> int:
    from campaigns.settings import load_settings
    from producers.operate import redrive

    with _authorized(args, "redrive_dead_letters") as (service, actor):
        report = redrive(load_settings(), campaign=args.campaign, reason=args.reason, rate_per_s=args.rate,
                         dry_run=args.dry_run)
        if not args.dry_run:
            service.record(actor, "redrive_dead_letters", {"campaign": args.campaign, "reason": args.reason,
                                                           "read": report.read, "re_driven": report.matched})
    verb = "would re-drive" if args.dry_run else "re-drove"
    _out(f"{report.read} dead letters matched; {verb} {report.matched} to their source topics "
         "(recipients that already have a terminal row are not re-sent)")
    return EXIT_OK


def cmd_live(args: argparse.Namespace) -> int:
    from streams.live import main as live_main

    argv = ["worker", "-l", args.log_level]
    if args.port:
        argv += ["--web-port", str(args.port)]
    if args.host:
        argv += ["--web-host", args.host, "--web-bind", args.host]
    return int(live_main(argv) or 0)


def cmd_api(args: argparse.Namespace) -> int:
    from api.server import serve

    _setup_logging()
    return serve(args.host, args.port, args.log_level)


def cmd_webhooks(args: argparse.Namespace) -> int:
    from app.webhooks import serve
    from campaigns.settings import load_settings

    _setup_logging()
    return serve(load_settings(), args.host, args.port)


def cmd_bench(args: argparse.Namespace) -> int:
    from bench.__main__ import main as bench_main

    return bench_main(args.bench_args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="campaigns", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    migrate = sub.add_parser("migrate", help="apply database migrations (alembic upgrade head)")
    migrate.add_argument("--revision", help="target revision (default head; required with --downgrade)")
    migrate.add_argument("--downgrade", action="store_true",
                         help="downgrade to --revision (drops later tables and their data; needs --yes)")
    migrate.add_argument("--yes", action="store_true", help="confirm a downgrade")
    migrate.add_argument("--stamp", metavar="REVISION",
                         help="record the database as being at REVISION without changing it (a database "
                              "made without migrations)")
    migrate.set_defaults(handler=cmd_migrate)

    bootstrap = sub.add_parser("bootstrap", help="create the first admin and print its API token (a database "
                                                 "without principals only; refuses afterwards)")
    bootstrap.add_argument("name", help="the admin's principal name")
    bootstrap.set_defaults(handler=cmd_bootstrap)

    principal = sub.add_parser("principal", help="manage principals (users and upstream systems)")
    principal_sub = principal.add_subparsers(dest="principal_command", required=True)
    principal_add = principal_sub.add_parser("add", help="create a principal or change its role")
    principal_add.add_argument("name")
    principal_add.add_argument("--role", required=True, help="admin, marketer or auditor")
    _add_actor(principal_add)
    principal_add.set_defaults(handler=cmd_principal_add)
    principal_list = principal_sub.add_parser("list", help="every principal and its role")
    principal_list.add_argument("--json", action="store_true")
    _add_actor(principal_list)
    principal_list.set_defaults(handler=cmd_principal_list)

    token = sub.add_parser("token", help="manage API tokens (shown once at creation; stored hashed)")
    token_sub = token.add_subparsers(dest="token_command", required=True)
    token_create = token_sub.add_parser("create", help="create an API token for a principal and print it")
    token_create.add_argument("principal")
    token_create.add_argument("--expires-in", metavar="DURATION", help="e.g. 90d, 12h (default: no expiry)")
    _add_actor(token_create)
    token_create.set_defaults(handler=cmd_token_create)
    token_revoke = token_sub.add_parser("revoke", help="revoke a token (its id or the token), or all of a principal's")
    token_revoke.add_argument("token_id", nargs="?", metavar="TOKEN_ID")
    token_revoke.add_argument("--principal", help="revoke every live token of this principal")
    _add_actor(token_revoke)
    token_revoke.set_defaults(handler=cmd_token_revoke)
    token_list = token_sub.add_parser("list", help="tokens (ids, owners, expiry, revocation, last use; no secrets)")
    token_list.add_argument("--principal")
    token_list.add_argument("--json", action="store_true")
    _add_actor(token_list)
    token_list.set_defaults(handler=cmd_token_list)

    command_key = sub.add_parser(
        "command-key", help="HMAC keys upstream systems sign campaign.commands with (the key names the principal)")
    command_key_sub = command_key.add_subparsers(dest="command_key_command", required=True)
    command_key_create = command_key_sub.add_parser("create", help="create a key for a principal; prints id and secret")
    command_key_create.add_argument("principal")
    command_key_create.add_argument("--json", action="store_true", help="machine-readable output")
    _add_actor(command_key_create)
    command_key_create.set_defaults(handler=cmd_command_key_create)
    command_key_revoke = command_key_sub.add_parser("revoke", help="revoke a key (its commands are refused from then)")
    command_key_revoke.add_argument("key_id")
    _add_actor(command_key_revoke)
    command_key_revoke.set_defaults(handler=cmd_command_key_revoke)

    audit = sub.add_parser("audit", help="read the audit log (who did what, when), oldest first")
    audit.add_argument("--campaign", help="only entries of this campaign id")
    audit.add_argument("--principal", help="only entries by this principal")
    audit.add_argument("--since", help="a duration (30s, 15m, 2h, 7d) or an ISO-8601 time with offset")
    audit.add_argument("--limit", type=int, default=1000, help="newest entries returned (default 1000)")
    audit.add_argument("--json", action="store_true")
    _add_actor(audit)
    audit.set_defaults(handler=cmd_audit)

    approve = sub.add_parser("approve", help="approve a campaign's inline content so it can be scheduled")
    approve.add_argument("id")
    _add_actor(approve)
    approve.set_defaults(handler=cmd_approve)

    template = sub.add_parser("template", help="manage message templates")
    template_sub = template.add_subparsers(dest="template_command", required=True)
    template_add = template_sub.add_parser(
        "add", help="store a template version from a JSON file {name, channel, body, subject?, locale?}"
    )
    template_add.add_argument("file", metavar="FILE.json")
    template_add.add_argument("--approve", action="store_true", help="approve it at once")
    _add_actor(template_add)
    template_add.set_defaults(handler=cmd_template_add)
    template_approve = template_sub.add_parser("approve", help="approve a pending template version")
    template_approve.add_argument("id", type=int)
    _add_actor(template_approve)
    template_approve.set_defaults(handler=cmd_template_approve)

    channel = sub.add_parser("channel", help="configure provider channels")
    channel_sub = channel.add_subparsers(dest="channel_command", required=True)
    channel_add = channel_sub.add_parser("add", help="add or update the channel account of a kind")
    channel_add.add_argument("kind", help="whatsapp, sms or email")
    channel_add.add_argument("--id", help="channel id (default: the kind)")
    channel_add.add_argument("--provider", default="simulator", help="provider name (default: simulator)")
    channel_add.add_argument("--rate", type=float, default=100.0, help="messages per second (default 100)")
    channel_add.add_argument("--burst", type=int, default=100, help="burst size (default 100)")
    _add_actor(channel_add)
    channel_add.set_defaults(handler=cmd_channel_add)
    channel_list = channel_sub.add_parser("list", help="the channel accounts, their limits and breakers")
    channel_list.add_argument("--json", action="store_true", help="machine-readable output")
    _add_actor(channel_list)
    channel_list.set_defaults(handler=cmd_channel_list)
    channel_close = channel_sub.add_parser(
        "close", help="close a channel's breaker by hand (after fixing the provider account)")
    channel_close.add_argument("kind", help="whatsapp, sms or email")
    _add_actor(channel_close)
    channel_close.set_defaults(handler=cmd_channel_close)

    create = sub.add_parser("create", help="create a draft campaign from a JSON payload (prints its id)")
    create.add_argument(
        "file", metavar="FILE.json", help="see docs/campaign-payload.schema.json and examples/"
    )
    create.add_argument("--json", action="store_true", help='print {"id": ...} instead of the bare id')
    _add_actor(create)
    create.set_defaults(handler=cmd_create)

    schedule = sub.add_parser("schedule", help="schedule a campaign")
    schedule.add_argument("id")
    schedule.add_argument(
        "--at",
        metavar="ISO8601|now",
        help="start time with a UTC offset, or 'now' (default: the payload's start_at, else now)",
    )
    _add_actor(schedule)
    schedule.set_defaults(handler=cmd_schedule)

    for action, text in (
        ("pause", "pause a scheduled or active campaign"),
        ("resume", "resume a paused campaign"),
        ("cancel", "cancel a campaign that has not finished"),
    ):
        transition = sub.add_parser(action, help=text)
        transition.add_argument("id")
        _add_actor(transition)
        transition.set_defaults(handler=_transition(action))

    status = sub.add_parser("status", help="show a campaign's state and progress")
    status.add_argument("--watch", action="store_true", help="refresh every 2 s until the campaign ends")
    status.add_argument("id")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    _add_actor(status)
    status.set_defaults(handler=cmd_status)

    seed = sub.add_parser("seed", help="bulk-load deterministic customers and segments (COPY)")
    seed.add_argument("--customers", type=int, required=True, help="how many customers")
    seed.add_argument("--segments", type=int, default=3, help="how many segments (default 3)")
    seed.add_argument("--first-id", type=int, default=1, help="first customer id (default 1)")
    seed.add_argument("--prefix", default="segment", help="segment name prefix (default 'segment')")
    _add_actor(seed)
    seed.set_defaults(handler=cmd_seed)

    import_ = sub.add_parser(
        "import", help="import customers or segment members from a CSV file (all or nothing; docs/import.md)")
    import_sub = import_.add_subparsers(dest="import_command", required=True)
    import_customers = import_sub.add_parser(
        "customers", help="upsert customers by external_id from a CSV file (header: external_id, email, phone, "
                          "whatsapp, first_name, last_name, locale, timezone, status, opted_out_channels, "
                          "and any attribute columns)")
    import_customers.add_argument("file", metavar="FILE.csv")
    _add_actor(import_customers)
    import_customers.set_defaults(handler=cmd_import_customers)
    import_segment = import_sub.add_parser(
        "segment", help="add the customers of a CSV file (one column, external_id) to a segment, creating it")
    import_segment.add_argument("name", help="the segment's name")
    import_segment.add_argument("file", metavar="FILE.csv")
    import_segment.add_argument("--replace", action="store_true",
                                help="the segment ends with exactly the file's customers (default: add them)")
    _add_actor(import_segment)
    import_segment.set_defaults(handler=cmd_import_segment)

    topics = sub.add_parser("topics", help="manage Kafka topics")
    topics_sub = topics.add_subparsers(dest="topics_command", required=True)
    topics_create = topics_sub.add_parser("create", help="create every topic of the pipeline (idempotent)")
    topics_create.set_defaults(handler=cmd_topics_create)

    relay = sub.add_parser("relay", help="publish the transactional outbox to Kafka until Ctrl-C")
    relay.set_defaults(handler=cmd_relay)

    commands = sub.add_parser("commands", help="apply commands from campaign.commands until Ctrl-C")
    commands.set_defaults(handler=cmd_commands)

    worker = sub.add_parser("worker", help="run pipeline stages (all by default) until Ctrl-C")
    worker.add_argument("--stages", default=None,
                        help="comma-separated (default: every stage): scheduler,expander,senders,tally,completion,"
                             "receipts,relay,commands")
    worker.add_argument("--channels", default="whatsapp,sms,email", help="channels for the senders stage")
    worker.add_argument("--no-rate-limits", action="store_true", help="ignore channel rate limits (benchmarks)")
    worker.set_defaults(handler=cmd_worker)

    demo = sub.add_parser("demo", help="run the whole product end to end on the local services")
    demo.add_argument("--quick", action="store_true", help="a small, fast configuration (CI)")
    demo.set_defaults(handler=cmd_demo)

    replay = sub.add_parser("replay", help="re-drive a range of a topic (idempotent sends make it safe)")
    replay.add_argument("--topic", required=True, help="logical topic name, e.g. campaign.messages.sms")
    replay.add_argument("--partition", type=int)
    replay.add_argument("--from-offset", type=int)
    replay.add_argument("--to-offset", type=int, help="inclusive")
    replay.add_argument("--from-time", help="ISO-8601 with offset")
    replay.add_argument("--to-time", help="ISO-8601 with offset")
    replay.add_argument("--campaign", help="only records of this campaign id")
    replay.add_argument("--to", help="target topic (default: the same topic)")
    replay.add_argument("--rate", type=float, help="records per second (default: as fast as possible)")
    replay.add_argument("--dry-run", action="store_true", help="count what would be re-driven")
    _add_actor(replay)
    replay.set_defaults(handler=cmd_replay)

    dlq = sub.add_parser("dlq", help="inspect and redrive campaign.messages.dlq")
    dlq_sub = dlq.add_subparsers(dest="dlq_command", required=True)
    dlq_list = dlq_sub.add_parser("list", help="list dead letters")
    dlq_redrive = dlq_sub.add_parser("redrive", help="re-produce dead letters to their source topics")
    for p in (dlq_list, dlq_redrive):
        _add_actor(p)
        p.add_argument("--campaign")
        p.add_argument("--reason", help="reason prefix, e.g. permanent_failure, undecodable")
    dlq_list.add_argument("--json", action="store_true")
    dlq_list.add_argument("--limit", type=int, default=50)
    dlq_list.set_defaults(handler=cmd_dlq_list)
    dlq_redrive.add_argument("--rate", type=float, help="records per second")
    dlq_redrive.add_argument("--dry-run", action="store_true")
    dlq_redrive.set_defaults(handler=cmd_dlq_redrive)

    since_help = "only records since then: a duration (30s, 15m, 2h, 7d) or an ISO-8601 time with offset"
    events = sub.add_parser("events", help="read campaign.events (what happened to which campaign, by whom)")
    events_sub = events.add_subparsers(dest="events_command", required=True)
    events_list = events_sub.add_parser("list", help="list campaign events, oldest first")
    events_list.add_argument("--campaign", help="only events of this campaign id")
    events_list.add_argument("--since", help=since_help)
    events_list.add_argument("--type", help="only this event type: CREATED, SCHEDULED, ACTIVATED, PAUSED, "
                                            "RESUMED, CANCELLED, COMPLETED, FAILED")
    events_list.add_argument("--json", action="store_true", help="every match as a JSON array")
    events_list.add_argument("--limit", type=int, default=50, help="newest lines shown (default 50; not --json)")
    _add_actor(events_list)
    events_list.set_defaults(handler=cmd_events_list)

    rejected = sub.add_parser("rejected", help="read campaign.commands.rejected (commands that were refused)")
    rejected_sub = rejected.add_subparsers(dest="rejected_command", required=True)
    rejected_list = rejected_sub.add_parser("list", help="list rejected commands with the reason, oldest first")
    rejected_list.add_argument("--campaign", help="only commands for this campaign id")
    rejected_list.add_argument("--since", help=since_help)
    rejected_list.add_argument("--reason", help="reason prefix, e.g. invalid, permission_denied")
    rejected_list.add_argument("--json", action="store_true", help="every match as a JSON array")
    rejected_list.add_argument("--limit", type=int, default=50, help="newest lines shown (default 50; not --json)")
    _add_actor(rejected_list)
    rejected_list.set_defaults(handler=cmd_rejected_list)

    live = sub.add_parser("live", help="run the Faust live view of campaign analytics (windowed tables)")
    live.add_argument("--port", type=int, help="web port (default CAMPAIGNS_LIVE__WEB_PORT, 6066)")
    live.add_argument("--host", help="web host (default 127.0.0.1)")
    live.add_argument("-l", "--log-level", default="info", help="faust log level (keep info: warn is slower)")
    live.set_defaults(handler=cmd_live)

    webhooks = sub.add_parser("webhooks", help="run the providers' webhook receiver (delivery receipts -> "
                                               "delivery.receipts; docs/webhooks.md)")
    webhooks.add_argument("--host", help="bind address (default CAMPAIGNS_WEBHOOKS__HOST, 127.0.0.1)")
    webhooks.add_argument("--port", type=int, help="port (default CAMPAIGNS_WEBHOOKS__PORT, 8090)")
    webhooks.set_defaults(handler=cmd_webhooks)

    api = sub.add_parser("api", help="serve the HTTP API and the live dashboard (docs/api.md) until Ctrl-C")
    api.add_argument("--host", help="listen address (default CAMPAIGNS_API__HOST, 127.0.0.1)")
    api.add_argument("--port", type=int, help="port (default CAMPAIGNS_API__PORT, 8080; 0: any free port)")
    api.add_argument("--log-level", default="info", help="uvicorn's log level")
    api.set_defaults(handler=cmd_api)

    bench = sub.add_parser("bench", help="run the benchmark harness (see docs/benchmarks.md)")
    bench.add_argument("bench_args", nargs=argparse.REMAINDER, help="arguments for the harness")
    bench.set_defaults(handler=cmd_bench)

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:
        # Everything after `bench` belongs to the harness, options first included (`campaigns bench --quick`,
        # `make bench BENCH_ARGS=...`): argparse's REMAINDER would refuse a leading option.
        args = argparse.Namespace(handler=cmd_bench, bench_args=argv[1:])
    else:
        try:
            args = build_parser().parse_args(argv)
        except SystemExit as exit_:  # argparse: usage errors are invalid input (2), --help is 0
            return exit_.code if isinstance(exit_.code, int) else EXIT_INVALID
    handler: Handler = args.handler
    try:
        return handler(args)
    except CampaignError as error:
        print(f"error: {error}", file=sys.stderr)
        return exit_code_for(error)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        code = _invalid_settings(error)
        if code is None:
            code = _unavailable(error)
        if code is None:
            raise
        return code


def _invalid_settings(error: Exception) -> int | None:
    """Exit 2 with one line naming the environment variables of settings that do not validate."""
    from pydantic import ValidationError as SettingsError

    if not isinstance(error, SettingsError):
        return None
    problems = []
    for item in error.errors():
        variable = "CAMPAIGNS_" + "__".join(str(part) for part in item["loc"]).upper()
        problems.append(f"{variable}: {item['msg']}")
    print(f"error: invalid settings: {'; '.join(problems)}", file=sys.stderr)
    return EXIT_INVALID


def _unavailable(error: Exception) -> int | None:
    """Exit 5 with a hint for a service that cannot be reached; None for anything else (a bug: re-raise)."""
    from sqlalchemy.exc import InterfaceError, OperationalError

    if isinstance(error, OperationalError | InterfaceError):
        from campaigns.settings import load_settings

        db = load_settings().database
        print(
            f"error: PostgreSQL at {db.host}:{db.port} (database {db.name}) cannot be reached or refused the "
            f"connection: {str(error.orig).strip().splitlines()[0] if error.orig else error}; "
            "start it with `make services` or set CAMPAIGNS_DATABASE__*",
            file=sys.stderr,
        )
        return EXIT_UNAVAILABLE
    import psycopg2

    if isinstance(error, psycopg2.OperationalError):
        print(
            f"error: PostgreSQL cannot be reached: {str(error).strip()}; start it with `make services`",
            file=sys.stderr,
        )
        return EXIT_UNAVAILABLE
    from confluent_kafka import KafkaException

    if isinstance(error, KafkaException):
        print(
            f"error: Kafka: {error}; start it with `make services` or set CAMPAIGNS_KAFKA__BOOTSTRAP_SERVERS",
            file=sys.stderr,
        )
        return EXIT_UNAVAILABLE
    return None


if __name__ == "__main__":
    sys.exit(main())
