"""Webhook signature schemes against golden values (Twilio's own example, RFC 4231's HMAC-SHA256 vector)."""

from __future__ import annotations

import pytest

from campaigns.core.webhook_signatures import (
    email_signature,
    meta_handshake,
    meta_signature,
    twilio_signature,
    verify_email,
    verify_meta,
    verify_twilio,
)

# Twilio's documented example (twilio-python's RequestValidator test): auth token 12345.
TWILIO_URL = "https://mycompany.com/myapp.php?foo=1&bar=2"
TWILIO_PARAMS = [
    ("CallSid", "CA1234567890ABCDE"),
    ("Caller", "+14158675309"),
    ("Digits", "1234"),
    ("From", "+14158675309"),
    ("To", "+18005551212"),
]
TWILIO_EXPECTED = "RSOYDt4T1cUTdK1PDd93/VVr8B8="


def test_twilio_golden_value() -> None:
    assert twilio_signature("12345", TWILIO_URL, TWILIO_PARAMS) == TWILIO_EXPECTED
    assert twilio_signature("12345", TWILIO_URL, list(reversed(TWILIO_PARAMS))) == TWILIO_EXPECTED  # sorted
    assert verify_twilio("12345", TWILIO_URL, TWILIO_PARAMS, TWILIO_EXPECTED)


@pytest.mark.parametrize(
    ("token", "url", "params", "header"),
    [
        ("12346", TWILIO_URL, TWILIO_PARAMS, TWILIO_EXPECTED),  # another account's token
        ("12345", TWILIO_URL.replace("foo=1", "foo=2"), TWILIO_PARAMS, TWILIO_EXPECTED),  # URL changed
        ("12345", TWILIO_URL, [*TWILIO_PARAMS[:-1], ("To", "+18005551213")], TWILIO_EXPECTED),  # a parameter changed
        ("12345", TWILIO_URL, [*TWILIO_PARAMS, ("Body", "STOP")], TWILIO_EXPECTED),  # a parameter added
        ("12345", TWILIO_URL, TWILIO_PARAMS, None),
        ("12345", TWILIO_URL, TWILIO_PARAMS, ""),
        ("", TWILIO_URL, TWILIO_PARAMS, twilio_signature("", TWILIO_URL, TWILIO_PARAMS)),  # no token configured
    ],
)
def test_twilio_refusals(token: str, url: str, params: list[tuple[str, str]], header: str | None) -> None:
    assert not verify_twilio(token, url, params, header)


def test_meta_golden_value() -> None:
    # RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
    body = b"what do ya want for nothing?"
    expected = "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    assert meta_signature("Jefe", body) == expected
    assert verify_meta("Jefe", body, expected)
    assert verify_meta("Jefe", body, expected.upper().replace("SHA256=", "sha256="))  # hex case does not matter


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",  # no prefix
        "sha1=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
        "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3844",  # one digit off
        "sha256=",
    ],
)
def test_meta_refusals(header: str | None) -> None:
    assert not verify_meta("Jefe", b"what do ya want for nothing?", header)


def test_meta_refuses_a_changed_body_and_an_empty_secret() -> None:
    header = meta_signature("Jefe", b"{}")
    assert not verify_meta("Jefe", b"{} ", header)
    assert not verify_meta("", b"{}", meta_signature("", b"{}"))


def test_meta_handshake() -> None:
    assert meta_handshake("tok", "subscribe", "tok", "1158201444") == "1158201444"
    assert meta_handshake("tok", "subscribe", "other", "1158201444") is None
    assert meta_handshake("tok", "unsubscribe", "tok", "1158201444") is None
    assert meta_handshake("tok", "subscribe", None, "1158201444") is None
    assert meta_handshake("", "subscribe", "", "1") is None


def test_email_signature_golden_value_and_window() -> None:
    body = b'{"type":"bounce"}'
    # HMAC-SHA256(b"secret", b"1700000000." + body), computed once with another tool and pinned (docs/webhooks.md).
    signature = email_signature("secret", 1_700_000_000, body)
    assert signature == "v1=e142dcedf539141f6f78e58eaf392efb6a9b88a6e436f1041afe424bf1b3527c"
    assert verify_email("secret", body, "1700000000", signature, now_s=1_700_000_100, window_s=300)
    assert not verify_email("secret", body, "1700000000", signature, now_s=1_700_000_301, window_s=300)  # stale
    assert not verify_email("secret", body, "1700000000", signature, now_s=1_699_999_699, window_s=300)  # future
    assert not verify_email("secret", body, "1700000001", signature, now_s=1_700_000_000, window_s=300)
    assert not verify_email("other", body, "1700000000", signature, now_s=1_700_000_000, window_s=300)
    assert not verify_email("secret", body + b" ", "1700000000", signature, now_s=1_700_000_000, window_s=300)
    for bad in (None, "", "-5", "17e8", "1" * 20):
        assert not verify_email("secret", body, bad, signature, now_s=1_700_000_000, window_s=300)
    assert not verify_email("secret", body, "1700000000", None, now_s=1_700_000_000, window_s=300)
