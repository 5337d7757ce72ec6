"""Pure classification of provider answers into the project's delivery errors (no I/O, no clock reads).

The rules, in order, for an HTTP answer (WhatsApp Cloud API, Twilio-style SMS):

1. 2xx: delivered, no error.
2. A throttling error code (WhatsApp 130429, 131048, 131056, 80007, 4; Twilio 20429, 14107) or HTTP 429:
   :class:`ThrottledError` with ``retry_after`` from the ``Retry-After`` header when present. WhatsApp
   answers most errors, throttling included, with HTTP 400, so the provider code wins over the status.
3. HTTP 5xx, 408, 409 (idempotent request still in progress), 425, or a provider code documented as
   temporary: :class:`TransientDeliveryError`.
4. Anything else (other 4xx, unexpected 1xx/3xx): :class:`PermanentDeliveryError` with a short stable
   reason: a name for the codes we know (``invalid_number``, ``opted_out``, ``unauthorized`` ...), else
   ``rejected: <provider code or HTTP status>``.

SMTP replies follow RFC 5321/3463: 2xx/3xx fine; 4xx transient, throttled when the enhanced status
code is ``4.7.x`` (the class providers use for rate limiting, e.g. ``451 4.7.0``); 5xx permanent.

Reasons are built from codes only, never from provider message text, so they are stable for metrics
and never echo anything the request carried.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any

from campaigns.errors import (
    DeliveryError,
    PermanentDeliveryError,
    ProviderAccountError,
    ThrottledError,
    TransientDeliveryError,
)

# Reasons that concern our provider account, not the recipient: raised as ProviderAccountError.
ACCOUNT_REASONS = frozenset({"unauthorized", "forbidden", "permission_denied"})

# --- WhatsApp Cloud API error codes (Graph API ``error.code``) ---
WHATSAPP_THROTTLE_CODES = frozenset({4, 80007, 130429, 131048, 131056})
WHATSAPP_TRANSIENT_CODES = frozenset({1, 2, 131000, 131016, 133004})
WHATSAPP_PERMANENT_REASONS: Mapping[int, str] = {
    0: "unauthorized",
    190: "unauthorized",
    10: "permission_denied",
    100: "invalid_parameter",
    131026: "invalid_number",
    131047: "outside_customer_window",
    131049: "ecosystem_limit",
    131050: "opted_out",
    131051: "unsupported_message_type",
    132000: "template_params_mismatch",
    132001: "template_not_found",
    132015: "template_paused",
    132016: "template_disabled",
}

# --- Twilio-style SMS error codes (``code``) ---
SMS_THROTTLE_CODES = frozenset({20429, 14107})
SMS_TRANSIENT_CODES = frozenset({20500, 20503})
SMS_PERMANENT_REASONS: Mapping[int, str] = {
    20003: "unauthorized",
    20404: "not_found",
    21211: "invalid_number",
    21408: "region_not_enabled",
    21602: "missing_body",
    21604: "missing_to",
    21606: "invalid_sender",
    21610: "opted_out",
    21612: "unreachable_route",
    21614: "not_mobile",
    21617: "body_too_long",
}

_CodeTables = tuple[frozenset[int], frozenset[int], Mapping[int, str]]
_CODE_TABLES: Mapping[str, _CodeTables] = {
    "whatsapp": (WHATSAPP_THROTTLE_CODES, WHATSAPP_TRANSIENT_CODES, WHATSAPP_PERMANENT_REASONS),
    "sms": (SMS_THROTTLE_CODES, SMS_TRANSIENT_CODES, SMS_PERMANENT_REASONS),
}
_NO_CODES: _CodeTables = (frozenset(), frozenset(), {})
_TRANSIENT_STATUSES = frozenset({408, 409, 425})
_ENHANCED_STATUS = re.compile(r"^\s*([245])\.(\d{1,3})\.(\d{1,3})\b")


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delta-seconds or an HTTP-date), ``None`` if absent/bad.

    ``now`` (epoch seconds) is only needed for the HTTP-date form; without it such a value yields ``None``.
    """
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if seconds == seconds else None  # NaN guard
    if now is None:
        return None
    try:
        when: datetime = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT; parsedate gives naive for "-0000"
        return None
    return max(0.0, when.timestamp() - now)


