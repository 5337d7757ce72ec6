"""Per-recipient personalisation end to end (issue 17, parts 1-3): real Kafka, PostgreSQL, the real WhatsApp and
SMTP transports over HTTP/SMTP to the provider simulator, and the one-click unsubscribe through a ``campaigns api``
subprocess.

Customers with different first names and attributes (one without a first name, one whose name is hostile
markup with a line break) get a WhatsApp template with two per-recipient parameters and an email with
``{{ first_name }}`` in subject and body; the simulator, which validates parameter counts and the MIME structure
as providers do, must have received every recipient's own values and nobody else's. Then one recipient's
``List-Unsubscribe`` URI is POSTed (RFC 8058) to the API: the address is suppressed and the customer opted
out, and the next email campaign skips them.
"""

from __future__ import annotations

import html
import json
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import psycopg2
import pytest
from pydantic import SecretStr

from campaigns.core.unsubscribe import verify
from simulator.server import template_registration
from simulator.thread import SimulatorThread
from streams.worker import Worker
from tests.api.conftest import start_api
from tests.entrypoints.conftest import entry_points
from tests.faults.procs import Secrets
from tests.helpers import wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]

STAGES = ("scheduler", "expander", "senders", "tally", "completion")
SECRET = "e2e-unsubscribe-secret"
WA_HEADER = "Offer for {{ last_name | upper }}"
WA_BODY_PT = (
    "Olá {{ first_name | default: 'você' }}! Cliente {{ attributes.tier | default: 'membro' | upper }}: {{ discount }}."
)
WA_BODY = (
    "Hi {{ first_name | default: 'there' }}! As a {{ attributes.tier | default: 'member' | upper }} member "
    "you get {{ discount }} off."
)
EMAIL_SUBJECT = "{{ first_name | default: 'Friend' }}, {{ discount }} off is yours"
EMAIL_BODY = (
    '<p>Hello <b>{{ first_name | default: "friend" }}</b>, your tier is {{ attributes.tier | '
    "default: 'member' }}.</p><p><a href=\"{{ unsubscribe_url }}\">Unsubscribe</a></p>"
)
# (id, first name, tier or None); the last two: no first name, and a hostile one. 105 prefers pt-BR, 104 pt-PT (no
# template in it: the same language, pt-BR, is chosen).
PT = {105: "pt-BR", 104: "pt-PT"}
PEOPLE = [
    (101, "Ana", "gold"),
    (102, "Bruno", "silver"),
    (103, "Chloé", None),
    (104, "Dmitri", "bronze"),
    (105, "Émile", "gold"),
    (106, None, "silver"),
    (107, "<b>Eve</b>\r\nBcc: x@evil.example", "gold"),
]


def insert_customers(settings) -> None:
    with psycopg2.connect(settings.database.dsn()) as conn, conn.cursor() as cur:
        for cid, first, tier in PEOPLE:
            attributes = {"tier": tier} if tier else {"points": 5}
            cur.execute(
                "INSERT INTO customers (id, email, phone, whatsapp, first_name, last_name, attributes, locale) "
                "VALUES (%s, %s, %s, %s, %s, 'Test', %s::jsonb, %s)",
                (
                    cid,
                    f"p{cid}@example.com",
                    f"+1555000{cid:06d}",
                    f"+1555000{cid:06d}",
                    first,
                    json.dumps(attributes),
                    PT.get(cid, "en"),
                ),
            )
    conn.close()


def rows(settings, sql: str, *params) -> list[tuple]:
    with psycopg2.connect(settings.database.dsn()) as conn, conn.cursor() as cur:
        cur.execute(sql, params)
        found = cur.fetchall()
    conn.close()
    return found


def run_campaigns(service, settings, simulator, payloads: list[dict], unsubscribe_url: str) -> list[uuid.UUID]:
    ids = []
    for payload in payloads:
        campaign_id = service.create_campaign("marketer-1", payload)
        service.schedule_campaign("marketer-1", campaign_id)
        ids.append(campaign_id)
    worker_settings = settings.model_copy(
        update={
            "providers": simulator.provider_settings(),
            "unsubscribe": settings.unsubscribe.model_copy(
                update={"secret": SecretStr(SECRET), "url": unsubscribe_url}
            ),
        }
    )
    with Worker(worker_settings, stages=STAGES, channels=("whatsapp", "email"), rate_limits=False) as worker:
        for campaign_id in ids:
            wait_for(
                lambda c=campaign_id: service.get_campaign("marketer-1", c).status in ("completed", "failed"),
                timeout=120,
                what=f"campaign {campaign_id} finished",
            )
    assert worker.errors == []
    return ids


