"""``campaigns demo``: the whole product on real services, in about a minute.

Migrates, seeds customers (with names and attributes; some opted out, some inactive, some with addresses the
provider rejects), starts the provider simulator (WhatsApp Cloud API, Twilio-style SMS, SMTP) and a worker,
creates one campaign per channel, personalised per recipient, under realistic rate limits (the SMS one is
paused and resumed on the way), shows live progress, and ends with the analytics per campaign. The simulator
reports deliveries, reads, bounces and complaints back through the webhook receiver (``app/webhooks.py``,
signed callbacks), so the report shows delivered/read/bounced rates. Exit code 0 only if every campaign reached
a terminal state, its analytics equal its recipient log, and its receipt counters equal the callbacks the
receiver acknowledged. A table shows a few messages per channel as the provider received them, each with its
recipient's own name and tier.

On a terminal the progress is a live table; printed to anything else (CI logs, ``| tee``) it is a line per
campaign every few seconds, and the tables are transposed (one column per campaign), so every line fits
80 columns.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta

import psycopg2
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from app.webhooks import WebhookThread
from campaigns.db import repository as repo
from campaigns.db.engine import make_engine, make_sessionmaker, transaction, upgrade
from campaigns.db.seed import SeedPlan, invalid_addresses, seed
from campaigns.service import CampaignService
from campaigns.settings import Settings
from producers.topics import ensure_topics, topic_specs
from simulator.server import template_registration
from simulator.thread import SimulatorThread
from streams.worker import Worker

TERMINAL = ("completed", "failed", "cancelled")
# What the simulator reports back after a send (simulator/callbacks.py): shares of the accepted messages.
DEMO_RECEIPTS = {"delivered": 0.9, "read": 0.6, "bounced": 0.03, "undelivered": 0.02, "complained": 0.01}
RECEIPT_COUNTERS = ("delivered", "read", "bounced", "complained")
COUNTED = ("sent", "failed", "skipped", "cancelled")


@dataclass(frozen=True)
class DemoSize:
    customers: int
    rates: dict[str, tuple[float, int]]  # channel -> (messages/s, burst)
    timeout_s: float


FULL = DemoSize(6000, {"whatsapp": (80, 80), "sms": (100, 20), "email": (150, 50)}, 300)
QUICK = DemoSize(900, {"whatsapp": (150, 50), "sms": (150, 50), "email": (300, 50)}, 180)


def run_demo(settings: Settings, *, quick: bool = False, console: Console | None = None) -> int:
    console = console or Console()
    size = QUICK if quick else FULL
    console.print("[bold]campaigns demo[/bold]: migrating, creating topics, seeding")
    upgrade(settings.database)
    ensure_topics(settings.kafka, topic_specs(settings))
    sessions = make_sessionmaker(make_engine(settings.database))
    service = CampaignService(sessions)
    run = uuid.uuid4().hex[:6]
    plan = SeedPlan(customers=size.customers, first_id=_next_free_customer_id(settings), segments=3,
                    segment_prefix=f"demo-{run}", invalid_every=37)
    started = time.monotonic()
    segments = seed(settings.database.dsn(), plan)
    console.print(f"seeded {plan.customers} customers in 3 segments in {time.monotonic() - started:.1f}s "
                  f"(opted out: every 50th, inactive: every 97th, rejected by the provider: every 37th)")
    with transaction(sessions) as session:
        for channel, (rate, burst) in size.rates.items():
            repo.upsert_channel(session, id=f"{channel}-demo", kind=channel, provider="simulator",
                                rate_per_s=rate, burst=burst)
    service.bootstrap_principal("demo-marketer", "marketer")
    # Personalised per recipient at send time (first name and tier from each customer's profile; the discount is
    # the campaign's variable, filled in when the campaign is created).
    templates = {
        "whatsapp": ("spring_sale", None, "Hi {{ first_name | default: 'there' }}! {{ discount }} off everything "
                     "this week for our {{ attributes.tier | default: 'member' }} members."),
        "sms": ("spring_sale_sms", None, "Hi {{ first_name | default: 'there' }}, spring sale: {{ discount }} off. "
                "Reply STOP to opt out."),
        "email": ("spring_sale_email", "{{ first_name | default: 'Friend' }}, spring sale: {{ discount }} off",
                  "<p>Hello {{ first_name | default: 'friend' }}! <b>{{ discount }}</b> off for "
                  "{{ attributes.tier | default: 'member' | upper }} members.</p>"
                  '<p><a href="{{ unsubscribe_url }}">Unsubscribe</a></p>'),
    }
    campaign_ids: dict[str, uuid.UUID] = {}
    # The WhatsApp Cloud API renders templates itself and knows only those approved in the business account:
    # the simulator is told about ours (name, language, number of body parameters) the same way.
    provider_templates = [template_registration(f"{name}_{run}", "en", body)
                          for channel, (name, _, body) in templates.items() if channel == "whatsapp"]
    for channel, (name, subject, body) in templates.items():
        service.add_template(None, name=f"{name}_{run}", channel=channel, body=body, subject=subject, approve=True)
        campaign_ids[channel] = service.create_campaign("demo-marketer", {
            "name": f"Spring sale ({channel})", "channel": channel,
            "template": {"name": f"{name}_{run}"}, "variables": {"discount": "20%"},
            "segments": [str(s) for s in segments[:2]] if channel != "email" else [str(s) for s in segments],
            "batch_size": 500,
            "retry_policy": {"max_retries": 3, "backoff_base_s": 0.5, "backoff_max_s": 4, "jitter": 0.2},
            "failure_threshold": 0.5,
        })
        service.schedule_campaign("demo-marketer", campaign_ids[channel])

    from api.server import ApiThread

    # The live dashboard of `campaigns api`, served from this process while the campaigns run (a free port if
    # CAMPAIGNS_API__PORT is taken); the marketer's token opens it.
    service.provision_principal("demo-admin", "admin")
    _, dashboard_token = service.create_token("demo-admin", "demo-marketer", expires_in=timedelta(hours=12))
    with ApiThread(settings) as dashboard, WebhookThread(settings) as hooks, \
            SimulatorThread(latency_ms=(2, 20), transient_error_rate=0.03, seed=7,
                            permanent_failures=frozenset(invalid_addresses(plan)),
                            templates=provider_templates, credentials=settings.providers,
                            webhook_secrets=settings.webhooks, webhook_url=hooks.url,
                            receipt_ratios=DEMO_RECEIPTS, receipt_delay_ms=(50, 1500)) as simulator:
        # Two lines: each fits 80 columns in a pipe (the token alone is 65 characters).
        console.print(f"dashboard: {dashboard.url} (demo-marketer's API token, 12 h:)", highlight=False, soft_wrap=True)
        console.print(f"  {dashboard_token}", highlight=False, soft_wrap=True)
        # Unsubscribe links point at this process's API (POST /unsubscribe, RFC 8058 one-click).
        unsubscribe = settings.unsubscribe.model_copy(update={"url": dashboard.url.rstrip("/") + "/unsubscribe"})
        worker_settings = settings.model_copy(update={"providers": simulator.provider_settings(),
                                                      "unsubscribe": unsubscribe})
        stages = ("scheduler", "expander", "senders", "tally", "completion", "receipts")
        with Worker(worker_settings, stages=stages) as worker:
            ok = _watch(console, service, settings, campaign_ids, size.timeout_s, pause_channel="sms")
            receipts_ok = _await_receipts(console, simulator, settings, campaign_ids, timeout_s=60)
            errors = list(worker.errors)
        stats = simulator.stats()
        # A request the provider refuses as malformed (wrong template parameters, missing fields, a bad
        # email) is a bug in what we send, not a fault to retry: the demo is not green with one.
        malformed = [r for r in simulator.refused if r.outcome == "invalid"]
        samples = {channel: simulator.query(channel=channel)[:3] for channel in templates}
    ok = _report(console, settings, campaign_ids, service) and ok and receipts_ok and not errors and not malformed
    console.print(_personalisation_table(samples))
    console.print(_simulator_table(stats))
    console.print(
        f"\nnext: metrics at http://127.0.0.1:{settings.metrics_port}/metrics while a worker runs; topics: "
        "campaign.messages.<channel>, delivery.outcomes, campaign.analytics; dead letters: "
        "`campaigns dlq list`"
    )
    if errors:
        console.print(f"[red]worker stage errors: {errors}[/red]")
    if malformed:
        console.print(f"[red]the provider refused {len(malformed)} malformed request(s), e.g. "
                      f"{malformed[0].channel} {malformed[0].code}: {malformed[0].reason}[/red]")
    console.print("[green]demo OK[/green]" if ok else "[red]demo FAILED[/red]")
    return 0 if ok else 1


def _receipt_totals(settings: Settings, campaign_id: uuid.UUID) -> dict[str, int]:
    with psycopg2.connect(settings.database.dsn()) as conn, conn.cursor() as cur:
        cur.execute(f"SELECT {', '.join(RECEIPT_COUNTERS)} FROM campaign_analytics "
                    "WHERE campaign_id = %s AND window_start IS NULL", (str(campaign_id),))
        row = cur.fetchone() or (0,) * len(RECEIPT_COUNTERS)
    conn.close()
    return dict(zip(RECEIPT_COUNTERS, map(int, row), strict=True))


def _await_receipts(console: Console, simulator: object, settings: Settings, campaign_ids: dict[str, uuid.UUID],
                    timeout_s: float) -> bool:
    """Wait (bounded) until the simulator has posted every callback and each campaign's receipt counters equal
    the callbacks the receiver acknowledged (an email's soft bounce counts as bounced)."""
    deadline = time.monotonic() + timeout_s
    want: dict[str, dict[str, int]] = {}
    while time.monotonic() < deadline:
        report = simulator.callbacks()  # type: ignore[attr-defined]
        if report["pending"] == 0:
            for channel in campaign_ids:
                got = report["acknowledged"].get(channel, {})
                soft = got.get("undelivered", 0) if channel == "email" else 0
                want[channel] = {"delivered": got.get("delivered", 0), "read": got.get("read", 0),
                                 "bounced": got.get("bounced", 0) + soft, "complained": got.get("complained", 0)}
            if all(_receipt_totals(settings, cid) == want[ch] for ch, cid in campaign_ids.items()):
                return True
        time.sleep(0.5)
    console.print(f"[red]receipts did not match the acknowledged callbacks: {want}[/red]")
    return False


def _next_free_customer_id(settings: Settings) -> int:
    with psycopg2.connect(settings.database.dsn()) as conn, conn.cursor() as cur:
        cur.execute("SELECT coalesce(max(id), 0) FROM customers")
        top = cur.fetchone()[0]
    conn.close()
    return int(top) + 1


def _log_counts(settings: Settings, ids: list[uuid.UUID]) -> dict[str, dict[str, int]]:
    with psycopg2.connect(settings.database.dsn()) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT campaign_id::text, status, count(*) FROM campaign_recipient_log "
            "WHERE campaign_id = ANY(%s::uuid[]) GROUP BY 1, 2", ([str(i) for i in ids],),
        )
        counts: dict[str, dict[str, int]] = {str(i): {} for i in ids}
        for cid, status, n in cur.fetchall():
            counts[cid][status] = n
    conn.close()
    return counts


