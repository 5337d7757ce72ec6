"""Signed Kafka records: HMAC-SHA256 over a record's key and value, with the key id and a timestamp.

The format (what another system implements to produce ``campaign.commands``; see docs/security.md):

* headers ``x-campaigns-key-id`` (the key's public id), ``x-campaigns-timestamp`` (epoch milliseconds, as
  decimal ASCII) and ``x-campaigns-signature`` (lowercase hex);
* signature = HMAC-SHA256(secret, ``b"campaigns-v1\\n" + key_id + b"\\n" + timestamp + b"\\n" + hex(sha256(key))
  + b"\\n" + value``), where ``key`` is the record key (empty if none) and ``value`` the record value bytes.

Guarantees: :func:`verify` accepts exactly the records signed with the same secret, key id, timestamp, key
and value (any change of one byte fails), compares in constant time, and refuses a timestamp outside
``window_ms`` of ``now_ms`` (a replayed record is refused once its window has passed; within the window the
command id makes a repeat a no-op). Pure: time is passed in.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets as _secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = ["HEADER_KEY_ID", "HEADER_SIGNATURE", "HEADER_TIMESTAMP", "Signed", "new_secret", "sign", "signed_headers",
           "verify"]

HEADER_KEY_ID = "x-campaigns-key-id"
HEADER_TIMESTAMP = "x-campaigns-timestamp"
HEADER_SIGNATURE = "x-campaigns-signature"
_DOMAIN = b"campaigns-v1\n"


def new_secret() -> str:
    """A fresh random secret (256 bits, URL-safe text)."""
    return _secrets.token_urlsafe(32)


def sign(secret: str, key_id: str, timestamp_ms: int, key: bytes | None, value: bytes) -> str:
    """The hex signature of a record (see the module docstring for what it covers)."""
    message = b"".join((_DOMAIN, key_id.encode(), b"\n", str(int(timestamp_ms)).encode(), b"\n",
                        hashlib.sha256(key or b"").hexdigest().encode(), b"\n", value))
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def signed_headers(secret: str, key_id: str, timestamp_ms: int, key: bytes | None, value: bytes) -> dict[str, str]:
    """The three headers of a signed record."""
    return {HEADER_KEY_ID: key_id, HEADER_TIMESTAMP: str(int(timestamp_ms)),
            HEADER_SIGNATURE: sign(secret, key_id, timestamp_ms, key, value)}


@dataclass(frozen=True, slots=True)
class Signed:
    """What a record's headers claim: the key id, the timestamp and the signature."""

    key_id: str
    timestamp_ms: int
    signature: str


def claimed(headers: Sequence[tuple[str, bytes | None]] | Mapping[str, bytes | str] | None) -> Signed | None:
    """The signature headers of a record, or None when any is missing or malformed."""
    pairs = headers.items() if isinstance(headers, Mapping) else (headers or [])
    found: dict[str, str] = {}
    for name, raw in pairs:
        if name in (HEADER_KEY_ID, HEADER_TIMESTAMP, HEADER_SIGNATURE) and raw is not None:
            try:
                found[name] = raw.decode("ascii") if isinstance(raw, bytes) else str(raw)
            except UnicodeDecodeError:
                return None
    if len(found) != 3 or not found[HEADER_TIMESTAMP].isdigit() or len(found[HEADER_TIMESTAMP]) > 15:
        return None
    return Signed(found[HEADER_KEY_ID], int(found[HEADER_TIMESTAMP]), found[HEADER_SIGNATURE])


def verify(secret: str, signed: Signed, key: bytes | None, value: bytes, *, now_ms: int, window_ms: int) -> str | None:
    """None if the record is authentic and fresh, else why not (``stale`` or ``bad_signature``)."""
    if abs(now_ms - signed.timestamp_ms) > window_ms:
        return "stale"
    expected = sign(secret, signed.key_id, signed.timestamp_ms, key, value)
    return None if hmac.compare_digest(expected, signed.signature) else "bad_signature"