def test_every_request_carries_its_recipients_values_and_one_click_unsubscribe_suppresses(
    settings, service, tmp_path: Path
):
    insert_customers(settings)
    with entry_points(settings, Secrets(), tmp_path / "logs") as entry:
        api = start_api(entry, CAMPAIGNS_UNSUBSCRIBE__SECRET=SECRET)
        try:
            check_personalised_and_unsubscribe(settings, service, api, f"{api.base}/unsubscribe")
        finally:
            api.close()


def check_personalised_and_unsubscribe(settings, service, api, unsubscribe_url: str) -> None:
    ids = [str(cid) for cid, _, _ in PEOPLE]
    service.add_template(None, name="tiered_offer", channel="whatsapp", body=WA_BODY, subject=WA_HEADER, approve=True)
    service.add_template(None, name="tiered_offer", channel="whatsapp", body=WA_BODY_PT, locale="pt-BR", approve=True)
    registration = template_registration("tiered_offer", "en", WA_BODY, WA_HEADER)
    assert registration["parameters"] == 3  # two from the profile, one campaign variable
    assert registration["header_parameters"] == 1
    common = {
        "variables": {"discount": "20%"},
        "manual_recipients": ids,
        "batch_size": 3,
        "retry_policy": {"max_retries": 1, "backoff_base_s": 0.1, "backoff_max_s": 0.2, "jitter": 0.1},
    }
    registrations = [registration, template_registration("tiered_offer", "pt-BR", WA_BODY_PT)]
    with SimulatorThread(templates=registrations) as simulator:
        whatsapp_id, email_id = run_campaigns(
            service,
            settings,
            simulator,
            [
                {"name": "wa personal", "channel": "whatsapp", "template": {"name": "tiered_offer"}, **common},
                {
                    "name": "mail personal",
                    "channel": "email",
                    "content": {"subject": EMAIL_SUBJECT, "body": EMAIL_BODY},
                    **common,
                },
            ],
            unsubscribe_url,
        )
        whatsapp = {m.to.lstrip("+"): m for m in simulator.query(channel="whatsapp")}
        email = {m.to: m for m in simulator.query(channel="email")}
        refused = list(simulator.refused)
    assert refused == []
    assert rows(
        settings,
        "SELECT DISTINCT status FROM campaign_recipient_log WHERE campaign_id IN (%s, %s)",
        str(whatsapp_id),
        str(email_id),
    ) == [("sent",)]

    # WhatsApp: the template's parameters, rendered for each recipient, in the template's order; one line each.
    assert len(whatsapp) == len(PEOPLE)
    for cid, first, tier in PEOPLE:
        message = whatsapp[f"1555000{cid:06d}"]
        expected_first = first.replace("\r\n", " ") if first else "there"
        if cid in PT:  # the recipient's locale (or its language), with that locale's template and defaults
            assert message.template_language == "pt_BR", cid
            assert message.template_parameters == (expected_first, (tier or "membro").upper(), "20%"), cid
            continue
        assert message.template_language == "en"
        assert message.template_parameters == (expected_first, (tier or "member").upper(), "20%"), cid
        assert message.template_components["header"] == ("TEST",)
        assert message.template_components["body"] == message.template_parameters

    # Email: subject (one line), text and HTML parts, each recipient's own name; List-Unsubscribe with its token.
    assert len(email) == len(PEOPLE)
    for cid, first, tier in PEOPLE:
        message = email[f"p{cid}@example.com"]
        shown = (first or "friend").replace("\r\n", "\n")
        assert message.subject == f"{(first or 'Friend').replace(chr(13) + chr(10), ' ')}, 20% off is yours"
        assert message.headers["content-type"].startswith("multipart/alternative")
        assert f"Hello {shown}, your tier is {tier or 'member'}." in message.body
        assert f"<b>{html.escape(shown)}</b>" in message.html_body
        assert message.headers["list-unsubscribe-post"] == "List-Unsubscribe=One-Click"
        https_uri = message.headers["list-unsubscribe"].split(">")[0].lstrip("<")
        assert https_uri.startswith(unsubscribe_url + "?token=")
        claim = verify(SECRET.encode(), urlsplit(https_uri).query.removeprefix("token="))
        assert claim is not None and (claim.customer_id, claim.channel) == (cid, "email")
        assert html.escape(https_uri) in message.html_body  # {{ unsubscribe_url }} in the body too
    assert "<b>Eve</b>" not in email["p107@example.com"].html_body  # customer data never becomes markup

    # One-click unsubscribe (RFC 8058) through `campaigns api` as a subprocess.
    uri = email["p102@example.com"].headers["list-unsubscribe"].split(">")[0].lstrip("<")
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    forged = httpx.post(uri[:-4] + "AAAA", content=b"List-Unsubscribe=One-Click", headers=form, timeout=30)
    assert forged.status_code == 403, forged.text
    assert rows(settings, "SELECT count(*) FROM suppressions") == [(0,)]
    answer = httpx.post(uri, content=b"List-Unsubscribe=One-Click", headers=form, timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"unsubscribed": True, "channel": "email", "changed": True}
    assert httpx.post(uri, content=b"List-Unsubscribe=One-Click", headers=form, timeout=30).json()["changed"] is False
    assert rows(settings, "SELECT channel_kind, address, reason FROM suppressions") == [
        ("email", "p102@example.com", "unsubscribe")
    ]
    assert rows(settings, "SELECT opted_out_channels FROM customers WHERE id = 102") == [(["email"],)]

    # The next email campaign skips the unsubscribed customer.
    with SimulatorThread() as simulator:
        (next_id,) = run_campaigns(
            service,
            settings,
            simulator,
            [
                {
                    "name": "mail again",
                    "channel": "email",
                    "content": {"subject": EMAIL_SUBJECT, "body": EMAIL_BODY},
                    **common,
                }
            ],
            unsubscribe_url,
        )
        again_to = {m.to for m in simulator.query(channel="email")}
    assert "p102@example.com" not in again_to and len(again_to) == len(PEOPLE) - 1
    assert rows(
        settings,
        "SELECT status, failure_reason FROM campaign_recipient_log WHERE campaign_id = %s AND recipient_id = 102",
        str(next_id),
    ) == [("skipped", "opted_out")]


