"""The topic registry: every Kafka topic of the pipeline by its logical name, with its key, its record type
and the consumer groups that read it. The one place these are spelled; everything else imports them.

Logical names are unprefixed; ``KafkaSettings.topic(name)`` gives the physical (prefixed) name, and
``KafkaSettings.topic(group)`` the physical group id. Creating the topics is ``producers.topics``' job.
Pure: no Kafka client here.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "ANALYTICS",
    "ANALYTICS_PARTS",
    "COMMANDS",
    "COMMANDS_REJECTED",
    "EVENTS",
    "MESSAGES_DLQ",
    "OUTCOMES",
    "OUTCOME_BATCHES",
    "RECEIPTS",
    "RECEIPTS_GROUP",
    "TALLY_FORWARDER_GROUP",
    "TALLY_GROUP",
    "TOPICS",
    "Topic",
    "commands_group",
    "messages_topic",
    "record_for",
    "retry_topic",
    "sender_group",
]


@dataclass(frozen=True, slots=True)
class Topic:
    name: str  # logical name
    key: str  # what the record key is
    record: str  # the Avro record (schemas/*.avsc) of every value


COMMANDS = "campaign.commands"
COMMANDS_REJECTED = "campaign.commands.rejected"
EVENTS = "campaign.events"
MESSAGES_DLQ = "campaign.messages.dlq"
OUTCOMES = "delivery.outcomes"
OUTCOME_BATCHES = "delivery.outcomes.batched"
"""Internal to the Faust analytics (``streams/tally.py``): ``delivery.outcomes`` forwarded in batches
(``streams.outcome_batches``), one OutcomeBatch record per source partition per batch, written without a key to the
partition of the same number, so the analytics handle one Faust event per batch instead of one per outcome."""
ANALYTICS = "campaign.analytics"
ANALYTICS_PARTS = "campaign.analytics_parts"
"""Internal to the Faust analytics (``streams/tally.py``): one source partition's absolute counts of a (campaign,
window), keyed by campaign id, JSON values (Faust's own serializer; nothing outside that app reads it)."""
RECEIPTS = "delivery.receipts"
"""Verified provider callbacks (``campaigns webhooks``), keyed by the provider's message id: the receiver knows
no recipient id (finding it would put a database query in front of every webhook answer), and one message's
receipts then share a partition, so the receipts stage sees them in arrival order (its merge does not need
it). A STOP reply, which names no message, is keyed by its address."""
_MESSAGES_PREFIX = "campaign.messages."

TOPICS: dict[str, Topic] = {t.name: t for t in (
    Topic(COMMANDS, "campaign id", "CampaignCommand"),
    Topic(COMMANDS_REJECTED, "campaign id", "DeadLetter"),
    Topic(EVENTS, "campaign id", "CampaignEvent"),
    Topic(MESSAGES_DLQ, "recipient id", "DeadLetter"),
    Topic(OUTCOMES, "recipient id", "DeliveryOutcome"),
    Topic(OUTCOME_BATCHES, "none (the partition is the source partition)", "OutcomeBatch"),
    Topic(ANALYTICS, "campaign id", "CampaignAnalytics"),
    Topic(RECEIPTS, "provider message id (address for a STOP reply)", "DeliveryReceipt"),
)}
"""The fixed topics; each channel adds ``messages_topic(channel)`` and its ``retry_topic(channel, n)``
(key: recipient id, record: RecipientMessage)."""

# The Faust analytics (streams/tally.py, the tally stage): its Faust app id, which is its consumer group, over
# OUTCOME_BATCHES (agent count_outcomes) and ANALYTICS_PARTS (agent merge_parts); its forwarder's group, over
# OUTCOMES (streams/outcome_batches.py, a thread of the same process).
TALLY_GROUP = "campaigns-analytics"
TALLY_FORWARDER_GROUP = "campaigns-analytics-forwarder"
RECEIPTS_GROUP = "receipts"  # the receipts stage, over RECEIPTS


def messages_topic(channel: str) -> str:
    """Logical name of a channel's message topic, e.g. ``campaign.messages.sms``."""
    return f"{_MESSAGES_PREFIX}{channel}"


def retry_topic(channel: str, tier: int) -> str:
    """Logical name of a channel's retry tier ``tier`` (1-based), e.g. ``campaign.messages.sms.retry.2``."""
    return f"{_MESSAGES_PREFIX}{channel}.retry.{tier}"


def sender_group(channel: str) -> str:
    """The consumer group of a channel's senders (its message topic and retry tiers)."""
    return f"sender-{channel}"


def commands_group(topic_prefix: str, client_id: str) -> str:
    """The (physical) consumer group of the command consumer: ``<topic prefix><client id>.commands``."""
    return f"{topic_prefix}{client_id}.commands"


def record_for(name: str, prefix: str = "") -> str | None:
    """The record type of the topic ``name`` (logical, or physical with its ``prefix``), or None if the topic
    is not one of the pipeline's."""
    if prefix and name.startswith(prefix):
        name = name[len(prefix):]
    if name in TOPICS:
        return TOPICS[name].record
    if name.startswith(_MESSAGES_PREFIX):
        return "RecipientMessage"
    return None
