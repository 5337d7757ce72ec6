"""The simulator's delivery callbacks: deterministic fates per address, validated ratios, and requests signed so
that the receiver's verification accepts them (and parses them into the receipts they stand for)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from urllib.parse import parse_qsl

import pytest

from campaigns.core.receipts import ReceiptStatus, from_email, from_twilio, from_whatsapp
from campaigns.core.webhook_signatures import verify_email, verify_meta, verify_twilio
from simulator.callbacks import CallbackSender, Secrets, check_ratios, plan

SECRETS = Secrets("app-secret", "AC1", "auth-token", "email-secret")
NOW = datetime.now(UTC)


def test_the_same_seed_gives_every_address_the_same_fate() -> None:
    ratios = check_ratios({"bounced": 0.1, "undelivered": 0.1, "read": 0.5, "complained": 0.3})
    addresses = [f"+1555{i:07d}" for i in range(2000)]
    first = [plan(7, "sms", a, ratios, (0, 100), False) for a in addresses]
    assert first == [plan(7, "sms", a, ratios, (0, 100), False) for a in reversed(addresses)][::-1]
    assert first != [plan(8, "sms", a, ratios, (0, 100), False) for a in addresses]
    kinds = [p[0].status for p in first]
    assert 150 <= kinds.count("bounced") <= 250 and 150 <= kinds.count("undelivered") <= 250
    reads = sum(1 for p in first if [s.status for s in p] == ["delivered", "read"])
    assert 0.4 < reads / kinds.count("delivered") < 0.6
    assert plan(7, "sms", addresses[0], ratios, (0, 0), True) == [plan(7, "sms", addresses[0], ratios, (0, 0), True)[0]]
    assert plan(7, "sms", addresses[0], ratios, (0, 0), True)[0].status == "bounced"


def test_ratios_are_validated() -> None:
    assert check_ratios({}) == {"delivered": 1.0, "read": 0.0, "bounced": 0.0, "complained": 0.0, "undelivered": 0.0}
    assert check_ratios({"bounced": 0.2})["delivered"] == pytest.approx(0.8)
    for bad in ({"delivered": 0.9, "bounced": 0.2}, {"read": 2}, {"opened": 0.1}, {"read": True}, [("read", 1)]):
        with pytest.raises(ValueError):
            check_ratios(bad)


@pytest.mark.parametrize("status", ["delivered", "read", "bounced", "undelivered"])
def test_signed_requests_verify_and_parse(status: str) -> None:
    sender = CallbackSender(SECRETS)
    url, body, headers = sender._request("http://hooks", "whatsapp", "+15551234567", "100", "wamid.1", status, None)
    assert url == "http://hooks/webhooks/whatsapp" and verify_meta("app-secret", body, headers["X-Hub-Signature-256"])
    (wa,) = from_whatsapp(json.loads(body), NOW)
    assert wa.provider_message_id == "wamid.1" and wa.address == "+15551234567"
    assert (
        wa.status
        is {
            "delivered": ReceiptStatus.DELIVERED,
            "read": ReceiptStatus.READ,
            "bounced": ReceiptStatus.BOUNCED,
            "undelivered": ReceiptStatus.FAILED,
        }[status]
    )

    url, body, headers = sender._request(
        "http://hooks",
        "sms",
        "+15551234567",
        "+15550000000",
        "SM1",
        status,
        "https://public.example/webhooks/twilio?account=1",
    )
    params = parse_qsl(body.decode())
    assert url == "https://public.example/webhooks/twilio?account=1"
    assert verify_twilio("auth-token", url, params, headers["X-Twilio-Signature"])
    (sms,) = from_twilio(dict(params), NOW)
    assert (
        sms.status
        is {
            "delivered": ReceiptStatus.DELIVERED,
            "read": ReceiptStatus.READ,
            "bounced": ReceiptStatus.BOUNCED,
            "undelivered": ReceiptStatus.UNDELIVERED,
        }[status]
    )


@pytest.mark.parametrize(
    ("status", "expected", "bounce"),
    [
        ("delivered", ReceiptStatus.DELIVERED, None),
        ("complained", ReceiptStatus.COMPLAINED, None),
        ("bounced", ReceiptStatus.BOUNCED, "hard"),
        ("undelivered", ReceiptStatus.BOUNCED, "soft"),
    ],
)
def test_signed_email_notifications_verify_and_parse(status: str, expected: ReceiptStatus, bounce: str | None):
    url, body, headers = CallbackSender(SECRETS)._request(
        "http://hooks", "email", "Ana@Example.com", None, "Q1", status, None
    )
    timestamp = headers["X-Campaigns-Timestamp"]
    assert url == "http://hooks/webhooks/email"
    assert verify_email(
        "email-secret", body, timestamp, headers["X-Campaigns-Signature"], now_s=int(timestamp), window_s=300
    )
    (receipt,) = from_email(json.loads(body), NOW)
    assert (receipt.status, receipt.bounce_type, receipt.address) == (expected, bounce, "ana@example.com")
