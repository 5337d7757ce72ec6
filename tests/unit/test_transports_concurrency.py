"""Each pooled transport declares how many calls it carries at once (``concurrency``, the Transport port): the
sender runs no more lanes than that (tests/unit/test_sender_stage.py)."""

from __future__ import annotations

from campaigns.settings import ProviderSettings
from campaigns.transports import build_transports


def test_pooled_transports_declare_their_pool_size_as_concurrency() -> None:
    transports = build_transports(ProviderSettings(max_connections=7, smtp_pool_size=3))
    assert transports["sms"].concurrency == transports["whatsapp"].concurrency == 7  # type: ignore[attr-defined]
    assert transports["email"].concurrency == 3  # type: ignore[attr-defined]
