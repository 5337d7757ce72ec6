"""Verification of the providers' webhook signatures. Pure: bytes and time in, a verdict out.

* **Meta (WhatsApp Cloud API)**: header ``X-Hub-Signature-256: sha256=<hex>``, the HMAC-SHA256 of the *raw*
  request body with the app secret (:func:`meta_signature`, :func:`verify_meta`). The subscription handshake
  is a GET with ``hub.mode=subscribe``, ``hub.verify_token`` and ``hub.challenge``; the endpoint answers the
  challenge only if the token matches (:func:`meta_handshake`).
* **Twilio**: header ``X-Twilio-Signature``, base64 of the HMAC-SHA1, keyed with the account's auth token, of
  the full request URL (scheme, host, port, path and query, as Twilio called it) followed by every POST
  parameter's name and value, sorted by name (:func:`twilio_signature`, :func:`verify_twilio`). Twilio's own
  example (token ``12345``) is the golden value of the unit tests.
* **Email notifications** (this project's format, docs/webhooks.md): headers ``X-Campaigns-Timestamp``
  (epoch seconds) and ``X-Campaigns-Signature: v1=<hex>``, the HMAC-SHA256 with the shared secret of
  ``<timestamp>.<raw body>``; a timestamp further than ``window_s`` from now is refused, so a captured
  notification cannot be replayed later (:func:`email_signature`, :func:`verify_email`).

Guarantees: every comparison is constant-time (``hmac.compare_digest``); a missing, malformed or empty
header, or an empty secret, is a refusal, never an exception.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterable

__all__ = [
    "email_signature",
    "meta_handshake",
    "meta_signature",
    "twilio_signature",
    "verify_email",
    "verify_meta",
    "verify_twilio",
]


def meta_signature(app_secret: str, body: bytes) -> str:
    """The ``X-Hub-Signature-256`` header value Meta sends with ``body``: ``sha256=`` + lowercase hex."""
    return "sha256=" + hmac.new(app_secret.encode(), body, hashlib.sha256).hexdigest()


def verify_meta(app_secret: str, body: bytes, header: str | None) -> bool:
    """Whether ``header`` is the signature of exactly ``body`` under ``app_secret``."""
    if not app_secret or not header or not header.startswith("sha256="):
        return False
    return hmac.compare_digest(meta_signature(app_secret, body).encode(), header.strip().lower().encode())


def meta_handshake(verify_token: str, mode: str | None, token: str | None, challenge: str | None) -> str | None:
    """The challenge to echo back if this is a valid subscription handshake, else None (answer 403)."""
    if not verify_token or mode != "subscribe" or token is None or challenge is None:
        return None
    if not hmac.compare_digest(verify_token.encode(), token.encode()):
        return None
    return challenge


def twilio_signature(auth_token: str, url: str, params: Iterable[tuple[str, str]]) -> str:
    """The ``X-Twilio-Signature`` of a request to ``url`` with the form ``params`` (name, value pairs; a name
    may repeat: Twilio sorts by name and keeps the values of one name in their order)."""
    data = url + "".join(name + value for name, value in sorted(params, key=lambda p: p[0]))
    digest = hmac.new(auth_token.encode(), data.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def verify_twilio(auth_token: str, url: str, params: Iterable[tuple[str, str]], header: str | None) -> bool:
    """Whether ``header`` is Twilio's signature of this URL and these parameters under ``auth_token``."""
    if not auth_token or not header:
        return False
    expected = twilio_signature(auth_token, url, params)
    return hmac.compare_digest(expected.encode(), header.strip().encode())


def email_signature(secret: str, timestamp_s: int, body: bytes) -> str:
    """The ``X-Campaigns-Signature`` value of an email notification sent at ``timestamp_s``."""
    message = str(int(timestamp_s)).encode() + b"." + body
    return "v1=" + hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def verify_email(
    secret: str, body: bytes, timestamp: str | None, header: str | None, *, now_s: float, window_s: float
) -> bool:
    """Whether the notification is signed with ``secret`` and its timestamp within ``window_s`` of ``now_s``."""
    if not secret or not header or not timestamp or not timestamp.isascii() or not timestamp.isdigit():
        return False
    if len(timestamp) > 12 or abs(now_s - int(timestamp)) > window_s:
        return False
    expected = email_signature(secret, int(timestamp), body)
    return hmac.compare_digest(expected.encode(), header.strip().lower().encode())
