"""Delivery receipts: what providers report after a send, and how a recipient's row takes them. Pure.

* **Parsing** (:func:`from_whatsapp`, :func:`from_twilio`, :func:`from_email`): a verified provider callback
  becomes :class:`Receipt` values (the ``DeliveryReceipt`` record of ``delivery.receipts``). Each receipt has a
  deterministic ``receipt_id`` (a provider that retries a callback produces the same id).
* **The merge rule** (:func:`merge`): a row's receipt state - ``delivered_at``, ``read_at``, ``bounced_at``,
  ``complained_at``, ``provider_status`` - folded with a receipt. Guarantees, whatever the order or repetition
  of the receipts (the property tests check them):

  - the final state depends only on the *set* of receipts (commutative, associative, idempotent);
  - a timestamp, once set, is never cleared; it is the earliest event time reported for it (LEAST, not
    "first applied wins": first-applied would make the value depend on arrival order);
  - a ``read`` implies ``delivered``: it sets ``delivered_at`` too if that is unset;
  - ``provider_status`` only moves forward in :data:`STATUS_ORDER`.

  :func:`transitions` names the timestamps that went from unset to set: the analytics counters add exactly
  those, so a duplicate or a replay counts nothing.
* **Suppression** (:func:`suppression_reason`): hard bounces, complaints and STOP replies suppress the address
  on that channel.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from campaigns.core.vocabulary import ReceiptStatus, SuppressionReason

__all__ = [
    "STATUS_ORDER",
    "STOP_KEYWORDS",
    "Receipt",
    "ReceiptState",
    "ReceiptStatus",
    "fold",
    "from_email",
    "from_twilio",
    "from_whatsapp",
    "is_stop",
    "merge",
    "normalize_address",
    "receipt_id",
    "suppression_reason",
    "transitions",
]


STATUS_ORDER: dict[str, int] = {
    "queued": 0,
    "sent": 1,
    "failed": 2,
    "undelivered": 3,
    "delivered": 4,
    "read": 5,
    "bounced": 6,
    "complained": 7,
}
"""``provider_status`` only moves to a higher rank. A total order (no ties), so the final status does not depend
on arrival order. A bounce outranks delivered/read because an email can be accepted by the receiving server and
bounce afterwards (the bounce is the later, truer verdict); a complaint is the last thing that can happen."""

STOP_KEYWORDS = frozenset({"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "BAJA"})
"""Inbound replies that opt the sender out (Twilio's standard opt-out keywords, and BAJA for Spanish)."""

# Provider error codes that mean the address itself is bad (a hard bounce): Twilio 30005 unknown destination
# handset, 30006 landline or unreachable carrier, 21211 invalid 'To', 21614 not a mobile number; WhatsApp
# 131026 message undeliverable (not a WhatsApp user, or an outdated app), 131021 recipient cannot be sender.
HARD_BOUNCE_CODES = {
    "sms": frozenset({"30005", "30006", "21211", "21614"}),
    "whatsapp": frozenset({"131026", "131021"}),
}


@dataclass(frozen=True, slots=True)
class Receipt:
    """One provider report. ``occurred_at`` is the provider's event time (aware UTC). ``provider_message_id`` is
    None only for a STOP reply; ``address`` is the address concerned when the provider names it."""

    receipt_id: str
    channel: str
    status: ReceiptStatus
    provider_message_id: str | None
    occurred_at: datetime
    address: str | None = None
    bounce_type: str | None = None  # "hard" | "soft" for BOUNCED
    error_code: str | None = None

    def as_record(self, received_at: datetime, attempt: int = 0) -> dict[str, Any]:
        """The ``DeliveryReceipt`` Avro record."""
        return {
            "receipt_id": self.receipt_id,
            "channel": self.channel,
            "status": self.status.value,
            "provider_message_id": self.provider_message_id,
            "address": self.address,
            "bounce_type": self.bounce_type,
            "error_code": self.error_code,
            "occurred_at": self.occurred_at,
            "received_at": received_at,
            "attempt": attempt,
        }

    @staticmethod
    def from_record(record: Mapping[str, Any]) -> Receipt:
        occurred = record["occurred_at"]
        if not isinstance(occurred, datetime):
            occurred = datetime.fromtimestamp(occurred / 1000, UTC)
        return Receipt(
            record["receipt_id"],
            record["channel"],
            ReceiptStatus(record["status"]),
            record["provider_message_id"],
            occurred,
            record.get("address"),
            record.get("bounce_type"),
            record.get("error_code"),
        )


def receipt_id(channel: str, *parts: str) -> str:
    """A deterministic id: the same callback (a provider's retry) gives the same id."""
    return hashlib.sha256("\x1f".join((channel, *parts)).encode()).hexdigest()[:40]


def normalize_address(channel: str, address: str) -> str:
    """The suppression list's form of an address: email lower-cased; phone numbers E.164 (``+`` and digits:
    WhatsApp reports ``15551234567`` where Twilio reports ``+15551234567``)."""
    address = address.strip()
    if channel == "email":
        return address.lower()
    digits = re.sub(r"\D", "", address)
    return f"+{digits}" if digits else address


def is_stop(body: str | None) -> bool:
    """Whether an inbound message is an opt-out: its whole text, trimmed and case-folded, is a keyword."""
    return body is not None and body.strip().upper().rstrip(".!") in STOP_KEYWORDS


def _epoch(value: Any) -> datetime | None:
    try:
        seconds = int(str(value))
        return datetime.fromtimestamp(seconds, UTC)
    except (ValueError, OverflowError, OSError):
        return None


# --- provider payloads -----------------------------------------------------------------------------------

_WA_STATUS = {
    "sent": ReceiptStatus.SENT,
    "delivered": ReceiptStatus.DELIVERED,
    "read": ReceiptStatus.READ,
    "failed": ReceiptStatus.FAILED,
}


def from_whatsapp(payload: Any, now: datetime) -> list[Receipt]:
    """Receipts of a WhatsApp Cloud API webhook (``object: whatsapp_business_account``): every
    ``entry[].changes[].value.statuses[]`` (sent/delivered/read/failed; a failed status whose error code is a
    hard bounce code is BOUNCED) and every inbound text ``messages[]`` that is a STOP keyword. Anything else
    (other fields, unknown statuses, malformed entries) is ignored, as Meta advises for unknown fields."""
    out: list[Receipt] = []
    if not isinstance(payload, dict):
        return out
    for entry in payload.get("entry") or []:
        for change in (entry.get("changes") or []) if isinstance(entry, dict) else []:
            value = change.get("value") if isinstance(change, dict) else None
            if not isinstance(value, dict):
                continue
            for st in value.get("statuses") or []:
                if not isinstance(st, dict) or st.get("status") not in _WA_STATUS or not isinstance(st.get("id"), str):
                    continue
                status = _WA_STATUS[st["status"]]
                codes = [str(e.get("code")) for e in st.get("errors") or [] if isinstance(e, dict)]
                code = codes[0] if codes else None
                bounce = None
                if status is ReceiptStatus.FAILED and code in HARD_BOUNCE_CODES["whatsapp"]:
                    status, bounce = ReceiptStatus.BOUNCED, "hard"
                occurred = _epoch(st.get("timestamp")) or now
                recipient = st.get("recipient_id")
                out.append(
                    Receipt(
                        receipt_id("whatsapp", st["id"], st["status"], str(st.get("timestamp"))),
                        "whatsapp",
                        status,
                        st["id"],
                        occurred,
                        normalize_address("whatsapp", recipient) if isinstance(recipient, str) else None,
                        bounce,
                        code,
                    )
                )
            for msg in value.get("messages") or []:
                if not isinstance(msg, dict) or msg.get("type") != "text" or not isinstance(msg.get("from"), str):
                    continue
                text = msg.get("text")
                if isinstance(text, dict) and is_stop(text.get("body")):
                    out.append(
                        Receipt(
                            receipt_id("whatsapp", "inbound", str(msg.get("id"))),
                            "whatsapp",
                            ReceiptStatus.STOP,
                            None,
                            _epoch(msg.get("timestamp")) or now,
                            normalize_address("whatsapp", msg["from"]),
                        )
                    )
    return out


_TWILIO_STATUS = {
    "accepted": ReceiptStatus.QUEUED,
    "scheduled": ReceiptStatus.QUEUED,
    "queued": ReceiptStatus.QUEUED,
    "sending": ReceiptStatus.SENT,
    "sent": ReceiptStatus.SENT,
    "delivered": ReceiptStatus.DELIVERED,
    "read": ReceiptStatus.READ,
    "undelivered": ReceiptStatus.UNDELIVERED,
    "failed": ReceiptStatus.FAILED,
}


def from_twilio(form: Mapping[str, str], now: datetime) -> list[Receipt]:
    """Receipts of a Twilio request: a status callback (``MessageSid`` + ``MessageStatus``; undelivered/failed
    with a hard-bounce ``ErrorCode`` is BOUNCED), or an inbound message (``Body`` present, no ``MessageStatus``)
    that is a STOP keyword. Twilio status callbacks carry no event time: ``now`` (arrival) stands in."""
    sid = form.get("MessageSid") or form.get("SmsSid")
    status_text = (form.get("MessageStatus") or form.get("SmsStatus") or "").lower()
    if sid and status_text in _TWILIO_STATUS:
        status = _TWILIO_STATUS[status_text]
        code = form.get("ErrorCode") or None
        bounce = None
        if status in (ReceiptStatus.UNDELIVERED, ReceiptStatus.FAILED) and code in HARD_BOUNCE_CODES["sms"]:
            status, bounce = ReceiptStatus.BOUNCED, "hard"
        to = form.get("To")
        return [
            Receipt(
                receipt_id("sms", sid, status_text),
                "sms",
                status,
                sid,
                now,
                normalize_address("sms", to) if to else None,
                bounce,
                code,
            )
        ]
    if sid and "Body" in form and form.get("From") and is_stop(form.get("Body")):
        return [
            Receipt(
                receipt_id("sms", "inbound", sid),
                "sms",
                ReceiptStatus.STOP,
                None,
                now,
                normalize_address("sms", form["From"]),
            )
        ]
    return []


def from_email(payload: Any, now: datetime) -> list[Receipt]:
    """Receipts of an email notification (docs/webhooks.md): ``{"notification_id", "type":
    delivery|bounce|complaint, "message_id", "recipient", "bounce_type": permanent|transient, "occurred_at":
    epoch s}``. A permanent bounce is hard, anything else soft. Raises ``ValueError`` for a malformed one."""
    if not isinstance(payload, dict):
        raise ValueError("notification must be a JSON object")
    kind = payload.get("type")
    nid, mid = payload.get("notification_id"), payload.get("message_id")
    if kind not in ("delivery", "bounce", "complaint"):
        raise ValueError("type must be delivery, bounce or complaint")
    if not isinstance(nid, str) or not nid or not isinstance(mid, str) or not mid:
        raise ValueError("notification_id and message_id must be non-empty strings")
    recipient = payload.get("recipient")
    status = {
        "delivery": ReceiptStatus.DELIVERED,
        "bounce": ReceiptStatus.BOUNCED,
        "complaint": ReceiptStatus.COMPLAINED,
    }[kind]
    bounce = None
    if status is ReceiptStatus.BOUNCED:
        bounce = "hard" if payload.get("bounce_type") == "permanent" else "soft"
    occurred = _epoch(payload.get("occurred_at")) if "occurred_at" in payload else now
    if occurred is None:
        raise ValueError("occurred_at must be epoch seconds")
    return [
        Receipt(
            receipt_id("email", nid),
            "email",
            status,
            mid,
            occurred,
            normalize_address("email", recipient) if isinstance(recipient, str) and recipient else None,
            bounce,
            payload.get("diagnostic") if isinstance(payload.get("diagnostic"), str) else None,
        )
    ]


def suppression_reason(receipt: Receipt) -> SuppressionReason | None:
    """``hard_bounce``, ``complaint`` or ``stop_reply`` if the receipt suppresses its address, else None."""
    if receipt.status is ReceiptStatus.BOUNCED and receipt.bounce_type == "hard":
        return SuppressionReason.HARD_BOUNCE
    if receipt.status is ReceiptStatus.COMPLAINED:
        return SuppressionReason.COMPLAINT
    if receipt.status is ReceiptStatus.STOP:
        return SuppressionReason.STOP_REPLY
    return None


# --- the merge rule ---------------------------------------------------------------------------------------

TIMESTAMPS = ("delivered_at", "read_at", "bounced_at", "complained_at")
COUNTER_OF = {"delivered_at": "delivered", "read_at": "read", "bounced_at": "bounced", "complained_at": "complained"}


@dataclass(frozen=True, slots=True)
class ReceiptState:
    """A recipient row's receipt columns."""

    delivered_at: datetime | None = None
    read_at: datetime | None = None
    bounced_at: datetime | None = None
    complained_at: datetime | None = None
    provider_status: str | None = None


def _earliest(current: datetime | None, new: datetime | None) -> datetime | None:
    if current is None:
        return new
    if new is None:
        return current
    return min(current, new)


def merge(state: ReceiptState, receipt: Receipt) -> ReceiptState:
    """``state`` with ``receipt`` applied (see the module docstring for the guarantees). A STOP receipt, being
    about an address, changes no row."""
    status = receipt.status
    if status is ReceiptStatus.STOP:
        return state
    at = receipt.occurred_at
    changes: dict[str, Any] = {}
    if status in (ReceiptStatus.DELIVERED, ReceiptStatus.READ):
        changes["delivered_at"] = _earliest(state.delivered_at, at)
    if status is ReceiptStatus.READ:
        changes["read_at"] = _earliest(state.read_at, at)
    if status is ReceiptStatus.BOUNCED:
        changes["bounced_at"] = _earliest(state.bounced_at, at)
    if status is ReceiptStatus.COMPLAINED:
        changes["complained_at"] = _earliest(state.complained_at, at)
    name = status.value.lower()
    if state.provider_status is None or STATUS_ORDER[name] > STATUS_ORDER.get(state.provider_status, -1):
        changes["provider_status"] = name
    return replace(state, **changes) if changes else state


def fold(state: ReceiptState, receipts: Iterable[Receipt]) -> ReceiptState:
    for receipt in receipts:
        state = merge(state, receipt)
    return state


def transitions(before: ReceiptState, after: ReceiptState) -> list[tuple[str, datetime]]:
    """The timestamps unset in ``before`` and set in ``after``, as ``(counter, event time)``: what the analytics
    add (each row adds each counter at most once, ever)."""
    return [
        (COUNTER_OF[name], getattr(after, name))
        for name in TIMESTAMPS
        if getattr(before, name) is None and getattr(after, name) is not None
    ]
