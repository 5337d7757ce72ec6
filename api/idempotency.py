"""``Idempotency-Key`` on every POST, stored in PostgreSQL (``api_idempotency_keys``, migration 0009).

A key belongs to the principal that used it (two principals' keys never meet). The first request with a key
inserts a row holding a SHA-256 of its method, path and body; the answer (status and JSON body) is stored when
it is known, and every later request with the same key and the same request gets that answer again without
running anything. The same key with a different request: 422 ``idempotency-key-reused``. A key whose first
request is still running: 409 ``idempotency-key-in-progress`` (retry later).

Answers stored: successes. Not stored: errors (the row is deleted, so a retry runs again: a create refused
because no channel was configured yet succeeds once one is). A row left in progress by a crashed server is taken
over after ``idempotency_stale_s``; creating a campaign is safe even then, because the campaign id is derived from the
principal and the key (:func:`campaign_id_for`): the re-run finds the campaign the first run made instead of
making a second one. A token's secret is never stored: the replay of ``POST /v1/tokens`` answers with the
token id and ``token: null``.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from campaigns.db.engine import transaction

KEY_MAX = 255
_NAMESPACE = uuid.UUID("5d0c7a52-0b55-4c6e-9c39-6f1f6a0e0a20")


def campaign_id_for(principal: str, key: str) -> uuid.UUID:
    """The id of the campaign ``principal`` creates with Idempotency-Key ``key``: the same on every retry."""
    return uuid.uuid5(_NAMESPACE, f"{principal}\n{key}")


def request_hash(method: str, path: str, body: bytes) -> str:
    digest = hashlib.sha256()
    for part in (method.encode(), path.encode(), body):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()


@dataclass(frozen=True)
class Begun:
    """What :meth:`IdempotencyStore.begin` found: ``run`` (go ahead), ``replay`` (``status``/``response``
    stored), ``reused`` (a different request), ``in_progress``."""

    outcome: str
    status: int | None = None
    response: Any = None


class IdempotencyStore:
    def __init__(self, sessions: sessionmaker[Session], *, ttl_s: int, stale_s: float) -> None:
        self._sessions = sessions
        self._ttl = timedelta(seconds=ttl_s)
        self._stale = timedelta(seconds=stale_s)

    def begin(self, principal: str, key: str, method: str, path: str, digest: str, now: datetime) -> Begun:
        with transaction(self._sessions) as session:
            # Forget this principal's keys past their lifetime (cheap: the primary key's prefix).
            session.execute(text("DELETE FROM api_idempotency_keys WHERE principal = :p AND created_at < :t"),
                            {"p": principal, "t": now - self._ttl})
            inserted = session.execute(text(
                "INSERT INTO api_idempotency_keys (principal, key, method, path, request_hash, created_at) "
                "VALUES (:p, :k, :m, :path, :h, :now) ON CONFLICT (principal, key) DO NOTHING RETURNING key"),
                {"p": principal, "k": key, "m": method, "path": path, "h": digest, "now": now}).first()
            if inserted is not None:
                return Begun("run")
            row = session.execute(text(
                "SELECT request_hash, status_code, response, created_at FROM api_idempotency_keys "
                "WHERE principal = :p AND key = :k FOR UPDATE"), {"p": principal, "k": key}).one()
            if row.request_hash != digest:
                return Begun("reused")
            if row.status_code is not None:
                return Begun("replay", row.status_code, row.response)
            if row.created_at < now - self._stale:
                session.execute(text("UPDATE api_idempotency_keys SET created_at = :now "
                                     "WHERE principal = :p AND key = :k"), {"p": principal, "k": key, "now": now})
                return Begun("run")
            return Begun("in_progress")

    def finish(self, principal: str, key: str, status: int, response: Any, now: datetime) -> None:
        with transaction(self._sessions) as session:
            if status >= 500:
                session.execute(text("DELETE FROM api_idempotency_keys WHERE principal = :p AND key = :k"),
                                {"p": principal, "k": key})
                return
            session.execute(text(
                "UPDATE api_idempotency_keys SET status_code = :s, response = CAST(:r AS jsonb), completed_at = :now "
                "WHERE principal = :p AND key = :k"),
                {"p": principal, "k": key, "s": status, "r": json.dumps(response, default=str), "now": now})

    def abandon(self, principal: str, key: str) -> None:
        with transaction(self._sessions) as session:
            session.execute(text("DELETE FROM api_idempotency_keys WHERE principal = :p AND key = :k"),
                            {"p": principal, "k": key})
