"""Signed records: HMAC over key and value, key id and timestamp, with a freshness window."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from campaigns.core.signing import (
    HEADER_KEY_ID,
    HEADER_SIGNATURE,
    HEADER_TIMESTAMP,
    claimed,
    new_secret,
    sign,
    signed_headers,
    verify,
)

NOW = 1_800_000_000_000
WINDOW = 300_000


def headers_of(secret: str, key: bytes | None, value: bytes, ts: int = NOW, key_id: str = "k1"):
    return [(k, v.encode()) for k, v in signed_headers(secret, key_id, ts, key, value).items()]


def test_an_authentic_fresh_record_verifies() -> None:
    secret = new_secret()
    signed = claimed(headers_of(secret, b"c1", b"value"))
    assert signed is not None and signed.key_id == "k1"
    assert verify(secret, signed, b"c1", b"value", now_ms=NOW + 1000, window_ms=WINDOW) is None


@given(st.binary(max_size=64), st.binary(max_size=256), st.integers(0, 255), st.integers(0, 300))
def test_any_changed_byte_fails(key: bytes, value: bytes, xor: int, where: int) -> None:
    secret = "s3cret"
    signed = claimed(headers_of(secret, key, value))
    assert signed is not None
    if value:
        i = where % len(value)
        tampered = value[:i] + bytes([value[i] ^ (xor or 1)]) + value[i + 1:]
        assert verify(secret, signed, key, tampered, now_ms=NOW, window_ms=WINDOW) == "bad_signature"
    assert verify(secret, signed, key + b"x", value, now_ms=NOW, window_ms=WINDOW) == "bad_signature"
    assert verify("other", signed, key, value, now_ms=NOW, window_ms=WINDOW) == "bad_signature"


def test_a_stale_or_future_record_is_refused() -> None:
    secret = new_secret()
    signed = claimed(headers_of(secret, b"k", b"v", ts=NOW - WINDOW - 1))
    assert verify(secret, signed, b"k", b"v", now_ms=NOW, window_ms=WINDOW) == "stale"
    future = claimed(headers_of(secret, b"k", b"v", ts=NOW + WINDOW + 1))
    assert verify(secret, future, b"k", b"v", now_ms=NOW, window_ms=WINDOW) == "stale"


def test_the_key_id_and_timestamp_are_signed_too() -> None:
    secret = new_secret()
    headers = dict(headers_of(secret, b"k", b"v"))
    moved = claimed({**headers, HEADER_TIMESTAMP: str(NOW + 1).encode()})
    assert verify(secret, moved, b"k", b"v", now_ms=NOW, window_ms=WINDOW) == "bad_signature"
    renamed = claimed({**headers, HEADER_KEY_ID: b"k2"})
    assert verify(secret, renamed, b"k", b"v", now_ms=NOW, window_ms=WINDOW) == "bad_signature"


def test_missing_or_malformed_headers_claim_nothing() -> None:
    assert claimed(None) is None
    assert claimed([(HEADER_KEY_ID, b"k1"), (HEADER_TIMESTAMP, b"1")]) is None
    assert claimed({HEADER_KEY_ID: b"k1", HEADER_TIMESTAMP: b"abc", HEADER_SIGNATURE: b"00"}) is None
    assert claimed({HEADER_KEY_ID: b"\xff", HEADER_TIMESTAMP: b"1", HEADER_SIGNATURE: b"00"}) is None


def test_the_signature_is_stable() -> None:
    # Golden value: another system implementing docs/security.md's format must produce exactly this.
    # (computed independently: hmac.new(b"secret", b"campaigns-v1\nk1\n1700000000000\n" + sha256 hex of the
    # key + b"\n{}", sha256))
    assert sign("secret", "k1", 1_700_000_000_000, b"campaign-1", b"{}") == (
        "8806e3b30595c44a53120414c37d34132c0376e3afe555cd18e3b78aaed574aa")
    assert len(sign("secret", "k1", 0, None, b"")) == 64