PROGRESS_EVERY_S = 5.0  # a progress line per campaign this often when not on a terminal
WIDE_MIN = 120  # terminal columns the one-row-per-campaign tables need; narrower ones get transposed tables


def _wide(console: Console) -> bool:
    return console.is_terminal and console.width >= WIDE_MIN


@dataclass(frozen=True)
class Progress:
    """One campaign's progress at one moment (from its view and the recipient log)."""

    channel: str
    status: str
    total: int | None
    counts: dict[str, int]
    rate_per_s: float

    @property
    def done(self) -> int:
        return sum(self.counts.get(s, 0) for s in COUNTED)

    @property
    def in_flight(self) -> int:
        return self.counts.get("retrying", 0) + self.counts.get("claimed", 0)


def _watch(
    console: Console, service: CampaignService, settings: Settings, campaign_ids: dict[str, uuid.UUID],
    timeout_s: float, pause_channel: str,
) -> bool:
    """Show progress until every campaign is terminal (True) or ``timeout_s`` passes (False); pauses the
    ``pause_channel`` campaign once 100 are sent and resumes it 3 s later."""
    if console.is_terminal:
        with Live(console=console, refresh_per_second=4, transient=False) as live:
            return _watch_loop(console, service, settings, campaign_ids, timeout_s, pause_channel,
                               lambda rows, final: live.update(_live_table(rows, wide=_wide(console))))
    started = time.monotonic()
    last_print = [float("-inf")]
    last_status: dict[str, str] = {}

    def lines(rows: list[Progress], final: bool) -> None:
        now = time.monotonic()
        changed = any(last_status.get(r.channel) != r.status for r in rows)
        if final or changed or now - last_print[0] >= PROGRESS_EVERY_S:
            last_print[0] = now
            for row in rows:
                console.print(_progress_line(row, now - started), highlight=False, soft_wrap=True)
        last_status.update({r.channel: r.status for r in rows})

    return _watch_loop(console, service, settings, campaign_ids, timeout_s, pause_channel, lines)


