"""The core's vocabularies are the ones the schemas and the database use: one definition, checked against both."""

from __future__ import annotations

import json
import re
from pathlib import Path

import schemas
from campaigns.core.states import CampaignStatus
from campaigns.core.vocabulary import (
    CHANNELS,
    TERMINAL_RECIPIENT_STATUSES,
    Channel,
    CustomerStatus,
    OutcomeStatus,
    ReceiptStatus,
    RecipientStatus,
    SuppressionReason,
)
from campaigns.db.models import Base

SCHEMAS = Path(schemas.__file__).parent


def _enum_symbols(record_file: str, enum_name: str) -> list[str]:
    found: list[list[str]] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if node.get("type") == "enum" and node.get("name") == enum_name:
                found.append(node["symbols"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(json.loads((SCHEMAS / record_file).read_text()))
    assert found, f"{record_file} has no enum {enum_name}"
    return found[0]


def _check_values(table: str, name: str) -> set[str]:
    constraint = next(c for c in Base.metadata.tables[table].constraints if c.name == name)
    return set(re.findall(r"'([a-z_]+)'", str(constraint.sqltext)))


def test_avro_enums_are_the_core_vocabularies() -> None:
    assert _enum_symbols("delivery_outcome.avsc", "OutcomeStatus") == [s.value for s in OutcomeStatus]
    assert _enum_symbols("recipient_message.avsc", "Channel") == list(CHANNELS)
    assert _enum_symbols("delivery_receipt.avsc", "ReceiptStatus") == [s.value for s in ReceiptStatus]


def test_database_checks_are_the_core_vocabularies() -> None:
    assert _check_values("campaign_recipient_log", "ck_recipient_log_status") == set(RecipientStatus)
    assert _check_values("campaigns", "ck_campaigns_status") == set(CampaignStatus)
    assert _check_values("customers", "ck_customers_status") == set(CustomerStatus)
    assert _check_values("suppressions", "ck_suppressions_reason") == set(SuppressionReason)
    assert _check_values("suppressions", "ck_suppressions_channel") == set(Channel)


def test_members_are_their_strings() -> None:
    assert RecipientStatus.SENT == "sent" and "sent" in TERMINAL_RECIPIENT_STATUSES
    assert "claimed" not in TERMINAL_RECIPIENT_STATUSES
    assert CHANNELS == ("whatsapp", "sms", "email")
