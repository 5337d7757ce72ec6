"""Deterministic identifiers.

Guarantees:

* :func:`message_id` is a pure function of ``(campaign_id, recipient_id)``: the same pair gives the same
  id in every process, on every replay and in every version of this code (the namespace is a pinned
  constant and a test pins an output). Re-expanding a campaign therefore reproduces the same message
  ids, which is what the send claim and the providers' idempotency keys rely on.
* Different pairs give different ids (up to UUIDv5 collisions): campaign ids may not contain ``":"``,
  so ``f"{campaign_id}:{recipient_id}"`` is unambiguous.
"""

from __future__ import annotations

import hashlib
import uuid

__all__ = ["MESSAGE_NAMESPACE", "message_id"]

MESSAGE_NAMESPACE = uuid.UUID("ea4ecd33-fb30-5296-bea4-04119659d194")
"""``uuid5(NAMESPACE_URL, "urn:campaigns:message-id")``, pinned. Never change it: every message id
already produced, claimed or sent depends on it."""


def message_id(campaign_id: str, recipient_id: str) -> str:
    """The canonical (lower-case, hyphenated) UUIDv5 string for one campaign's message to one recipient.

    Raises ``ValueError`` for an empty id or a ``campaign_id`` containing ``":"``.
    """
    if not campaign_id or not recipient_id:
        raise ValueError("campaign_id and recipient_id must be non-empty")
    if ":" in campaign_id:
        raise ValueError(f"campaign_id must not contain ':', got {campaign_id!r}")
    # uuid.uuid5 by hand (RFC 4122 4.3: SHA-1 of namespace + name, version 5, RFC variant), without the two
    # UUID objects it builds: a third of the cost (2.7 us instead of 7.5, timeit), once a message on the
    # expansion's hot path. The unit tests check it equals uuid.uuid5 for any input. SHA-1 is what UUIDv5 is
    # defined with; nothing here relies on it resisting collisions made on purpose.
    name = f"{campaign_id}:{recipient_id}".encode()
    digest = bytearray(hashlib.sha1(_NAMESPACE_BYTES + name, usedforsecurity=False).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50
    digest[8] = (digest[8] & 0x3F) | 0x80
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


_NAMESPACE_BYTES = MESSAGE_NAMESPACE.bytes
