"""The pipeline's shared vocabularies, defined once: channels and the statuses stored in the database and carried
on the topics. Values are the exact strings stored and sent (a ``StrEnum`` member *is* its string, so it compares,
hashes and serialises as one).

The campaign's own states are :class:`campaigns.core.states.CampaignStatus` (with the state machine that moves
them). ``tests/unit/test_core_vocabulary.py`` checks these against the Avro schemas' enums and the database's CHECK
constraints, so a value added in one place and not the other fails the suite.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = [
    "CHANNELS",
    "COUNTERS",
    "PER_RECIPIENT_OUTCOMES",
    "RECEIPT_OUTCOMES",
    "STATUS_TO_COUNTER",
    "TERMINAL_RECIPIENT_STATUSES",
    "Channel",
    "CustomerStatus",
    "OutcomeStatus",
    "ReceiptStatus",
    "RecipientStatus",
    "SuppressionReason",
    "TemplateStatus",
]


class Channel(StrEnum):
    """A delivery channel; values are the strings used in payloads, topics and the database."""

    WHATSAPP = "whatsapp"
    SMS = "sms"
    EMAIL = "email"


CHANNELS: tuple[str, ...] = tuple(c.value for c in Channel)
"""Every channel, in the order the CLI and the topics list them."""


class RecipientStatus(StrEnum):
    """A ``campaign_recipient_log`` row: ``claimed`` (a sender holds it), ``retrying`` (its retry is on a retry
    topic), then one of the terminal statuses."""

    CLAIMED = "claimed"
    RETRYING = "retrying"
    SENT = "sent"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"


TERMINAL_RECIPIENT_STATUSES: frozenset[RecipientStatus] = frozenset(
    {RecipientStatus.SENT, RecipientStatus.FAILED, RecipientStatus.SKIPPED, RecipientStatus.CANCELLED}
)
"""Statuses a recipient's row never leaves."""


class OutcomeStatus(StrEnum):
    """A ``DeliveryOutcome`` record's status (the Avro enum ``OutcomeStatus``): per-recipient results, then the
    provider's receipts."""

    SENT = "SENT"
    FAILED = "FAILED"
    RETRYING = "RETRYING"
    SKIPPED = "SKIPPED"
    CANCELLED = "CANCELLED"
    DELIVERED = "DELIVERED"
    READ = "READ"
    CLICKED = "CLICKED"
    BOUNCED = "BOUNCED"


PER_RECIPIENT_OUTCOMES: frozenset[OutcomeStatus] = frozenset(
    {OutcomeStatus.SENT, OutcomeStatus.FAILED, OutcomeStatus.RETRYING, OutcomeStatus.SKIPPED, OutcomeStatus.CANCELLED}
)
"""Outcomes about one recipient's message, which a recipient-log row backs."""

RECEIPT_OUTCOMES: frozenset[OutcomeStatus] = frozenset(set(OutcomeStatus) - PER_RECIPIENT_OUTCOMES)
"""The provider's aggregate receipts (``update_metrics``): their ``attempt`` field carries the count."""

STATUS_TO_COUNTER: dict[str, str] = {
    OutcomeStatus.SENT: "sent", OutcomeStatus.FAILED: "failed", OutcomeStatus.RETRYING: "retried",
    OutcomeStatus.SKIPPED: "skipped", OutcomeStatus.CANCELLED: "cancelled", OutcomeStatus.DELIVERED: "delivered",
    OutcomeStatus.READ: "read", OutcomeStatus.CLICKED: "clicked", OutcomeStatus.BOUNCED: "bounced",
}
"""The ``campaign_analytics`` counter each outcome status adds to."""

COUNTERS: tuple[str, ...] = tuple(STATUS_TO_COUNTER.values())
"""The outcome counters of ``campaign_analytics`` and ``campaign.analytics``, in column order."""


class ReceiptStatus(StrEnum):
    """A ``DeliveryReceipt`` record's status (the Avro enum ``ReceiptStatus``, ``delivery.receipts``): what a
    provider reported about a sent message, or STOP, an inbound opt-out reply (about an address, not a message)."""

    QUEUED = "QUEUED"
    SENT = "SENT"
    FAILED = "FAILED"
    UNDELIVERED = "UNDELIVERED"
    DELIVERED = "DELIVERED"
    READ = "READ"
    BOUNCED = "BOUNCED"
    COMPLAINED = "COMPLAINED"
    STOP = "STOP"


class CustomerStatus(StrEnum):
    ACTIVE = "active"
    INACTIVE = "inactive"
    BLOCKED = "blocked"


class TemplateStatus(StrEnum):
    DRAFT = "draft"
    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"


class SuppressionReason(StrEnum):
    """Why an address is on the ``suppressions`` list (no campaign sends to it on that channel)."""

    HARD_BOUNCE = "hard_bounce"
    COMPLAINT = "complaint"
    STOP_REPLY = "stop_reply"
    UNSUBSCRIBE = "unsubscribe"
    MANUAL = "manual"
