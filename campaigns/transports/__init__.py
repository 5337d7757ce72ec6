"""Channel transports: the port (:class:`Transport`), the real adapters and an in-process fake.

``build_transports(settings)`` makes one transport per channel; nothing is built at import.
"""

from __future__ import annotations

from campaigns.settings import ProviderSettings

from .base import CHANNELS, OutgoingMessage, SendReceipt, Transport
from .classify import (
    classify_http_response,
    classify_smtp_reply,
    http_response_error,
    parse_retry_after,
    smtp_reply_error,
)
from .fake import FakeTransport
from .http_api import SmsTransport, WhatsAppTransport
from .smtp import SmtpTransport, build_email

__all__ = [
    "CHANNELS",
    "FakeTransport",
    "OutgoingMessage",
    "SendReceipt",
    "SmsTransport",
    "SmtpTransport",
    "Transport",
    "WhatsAppTransport",
    "build_email",
    "build_transports",
    "classify_http_response",
    "classify_smtp_reply",
    "http_response_error",
    "parse_retry_after",
    "smtp_reply_error",
]


def build_transports(settings: ProviderSettings) -> dict[str, Transport]:
    """One real transport per channel, keyed by channel name. Close each with ``await t.aclose()``."""
    return {
        "whatsapp": WhatsAppTransport(settings),
        "sms": SmsTransport(settings),
        "email": SmtpTransport(settings),
    }
