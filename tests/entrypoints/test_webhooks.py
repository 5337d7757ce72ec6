"""Delivery receipts end to end, every piece a subprocess as users start them: ``campaigns webhooks``, ``python -m
simulator --webhook-url ...`` (signed callbacks, seeded ratios) and ``campaigns worker`` (default stages). An SMS
and an email campaign run; the simulator calls back; ``campaign_analytics`` delivered/read/bounced/complained equal
the callbacks the receiver acknowledged; a hard-bounced address is suppressed in the next campaign; forged and
unsigned webhook calls are refused (401/403) and change nothing."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from campaigns.core.webhook_signatures import meta_signature, twilio_signature
from campaigns.settings import Settings
from tests.entrypoints.conftest import REPO_ROOT, EntryPoints, get_json, query, wait_finished
from tests.faults.procs import free_port
from tests.helpers import wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]

EXAMPLES = REPO_ROOT / "examples"
RATIOS = "delivered=0.8,read=0.5,bounced=0.1,undelivered=0.05,complained=0.2"


def _post(url: str, body: bytes, headers: dict[str, str]) -> int:
    request = urllib.request.Request(url, data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _totals(settings: Settings, campaign_id: str) -> dict[str, int]:
    rows = query(
        settings,
        "SELECT sent, delivered, read, bounced, complained FROM campaign_analytics "
        "WHERE campaign_id = %s AND window_start IS NULL",
        campaign_id,
    )
    return dict(zip(("sent", "delivered", "read", "bounced", "complained"), rows[0], strict=True)) if rows else {}


def _campaign(entry: EntryPoints, tmp_path: Path, channel: str, segments: list[int], name: str) -> str:
    payload = json.loads((EXAMPLES / f"campaign-{channel}.json").read_text())
    payload.pop("start_at", None)
    payload["name"] = name
    if "segments" in payload:
        payload["segments"] = [segments[i - 1] for i in payload["segments"]]
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(payload))
    campaign_id = entry.cli("create", str(path), actor="alice").stdout.strip()
    entry.cli("schedule", campaign_id, "--at", "now", actor="alice")
    return str(uuid.UUID(campaign_id))


def _callbacks(simulator: Any) -> dict[str, Any]:
    return simulator._call("GET", "/_control/callbacks")


def test_receipts_flow_back_and_bounces_are_suppressed(entry: EntryPoints, settings: Settings, tmp_path: Path):
    entry.cli("principal", "add", "alice", "--role", "marketer")
    for channel in ("sms", "email"):
        entry.cli("channel", "add", channel, "--rate", "200", "--burst", "50")
        entry.cli("template", "add", str(EXAMPLES / f"template-{channel}.json"), "--approve")
    segments = json.loads(entry.cli("seed", "--customers", "300").stdout)["segments"]

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    webhooks = entry.start("webhooks", "webhooks", "--port", str(port))
    wait_for(
        lambda: get_json(f"{base}/health")[0] == 200 or not webhooks.alive,
        timeout=60,
        interval=0.2,
        what="campaigns webhooks answering",
    )
    assert webhooks.alive, webhooks.log_text()[-2000:]
    simulator = entry.start_simulator(
        "--webhook-url", base, "--receipts", RATIOS, "--seed", "7", "--receipt-delay-ms", "0-300"
    )
    worker = entry.start_worker()

    first = {
        channel: _campaign(entry, tmp_path, channel, segments, f"receipts-{channel}") for channel in ("sms", "email")
    }
    for channel, campaign_id in first.items():
        assert wait_finished(settings, campaign_id, timeout=120, procs=entry) == "completed", channel
    wait_for(
        lambda: _callbacks(simulator)["pending"] == 0,
        timeout=60,
        interval=0.25,
        what="the simulator's callbacks all posted",
    )
    acked = _callbacks(simulator)
    assert acked["failed"] == 0, acked
    sms, email = acked["acknowledged"]["sms"], acked["acknowledged"]["email"]
    assert sms.get("delivered", 0) > 0 and sms.get("read", 0) > 0 and sms.get("bounced", 0) > 0, acked
    assert email.get("delivered", 0) > 0 and email.get("complained", 0) > 0 and email.get("bounced", 0) > 0, acked

    def expected(channel: str) -> dict[str, int]:
        got = acked["acknowledged"][channel]
        # An email's "undelivered" is a soft (transient) bounce: the bounced counter counts hard and soft bounces.
        soft = got.get("undelivered", 0) if channel == "email" else 0
        return {
            "delivered": got.get("delivered", 0),
            "read": got.get("read", 0),
            "bounced": got.get("bounced", 0) + soft,
            "complained": got.get("complained", 0),
        }

    def counted(channel: str) -> bool:
        totals = _totals(settings, first[channel])
        return bool(totals) and all(totals[k] == v for k, v in expected(channel).items())

    for channel in ("sms", "email"):
        wait_for(
            lambda channel=channel: counted(channel),
            timeout=60,
            interval=0.25,
            what=f"{channel}: campaign_analytics equal to the acknowledged callbacks "
            f"({expected(channel)} vs {_totals(settings, first[channel])})",
        )
        totals = _totals(settings, first[channel])
        assert totals["delivered"] <= totals["sent"], totals  # delivered <= sent
        logged = query(
            settings,
            "SELECT count(delivered_at), count(read_at), count(bounced_at) "
            "FROM campaign_recipient_log WHERE campaign_id = %s",
            first[channel],
        )[0]
        assert logged == (totals["delivered"], totals["read"], totals["bounced"])

    shown = entry.cli("status", first["sms"], actor="alice").stdout
    assert f"receipts   delivered {_totals(settings, first['sms'])['delivered']} (" in shown, shown

    # Forged and unsigned calls: refused, nothing changes.
    before = {c: _totals(settings, cid) for c, cid in first.items()}
    wamid = query(
        settings,
        "SELECT provider_message_id FROM campaign_recipient_log WHERE campaign_id = %s "
        "AND status = 'sent' AND delivered_at IS NULL LIMIT 1",
        first["sms"],
    )
    body = json.dumps(
        {
            "object": "whatsapp_business_account",
            "entry": [
                {
                    "changes": [
                        {"value": {"statuses": [{"id": "wamid.forged", "status": "read", "timestamp": "1764493200"}]}}
                    ]
                }
            ],
        }
    ).encode()
    assert _post(f"{base}/webhooks/whatsapp", body, {"Content-Type": "application/json"}) == 401
    assert _post(f"{base}/webhooks/whatsapp", body, {"X-Hub-Signature-256": meta_signature("guess", body)}) == 403
    form = f"MessageSid={wamid[0][0] if wamid else 'SM0'}&MessageStatus=delivered".encode()
    plain = {"Content-Type": "application/x-www-form-urlencoded"}
    assert _post(f"{base}/webhooks/twilio", form, plain) == 401
    assert _post(f"{base}/webhooks/twilio", form, {**plain, "X-Twilio-Signature": "bm90IGEgc2lnbmF0dXJl"}) == 403
    note = b'{"notification_id":"x","type":"complaint","message_id":"x"}'
    assert _post(f"{base}/webhooks/email", note, {"X-Campaigns-Timestamp": "1", "X-Campaigns-Signature": "v1=0"}) == 403
    assert get_json(f"{base}/health")[1]["unsigned"] == 2

    # A hard-bounced address is suppressed in the next campaign (expansion skips it, no message goes to it).
    bounced = query(
        settings,
        "SELECT l.recipient_id, c.phone FROM campaign_recipient_log AS l JOIN customers AS c "
        "ON c.id = l.recipient_id WHERE l.campaign_id = %s AND l.bounced_at IS NOT NULL "
        "AND l.provider_status = 'bounced'",
        first["sms"],
    )
    assert bounced, "no SMS hard bounce"
    suppressed = {
        a
        for (a,) in query(
            settings, "SELECT address FROM suppressions WHERE channel_kind = 'sms' AND reason = 'hard_bounce'"
        )
    }
    assert {phone for _, phone in bounced} <= suppressed
    # A customer who answers BAJA (a signed Twilio inbound message) is suppressed too.
    replier, replier_phone = query(
        settings,
        "SELECT l.recipient_id, c.phone FROM campaign_recipient_log AS l "
        "JOIN customers AS c ON c.id = l.recipient_id WHERE l.campaign_id = %s "
        "AND l.status = 'sent' AND l.bounced_at IS NULL LIMIT 1",
        first["sms"],
    )[0]
    inbound = {
        "MessageSid": "SMinbound1",
        "AccountSid": "AC1",
        "From": replier_phone,
        "To": "+15550000000",
        "Body": " Baja ",
    }
    signature = twilio_signature(entry.secrets.sms_auth_token, f"{base}/webhooks/twilio", inbound.items())
    assert (
        _post(f"{base}/webhooks/twilio", urlencode(inbound).encode(), {**plain, "X-Twilio-Signature": signature}) == 200
    )
    wait_for(
        lambda: (
            query(
                settings, "SELECT reason FROM suppressions WHERE channel_kind = 'sms' AND address = %s", replier_phone
            )
            == [("stop_reply",)]
        ),
        timeout=30,
        interval=0.2,
        what="the BAJA reply suppressed",
    )
    expected_skipped = [*bounced, (replier, replier_phone)]
    sent_before = len(simulator.messages("sms"))
    second = _campaign(entry, tmp_path, "sms", segments, "receipts-sms-again")
    assert wait_finished(settings, second, timeout=120, procs=entry) == "completed"
    skipped = dict(
        query(
            settings,
            "SELECT recipient_id, failure_reason FROM campaign_recipient_log "
            "WHERE campaign_id = %s AND status = 'skipped'",
            second,
        )
    )
    for recipient, phone in expected_skipped:
        assert skipped.get(recipient) == "suppressed", (recipient, skipped.get(recipient))
        assert not [m for m in simulator.messages("sms")[sent_before:] if m["to"] == phone]
    assert {c: _totals(settings, cid) for c, cid in first.items()} == before
    assert worker.alive and webhooks.alive
