"""Per-recipient unsubscribe tokens (RFC 8058 one-click ``List-Unsubscribe``), pure.

A token names one customer, one channel and the campaign it was sent with, and carries an HMAC-SHA256 over
them keyed by the deployment's unsubscribe secret (``CAMPAIGNS_UNSUBSCRIBE__SECRET``)::

    u1.<customer id>.<channel>.<campaign id as 32 hex>.<signature: 22 characters of base64url, 128 bits>

It holds no address (a link in a mail log or a proxy log does not leak one) and no expiry: an unsubscribe link
must keep working for as long as the mail sits in an inbox (RFC 8058 asks for no expiry either).

Guarantees: :func:`verify` accepts exactly the tokens :func:`make_token` made with the same secret (any
changed character fails), compares signatures in constant time, and never raises for any input string (a
malformed token is None). Making a token costs one HMAC (about a microsecond).
"""

from __future__ import annotations

import base64
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


@lru_cache(maxsize=8)
def _keyed(secret: bytes) -> Any:
    """The HMAC with its key schedule done once per secret (a token then costs one copy and two blocks)."""
    return hmac.new(secret, _DOMAIN, hashlib.sha256)


def _signature(secret: bytes, customer_id: int, channel: str, campaign_hex: str) -> str:
    mac = _keyed(secret).copy()
    mac.update(b"%d\n%s\n%s" % (customer_id, channel.encode(), campaign_hex.encode()))
    digest = mac.digest()[:16]
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


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
