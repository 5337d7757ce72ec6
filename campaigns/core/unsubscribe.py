"""Per-recipient unsubscribe tokens (RFC 8058 one-click ``List-Unsubscribe``), pure.

A token names one customer, one channel and the campaign it was sent with, and carries an HMAC-SHA256 over
them keyed by the deployment's unsubscribe secret (``CAMPAIGNS_UNSUBSCRIBE__SECRET``)::

    u1.<customer id>.<channel>.<campaign id as 32 hex>.<signature: 22 characters of base64url, 128 bits>

It holds no address (a link in a mail log or a proxy log does not leak one) and no expiry: an unsubscribe link
must keep working for as long as the mail sits in an inbox (RFC 8058 asks for no expiry either).

Guarantees: :func:`verify` accepts exactly the tokens :func:`make_token` made with the same secret (any
changed character fails), compares signatures in constant time, and never raises for any input string (a
malformed token is None). Making a token costs one HMAC-SHA256, its key pads built once per secret.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import re
import uuid
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

__all__ = ["CHANNELS", "Unsubscribe", "make_token", "verify"]

CHANNELS = ("whatsapp", "sms", "email")
_VERSION = "u1"
_DOMAIN = b"campaigns-unsubscribe-v1\n"
_TOKEN = re.compile(r"u1\.([1-9][0-9]{0,18})\.(whatsapp|sms|email)\.([0-9a-f]{32})\.([A-Za-z0-9_-]{22})")


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    """What a valid token says: this customer no longer wants ``channel`` (sent with ``campaign_id``)."""

    customer_id: int
    channel: str
    campaign_id: uuid.UUID


# HMAC's key pads (RFC 2104), as the standard library's hmac module builds them.
_INNER_PAD = bytes(x ^ 0x36 for x in range(256))
_OUTER_PAD = bytes(x ^ 0x5C for x in range(256))
_SHA256_BLOCK = 64
_URL_SAFE = bytes.maketrans(b"+/", b"-_")  # base64 -> base64url


@lru_cache(maxsize=8)
def _keyed(secret: bytes) -> tuple[Any, Any]:
    """HMAC-SHA256's inner hash (the domain already absorbed) and outer hash, keyed once per secret.

    A signature then costs two copies of C hash states: ``hmac.HMAC.copy`` builds a Python object per call,
    which with base64's Python wrapper was most of a token's cost, and a sender makes one per email. The result
    is HMAC-SHA256 bit for bit (``tests/unit/test_core_unsubscribe.py`` holds it to the ``hmac`` module)."""
    key = hashlib.sha256(secret).digest() if len(secret) > _SHA256_BLOCK else secret
    key = key.ljust(_SHA256_BLOCK, b"\0")
    inner = hashlib.sha256(key.translate(_INNER_PAD))
    inner.update(_DOMAIN)
    return inner, hashlib.sha256(key.translate(_OUTER_PAD))


def _signature(secret: bytes, customer_id: int, channel: str, campaign_hex: str) -> str:
    """The first 128 bits of HMAC-SHA256(secret, domain + fields), base64url without padding (22 characters)."""
    inner_keyed, outer_keyed = _keyed(secret)
    inner = inner_keyed.copy()
    inner.update(b"%d\n%s\n%s" % (customer_id, channel.encode(), campaign_hex.encode()))
    outer = outer_keyed.copy()
    outer.update(inner.digest())
    return binascii.b2a_base64(outer.digest()[:16], newline=False).translate(_URL_SAFE)[:22].decode()


@lru_cache(maxsize=1024)
def _campaign_hex(campaign_id: str) -> str:
    """A campaign id as 32 hex digits, parsed once per campaign (a sender makes a token per email of a handful of
    campaigns; parsing is a quarter of a token's cost)."""
    return uuid.UUID(campaign_id).hex


def make_token(secret: bytes, customer_id: int, channel: str, campaign_id: uuid.UUID | str) -> str:
    """The token for ``customer_id`` on ``channel`` (``ValueError`` for an unknown channel or a bad id)."""
    if channel not in CHANNELS:
        raise ValueError(f"unknown channel {channel!r}")
    if not 0 < customer_id < 2**63:
        raise ValueError("customer_id must be a positive 64-bit integer")
    campaign_hex = campaign_id.hex if isinstance(campaign_id, uuid.UUID) else _campaign_hex(campaign_id)
    return f"{_VERSION}.{customer_id}.{channel}.{campaign_hex}.{_signature(secret, customer_id, channel, campaign_hex)}"


def verify(secret: bytes, token: str) -> Unsubscribe | None:
    """What ``token`` says if it was made with ``secret``, else None."""
    if not isinstance(token, str) or len(token) > 120:
        return None
    match = _TOKEN.fullmatch(token)
    if match is None:
        return None
    customer, channel, campaign_hex, signature = match.groups()
    customer_id = int(customer)
    if customer_id >= 2**63:
        return None
    expected = _signature(secret, customer_id, channel, campaign_hex)
    if not hmac.compare_digest(expected, signature):
        return None
    return Unsubscribe(customer_id, channel, uuid.UUID(campaign_hex))
