"""Issue 17's acceptance, every piece a subprocess as users start it: 10,000 customers imported from CSV
(``campaigns import customers`` / ``import segment``), a WhatsApp template with two per-recipient parameters and an
email with ``{{ first_name }}`` in subject and body, sent by ``campaigns worker`` to ``python -m simulator`` (which
calls back, signed, through ``campaigns webhooks``). Every provider request carries its recipient's own values;
``campaign_analytics`` delivered/read equal the callbacks the receiver acknowledged; a hard-bounced address is
suppressed in the next campaign."""

from __future__ import annotations

import csv
import json
import uuid
from pathlib import Path

import pytest

from campaigns.settings import Settings
from tests.entrypoints.conftest import EntryPoints, get_json, query, total_recipients, wait_finished
from tests.faults.procs import free_port
from tests.helpers import wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]

CUSTOMERS = 10_000
NAMES = ("Ana", "Bruno", "Chloé", "Dmitri", "Émile", "Farid", "Grace", "Hiro")
PLANS = ("gold", "silver", "bronze")
BOUNCING = ("imp7@example.com", "imp8@example.com")
FOLLOW_UP = 500  # the customers of the email campaign after the bounces (imp-1 .. imp-500: the bounced among them)
WA_BODY = ("Hi {{ first_name | default: 'there' }}, your {{ attributes.plan | default: 'basic' }} plan: "
           "{{ discount }} off.")
EMAIL_SUBJECT = "{{ first_name | default: 'Friend' }}, {{ discount }} off"
EMAIL_BODY = "<p>Hello {{ first_name | default: 'there' }}!</p><p><a href=\"{{ unsubscribe_url }}\">Unsubscribe</a></p>"


def _person(n: int) -> dict[str, str]:
    """Customer n: every tenth has no first name (the templates' default applies)."""
    return {"external_id": f"imp-{n}", "email": f"imp{n}@example.com", "phone": f"+1555{n:07d}",
            "whatsapp": f"+1555{n:07d}", "first_name": "" if n % 10 == 0 else NAMES[n % len(NAMES)],
            "last_name": "Import", "plan": PLANS[n % len(PLANS)]}


def _write_csv(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def _campaign(entry: EntryPoints, tmp_path: Path, name: str, channel: str, template: str, segment: int) -> str:
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({"name": name, "channel": channel, "template": {"name": template},
                                "variables": {"discount": "15%"}, "segments": [segment], "batch_size": 1000}))
    campaign_id = entry.cli("create", str(path), actor="alice").stdout.strip()
    entry.cli("schedule", campaign_id, "--at", "now", actor="alice")
    return str(uuid.UUID(campaign_id))