def _watch_loop(
    console: Console, service: CampaignService, settings: Settings, campaign_ids: dict[str, uuid.UUID],
    timeout_s: float, pause_channel: str, show: Callable[[list[Progress], bool], None],
) -> bool:
    deadline = time.monotonic() + timeout_s
    paused_at: float | None = None
    resumed = False
    last: dict[str, tuple[float, int]] = {}
    while time.monotonic() < deadline:
        views = {ch: service.get_campaign("demo-marketer", cid) for ch, cid in campaign_ids.items()}
        counts = _log_counts(settings, list(campaign_ids.values()))
        now = time.monotonic()
        rows = []
        for channel, view in views.items():
            c = counts[str(view.id)]
            prev_t, prev_sent = last.get(channel, (now, 0))
            rate = (c.get("sent", 0) - prev_sent) / (now - prev_t) if now > prev_t else 0.0
            last[channel] = (now, c.get("sent", 0))
            rows.append(Progress(channel, view.status, view.total_recipients, c, rate))
        finished = all(v.status in TERMINAL for v in views.values())
        show(rows, finished)
        if finished:
            return True
        # The operator's pause and resume, part of the show: pause once some are sent, resume 3 s later.
        paused_view = views[pause_channel]
        sent_so_far = counts[str(paused_view.id)].get("sent", 0)
        if paused_at is None and sent_so_far >= 100 and paused_view.status == "active":
            service.pause_campaign("demo-marketer", paused_view.id)
            paused_at = now
            console.print(f"[yellow]paused the {pause_channel} campaign[/yellow]")
        elif paused_at is not None and not resumed and now - paused_at >= 3:
            service.resume_campaign("demo-marketer", paused_view.id)
            resumed = True
            console.print(f"[yellow]resumed the {pause_channel} campaign[/yellow]")
        time.sleep(0.5)
    console.print("[red]timed out waiting for the campaigns to finish[/red]")
    return False


