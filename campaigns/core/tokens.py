"""API tokens: their format, and what is stored of them.

A token is ``cmpt_<id>_<secret>``: ``id`` is 16 hex characters (public: it names the token in lists, the
audit log and ``campaigns token revoke``), ``secret`` 43 URL-safe base64 characters (32 random bytes).

Guarantees:

* Only :func:`secret_hash` of the secret is stored (SHA-256, hex). The secret has 256 bits of entropy, so a
  fast hash is enough: there is nothing to guess from the hash, unlike a password (a slow KDF would only
  slow down every CLI call).
* :func:`verify` compares in constant time (:func:`hmac.compare_digest`).
* :func:`parse` never raises on malformed input: it returns None, so a caller answers every bad token with
  the same "invalid or revoked token", whatever was wrong with it.
* Randomness is passed in (:func:`format_token` takes the bytes); :func:`new_token` draws them from
  :mod:`secrets`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

__all__ = ["PREFIX", "TOKEN_ID", "ParsedToken", "format_token", "new_token", "parse", "secret_hash", "text", "verify"]

PREFIX = "cmpt_"
_TOKEN = re.compile(r"cmpt_([0-9a-f]{16})_([A-Za-z0-9_-]{43})")
TOKEN_ID = re.compile(r"[0-9a-f]{16}")


@dataclass(frozen=True)
class ParsedToken:
    token_id: str
    secret: str

    def __repr__(self) -> str:  # never show the secret
        return f"ParsedToken(token_id={self.token_id!r}, secret='***')"


def format_token(id_bytes: bytes, secret_bytes: bytes) -> ParsedToken:
    """The token made of 8 id bytes and 32 secret bytes."""
    if len(id_bytes) != 8 or len(secret_bytes) != 32:
        raise ValueError("a token takes 8 id bytes and 32 secret bytes")
    secret = base64.urlsafe_b64encode(secret_bytes).decode("ascii").rstrip("=")
    return ParsedToken(id_bytes.hex(), secret)


def new_token() -> ParsedToken:
    return format_token(secrets.token_bytes(8), secrets.token_bytes(32))


def text(token: ParsedToken) -> str:
    """What the user is given (once)."""
    return f"{PREFIX}{token.token_id}_{token.secret}"


def parse(value: str | None) -> ParsedToken | None:
    """The token in ``value`` (surrounding whitespace ignored), or None when it is not one."""
    if not isinstance(value, str):
        return None
    match = _TOKEN.fullmatch(value.strip())
    return ParsedToken(match[1], match[2]) if match else None


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("ascii")).hexdigest()


def verify(secret: str, stored_hash: str) -> bool:
    return hmac.compare_digest(secret_hash(secret), stored_hash)