def test_an_imported_audience_gets_personalised_messages_and_its_receipts(
    entry: EntryPoints, settings: Settings, tmp_path: Path
):
    entry.cli("principal", "add", "alice", "--role", "marketer")
    people = {n: _person(n) for n in range(1, CUSTOMERS + 1)}
    imported = json.loads(entry.cli("import", "customers", str(_write_csv(tmp_path / "c.csv", list(people.values()))),
                                    actor="alice").stdout)
    assert imported["inserted"] == CUSTOMERS, imported
    segment = f"imported-{uuid.uuid4().hex[:6]}"
    members = _write_csv(tmp_path / "s.csv", [{"external_id": p["external_id"]} for p in people.values()])
    entry.cli("import", "segment", segment, str(members), actor="alice")
    segment_id = query(settings, "SELECT id FROM customer_segments WHERE name = %s", segment)[0][0]

    templates = {
        "whatsapp": {"name": "imported_offer", "channel": "whatsapp", "locale": "en", "body": WA_BODY},
        "email": {"name": "imported_mail", "channel": "email", "locale": "en", "subject": EMAIL_SUBJECT,
                  "body": EMAIL_BODY},
    }
    for channel, template in templates.items():
        entry.cli("channel", "add", channel, "--rate", "2000", "--burst", "200")
        entry.cli("template", "add", str(_write_json(tmp_path, template)), "--approve")

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    webhooks = entry.start("webhooks", "webhooks", "--port", str(port))
    wait_for(lambda: get_json(f"{base}/health")[0] == 200 or not webhooks.alive, timeout=60, interval=0.2,
             what="campaigns webhooks answering")
    assert webhooks.alive, webhooks.log_text()[-2000:]
    simulator = entry.start_simulator(
        "--template-file", str(tmp_path / "imported_offer.json"), "--webhook-url", base,
        "--receipts", "delivered=0.9,read=0.6", "--seed", "17", "--receipt-delay-ms", "0-200",
        "--bounce", ",".join(BOUNCING),
    )
    worker = entry.start_worker()

    whatsapp = _campaign(entry, tmp_path, "imported-wa", "whatsapp", "imported_offer", segment_id)
    email = _campaign(entry, tmp_path, "imported-mail", "email", "imported_mail", segment_id)
    for campaign_id in (whatsapp, email):
        assert wait_finished(settings, campaign_id, timeout=300, procs=entry) == "completed"

    # Every request carries its own recipient's values (and nothing went to anyone twice).
    by_phone = {p["whatsapp"].lstrip("+"): p for p in people.values()}
    by_email = {p["email"]: p for p in people.values()}
    sent_wa = simulator.messages("whatsapp")
    assert sorted(m["to"].lstrip("+") for m in sent_wa) == sorted(by_phone)
    for m in sent_wa:
        person = by_phone[m["to"].lstrip("+")]
        assert list(m["template_parameters"]) == [person["first_name"] or "there", person["plan"], "15%"], m
    sent_mail = simulator.messages("email")
    assert sorted(m["to"] for m in sent_mail) == sorted(by_email)
    for m in sent_mail:
        first = by_email[m["to"]]["first_name"]
        assert m["subject"] == f"{first or 'Friend'}, 15% off", m["subject"]
        assert f"Hello {first or 'there'}!" in m["html_body"] and f"Hello {first or 'there'}!" in m["body"]

    # Receipts: campaign_analytics' delivered/read are what the receiver acknowledged of the simulator's callbacks.
    wait_for(lambda: simulator._call("GET", "/_control/callbacks")["pending"] == 0, timeout=120, interval=0.25,
             what="the simulator's callbacks all posted")
    acknowledged = simulator._call("GET", "/_control/callbacks")
    assert acknowledged["failed"] == 0, acknowledged

    def totals(campaign_id: str) -> dict[str, int]:
        rows = query(settings, "SELECT sent, delivered, read, bounced FROM campaign_analytics "
                               "WHERE campaign_id = %s AND window_start IS NULL", campaign_id)
        return dict(zip(("sent", "delivered", "read", "bounced"), rows[0], strict=True)) if rows else {}

    for channel, campaign_id in (("whatsapp", whatsapp), ("email", email)):
        got = acknowledged["acknowledged"][channel]
        assert got.get("delivered", 0) > CUSTOMERS // 2, got
        assert got.get("read", 0) > CUSTOMERS // 4 if channel == "whatsapp" else got.get("bounced") == len(BOUNCING)
        wait_for(lambda c=campaign_id, g=got: totals(c).get("delivered") == g.get("delivered", 0)
                 and totals(c).get("read") == g.get("read", 0), timeout=120, interval=0.25,
                 what=f"{channel}: delivered/read equal to the acknowledged callbacks {got}")
        assert totals(campaign_id)["delivered"] <= totals(campaign_id)["sent"] == CUSTOMERS

    # The hard bounces are suppressed: the next email campaign to these customers skips them. (It goes to the first
    # FOLLOW_UP imported customers, the bounced among them, through the same import path: suppression is by address,
    # so sending all 10,000 again would prove nothing more, and cost a minute.)
    wait_for(lambda: {a for (a,) in query(settings, "SELECT address FROM suppressions WHERE channel_kind = 'email' "
                                                    "AND reason = 'hard_bounce'")} >= set(BOUNCING),
             timeout=60, interval=0.25, what=f"{BOUNCING} suppressed")
    follow_up = f"imported-again-{uuid.uuid4().hex[:6]}"
    again_members = [{"external_id": people[n]["external_id"]} for n in range(1, FOLLOW_UP + 1)]
    assert {by_email[a]["external_id"] for a in BOUNCING} <= {m["external_id"] for m in again_members}
    entry.cli("import", "segment", follow_up, str(_write_csv(tmp_path / "again.csv", again_members)), actor="alice")
    follow_up_id = query(settings, "SELECT id FROM customer_segments WHERE name = %s", follow_up)[0][0]
    again = _campaign(entry, tmp_path, "imported-mail-again", "email", "imported_mail", follow_up_id)
    assert wait_finished(settings, again, timeout=300, procs=entry) == "completed"
    skipped = query(settings, "SELECT c.email, l.failure_reason FROM campaign_recipient_log AS l JOIN customers AS c "
                              "ON c.id = l.recipient_id WHERE l.campaign_id = %s AND l.status = 'skipped'", again)
    assert sorted(skipped) == sorted((a, "suppressed") for a in BOUNCING)
    assert total_recipients(settings, again) == FOLLOW_UP
    assert worker.alive and webhooks.alive


def _write_json(tmp_path: Path, template: dict[str, str]) -> Path:
    path = tmp_path / f"{template['name']}.json"
    path.write_text(json.dumps(template))
    return path