def _header(headers: Mapping[str, str] | None, name: str) -> str | None:
    if not headers:
        return None
    value = headers.get(name)
    if value is not None:
        return value
    lowered = name.lower()
    for key, val in headers.items():
        if key.lower() == lowered:
            return val
    return None


def provider_error_code(channel: str, body: Any) -> int | None:
    """The provider's own error code from a decoded error body, if it has one."""
    if not isinstance(body, Mapping):
        return None
    raw: Any
    if channel == "whatsapp":
        error = body.get("error")
        raw = error.get("code") if isinstance(error, Mapping) else None
    else:
        raw = body.get("code")
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int):
        return raw
    if isinstance(raw, str) and raw.strip().isdigit():
        return int(raw)
    return None


def http_response_error(
    channel: str,
    status_code: int,
    body: Any,
    headers: Mapping[str, str] | None = None,
    *,
    now: float | None = None,
) -> DeliveryError | None:
    """The delivery error an HTTP answer means, or ``None`` for success. See the module rules."""
    if 200 <= status_code < 300:
        return None
    code = provider_error_code(channel, body)
    throttle_codes, transient_codes, reasons = _CODE_TABLES.get(channel, _NO_CODES)
    retry_after = parse_retry_after(_header(headers, "Retry-After"), now=now)
    if status_code == 429 or (code is not None and code in throttle_codes):
        return ThrottledError("throttled", retry_after=retry_after)
    if status_code >= 500:
        return TransientDeliveryError(f"server_error: {status_code}", retry_after=retry_after)
    if status_code in _TRANSIENT_STATUSES or (code is not None and code in transient_codes):
        return TransientDeliveryError(f"temporary: {code if code is not None else status_code}", retry_after)
    if status_code == 401:
        return ProviderAccountError("unauthorized")
    if status_code == 403 and (code is None or code not in reasons):
        return ProviderAccountError("forbidden")
    if code is not None and code in reasons:
        reason = reasons[code]
        return ProviderAccountError(reason) if reason in ACCOUNT_REASONS else PermanentDeliveryError(reason)
    if 400 <= status_code < 500:
        return PermanentDeliveryError(f"rejected: {code if code is not None else status_code}")
    return PermanentDeliveryError(f"unexpected_status: {status_code}")


def classify_http_response(
    channel: str,
    status_code: int,
    body: Any,
    headers: Mapping[str, str] | None = None,
    *,
    now: float | None = None,
) -> None:
    """Return ``None`` if the answer means delivered, else raise the matching delivery error.

    ``body`` is the decoded JSON body or ``None``; ``headers`` any mapping (case-insensitive lookup of
    ``Retry-After``); ``now`` (epoch seconds) only matters for an HTTP-date ``Retry-After``.
    """
    error = http_response_error(channel, status_code, body, headers, now=now)
    if error is not None:
        raise error


def smtp_enhanced_status(message: str) -> str | None:
    """The RFC 3463 enhanced status code (``"5.1.1"``) at the start of an SMTP reply text, if any."""
    match = _ENHANCED_STATUS.match(message or "")
    return ".".join(match.groups()) if match else None


def smtp_reply_error(code: int, message: str = "") -> DeliveryError | None:
    """The delivery error an SMTP reply means, or ``None`` for 2xx/3xx."""
    if 200 <= code < 400:
        return None
    enhanced = smtp_enhanced_status(message)
    label = f"{code} {enhanced}" if enhanced else str(code)
    if 400 <= code < 500:
        if enhanced is not None and enhanced.startswith("4.7."):
            return ThrottledError("throttled")
        return TransientDeliveryError(f"temporary: {label}")
    if code in (530, 535) or enhanced == "5.7.8":
        return ProviderAccountError("unauthorized")
    if enhanced is not None and enhanced.startswith("5.1."):
        return PermanentDeliveryError("invalid_address")
    if enhanced == "5.2.2":
        return PermanentDeliveryError("mailbox_full")
    return PermanentDeliveryError(f"rejected: {label}")


def classify_smtp_reply(code: int, message: str = "") -> None:
    """Return ``None`` for a positive SMTP reply, else raise the matching delivery error."""
    error = smtp_reply_error(code, message)
    if error is not None:
        raise error