def _live_table(rows: list[Progress], *, wide: bool) -> Table | Group:
    """The terminal's live view: one row per campaign, or one column per campaign when ``wide`` is False."""
    fields = ("status", "recipients", "sent", "failed", "retrying", "skipped", "cancelled", "rate/s", "progress")
    values = {
        r.channel: {
            "status": r.status, "recipients": str(r.total or "…"), "sent": str(r.counts.get("sent", 0)),
            "failed": str(r.counts.get("failed", 0)), "retrying": str(r.in_flight),
            "skipped": str(r.counts.get("skipped", 0)), "cancelled": str(r.counts.get("cancelled", 0)),
            "rate/s": f"{r.rate_per_s:.0f}", "progress": _bar(r.done, r.total, width=20 if wide else 10),
        }
        for r in rows
    }
    if not wide:
        return _transposed("campaigns (live)", values, fields)
    table = Table(title="campaigns (live)")
    for column in ("channel", *fields):
        table.add_column(column)
    for channel, row in values.items():
        table.add_row(channel, *(row[f] for f in fields))
    return table


def _progress_line(r: Progress, elapsed_s: float) -> str:
    """One campaign's progress in one line of at most 80 characters (for logs): time, channel, status,
    terminal recipients of the total, then sent/failed/in flight."""
    total = str(r.total) if r.total else "?"
    share = f"{100 * r.done / r.total:3.0f}%" if r.total else "  …"
    return (f"{elapsed_s:5.0f}s {r.channel:<8} {r.status:<9} {r.done:>6}/{total:<6} {share} "
            f"sent {r.counts.get('sent', 0)} failed {r.counts.get('failed', 0)} in flight {r.in_flight}")