def test_a_message_over_max_sms_segments_fails_without_a_send(settings, service):
    """The static text fits one segment; a long first name pushes one recipient's message to two: that message is
    a permanent failure with the reason, never sent; the others go out."""
    insert_customers(settings)
    body = "Hi {{ first_name | default: 'there' }}! " + "Spring sale on everything in store today only. " * 2 + "x" * 40
    with SimulatorThread() as simulator:
        campaign_id = service.create_campaign(
            "marketer-1",
            {
                "name": "sms cap",
                "channel": "sms",
                "content": {"body": body},
                "manual_recipients": ["101", "107"],
                "max_sms_segments": 1,
                "failure_threshold": 1.0,
            },
        )
        service.schedule_campaign("marketer-1", campaign_id)
        worker_settings = settings.model_copy(update={"providers": simulator.provider_settings()})
        with Worker(worker_settings, stages=STAGES, channels=("sms",), rate_limits=False) as worker:
            wait_for(
                lambda: service.get_campaign("marketer-1", campaign_id).status in ("completed", "failed"),
                timeout=120,
                what="campaign finished",
            )
        assert worker.errors == []
        sent_to = [m.to for m in simulator.query(channel="sms")]
    assert sent_to == ["+1555000000101"]
    ((status, reason),) = rows(
        settings,
        "SELECT status, failure_reason FROM campaign_recipient_log WHERE campaign_id = %s AND recipient_id = 107",
        str(campaign_id),
    )
    assert status == "failed" and reason.startswith("too_many_segments: 2 GSM-7 segments"), reason
    estimate = service.campaign_status("marketer-1", campaign_id).sms
    assert estimate is not None and estimate["segments"] == 1 and estimate["max_sms_segments"] == 1
