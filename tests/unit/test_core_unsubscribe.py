"""Unsubscribe tokens: made and verified with one secret, refused on any change."""

from __future__ import annotations

import base64
import hashlib
import hmac
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from campaigns.core.unsubscribe import Unsubscribe, make_token, verify

SECRET = b"unit-test-secret"
CAMPAIGN = uuid.UUID("12345678-1234-5678-1234-567812345678")


def test_round_trip() -> None:
    token = make_token(SECRET, 42, "email", CAMPAIGN)
    assert token.startswith("u1.42.email.12345678123456781234567812345678.")
    assert verify(SECRET, token) == Unsubscribe(42, "email", CAMPAIGN)
    assert make_token(SECRET, 42, "email", str(CAMPAIGN)) == token  # deterministic


def test_another_secret_is_refused() -> None:
    assert verify(b"other", make_token(SECRET, 42, "email", CAMPAIGN)) is None


def test_the_fields_are_covered_by_the_signature() -> None:
    token = make_token(SECRET, 42, "email", CAMPAIGN)
    for forged in (
        token.replace(".42.", ".43."),
        token.replace(".email.", ".sms."),
        token.replace("12345678123456781234567812345678", "0" * 32),
    ):
        assert verify(SECRET, forged) is None


@given(st.integers(1, 2**63 - 1), st.sampled_from(["email", "sms", "whatsapp"]), st.uuids(), st.data())
def test_any_changed_character_fails(customer: int, channel: str, campaign: uuid.UUID, data: st.DataObject) -> None:
    token = make_token(SECRET, customer, channel, campaign)
    assert verify(SECRET, token) == Unsubscribe(customer, channel, campaign)
    i = data.draw(st.integers(0, len(token) - 1))
    replacement = data.draw(st.sampled_from("0aZ_-.x9"))
    forged = token[:i] + replacement + token[i + 1 :]
    if forged != token:
        assert verify(SECRET, forged) is None


@given(st.text(max_size=200))
def test_verify_never_raises(text: str) -> None:
    assert verify(SECRET, text) is None


@pytest.mark.parametrize(("customer", "channel"), [(0, "email"), (2**63, "email"), (1, "fax")])
def test_bad_inputs_to_make(customer: int, channel: str) -> None:
    with pytest.raises(ValueError, match=r"channel|customer_id"):
        make_token(SECRET, customer, channel, CAMPAIGN)


@given(st.binary(max_size=200), st.integers(1, 2**63 - 1), st.sampled_from(["email", "sms", "whatsapp"]), st.uuids())
def test_the_signature_is_hmac_sha256(secret: bytes, customer: int, channel: str, campaign: uuid.UUID) -> None:
    """The hand-keyed HMAC (``_keyed``: pads built once per secret) equals the standard library's, for secrets
    shorter than, as long as and longer than SHA-256's 64-byte block."""
    message = b"campaigns-unsubscribe-v1\n%d\n%s\n%s" % (customer, channel.encode(), campaign.hex.encode())
    expected = base64.urlsafe_b64encode(hmac.new(secret, message, hashlib.sha256).digest()[:16]).rstrip(b"=")
    assert make_token(secret, customer, channel, campaign).rsplit(".", 1)[1] == expected.decode()