def _bar(done: int, total: int | None, width: int = 20) -> str:
    if not total:
        return "expanding…"
    filled = int(width * min(done, total) / total)
    return "█" * filled + "░" * (width - filled) + f" {100 * done / total:.0f}%"


REPORT_COLUMNS = ("status", "recipients", *COUNTED, "retried", "avg latency ms", "delivered", "read", "bounced",
                  "analytics = log")


def _report(console: Console, settings: Settings, campaign_ids: dict[str, uuid.UUID],
            service: CampaignService) -> bool:
    counts = _log_counts(settings, list(campaign_ids.values()))
    rows: dict[str, dict[str, str]] = {}
    ok = True
    with psycopg2.connect(settings.database.dsn()) as conn, conn.cursor() as cur:
        for channel, cid in campaign_ids.items():
            cur.execute(
                "SELECT sent, failed, skipped, cancelled, retried, latency_sum_ms / nullif(latency_count, 0), "
                "delivered, read, bounced "
                "FROM campaign_analytics WHERE campaign_id = %s AND window_start IS NULL", (str(cid),))
            row = cur.fetchone() or (0, 0, 0, 0, 0, None, 0, 0, 0)
            analytics = dict(zip(COUNTED, row[:4], strict=True))
            log = {s: counts[str(cid)].get(s, 0) for s in COUNTED}
            view = service.get_campaign("demo-marketer", cid)
            equal = analytics == log and sum(log.values()) == (view.total_recipients or -1)
            ok = ok and equal and view.status in TERMINAL
            rows[channel] = {
                "status": view.status, "recipients": str(view.total_recipients),
                **{s: str(analytics[s]) for s in COUNTED}, "retried": str(row[4]),
                "avg latency ms": f"{row[5]:.1f}" if row[5] else "-",
                **{name: _rate(n, row[0]) for name, n in zip(("delivered", "read", "bounced"), row[6:9], strict=True)},
                "analytics = log": "yes" if equal else "[red]NO[/red]",
            }
    conn.close()
    title = "analytics per campaign (campaign_analytics totals vs campaign_recipient_log)"
    table: Table | Group
    if _wide(console):
        table = Table(title=title)
        for column in ("channel", *REPORT_COLUMNS):
            table.add_column(column)
        for channel, values in rows.items():
            table.add_row(channel, *(values[c] for c in REPORT_COLUMNS))
    else:
        table = _transposed(title, rows, REPORT_COLUMNS)
    console.print(table)
    return ok


def _rate(count: int, sent: int) -> str:
    """``count`` and its share of the sent messages, e.g. ``812 (91%)``."""
    return f"{count} ({100 * count / sent:.0f}%)" if sent else str(count)


def _transposed(title: str, rows: dict[str, dict[str, str]], fields: Sequence[str]) -> Group:
    """A table with one column per campaign (channel) and one row per field, as narrow as its values,
    under its title (a line of its own: a table title would be wrapped to the table's width)."""
    table = Table()
    table.add_column("")
    for channel in rows:
        table.add_column(channel, justify="right")
    for name in fields:
        table.add_row(name, *(rows[channel].get(name, "-") for channel in rows))
    return Group(Text(title, style="italic"), table)


def _personalisation_table(samples: Mapping[str, Sequence[object]]) -> Table:
    """A few messages per channel as the provider received them: each recipient's own values."""
    table = Table(title="personalised per recipient (as the provider received them)", title_justify="left")
    table.add_column("channel")
    table.add_column("to")
    table.add_column("what the recipient gets", overflow="fold")
    for channel, messages in samples.items():
        for m in messages:
            if channel == "whatsapp":
                shown = "template parameters " + " | ".join(getattr(m, "template_parameters", ()))
            elif channel == "email":
                shown = f"subject {getattr(m, 'subject', '')!r}; {getattr(m, 'body', '').splitlines()[0]}"
            else:
                shown = getattr(m, "body", "")
            table.add_row(channel, getattr(m, "to", ""), shown)
    return table


def _simulator_table(stats: Mapping[str, Mapping[str, object]]) -> Group:
    """What the provider simulator saw, per channel (accepted, throttled, errors, ...)."""
    fields = list(dict.fromkeys(name for per_channel in stats.values() for name in per_channel))
    rows = {channel: {name: str(value) for name, value in per_channel.items()} for channel, per_channel in
            stats.items()}
    return _transposed("provider simulator saw", rows, fields)
