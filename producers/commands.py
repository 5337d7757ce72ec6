"""``campaign.commands``: building, signing and sending commands (what upstream systems and tests produce).

The consumer that applies them is :class:`streams.commands.CommandConsumer`.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from campaigns.codec import get_codec
from campaigns.core import signing
from campaigns.errors import (
    ValidationError,
)
from campaigns.service import (
    COMMAND_TYPES,
    IMPORT_COMMAND_TYPES,
    CommandRequest,
)
from campaigns.settings import Settings
from campaigns.topics import commands_group
from producers.kafka import Publisher
from producers.topics import COMMANDS

log = logging.getLogger(__name__)

COMMAND_RECORD = "CampaignCommand"


def command_group_id(settings: Settings) -> str:
    """The consumer group of the command consumer (from the topic registry)."""
    return commands_group(settings.kafka.topic_prefix, settings.kafka.client_id)


# --- decoding and sending ------------------------------------------------------------------------


def command_request(record: Mapping[str, Any]) -> CommandRequest:
    """A decoded CampaignCommand record as a :class:`CommandRequest`; ValidationError lists what is wrong."""
    problems: list[str] = []
    command_type = str(record.get("command_type"))
    campaign_id: uuid.UUID | None = None
    if record.get("campaign_id") is not None:
        try:
            campaign_id = uuid.UUID(str(record["campaign_id"]))
        except ValueError:
            problems.append(f"campaign_id: must be a UUID, got {str(record['campaign_id'])[:60]!r}")
    payload: object = None
    payload_json = record.get("payload_json")
    if command_type in IMPORT_COMMAND_TYPES and campaign_id is not None:
        problems.append(f"campaign_id: an {command_type} command names no campaign (null)")
    if command_type == "CREATE" or command_type in IMPORT_COMMAND_TYPES:
        if payload_json is None:
            problems.append(f"payload_json: required for {command_type} (a JSON document)")
        else:
            try:
                payload = json.loads(payload_json)
            except ValueError as exc:
                problems.append(f"payload_json: not valid JSON ({exc})")
            except RecursionError:
                problems.append("payload_json: nested too deeply to be a campaign payload")
    elif payload_json is not None:
        problems.append(f"payload_json: only CREATE and IMPORT_* commands carry a payload, not {command_type}")
    start_at = record.get("start_at")
    if isinstance(start_at, int):
        start_at = datetime.fromtimestamp(start_at / 1000, UTC)
    if start_at is not None and command_type != "SCHEDULE":
        problems.append(f"start_at: only SCHEDULE commands carry a start time, not {command_type}")
    if problems:
        raise ValidationError(problems)
    return CommandRequest(
        command_id=str(record.get("command_id") or ""),
        command_type=command_type,
        principal=str(record.get("principal") or ""),
        campaign_id=campaign_id,
        payload=payload,
        start_at=start_at,
    )


def build_command(command: Mapping[str, Any]) -> dict[str, Any]:
    """A complete CampaignCommand record from a dict.

    Fields as in ``schemas/campaign_command.avsc``; conveniences: ``command_id`` defaults to a new UUID,
    ``issued_at`` to now, ``payload`` (a dict) is serialised into ``payload_json``, and ``campaign_id``
    may be a UUID.
    """
    record = dict(command)
    if "payload" in record:
        record["payload_json"] = json.dumps(record.pop("payload"))
    record.setdefault("command_id", str(uuid.uuid4()))
    record.setdefault("issued_at", datetime.now(UTC))
    record.setdefault("campaign_id", None)
    record.setdefault("payload_json", None)
    record.setdefault("start_at", None)
    record.setdefault("principal", "")  # empty: the signing key's principal (the consumer fills it in)
    if isinstance(record["campaign_id"], uuid.UUID):
        record["campaign_id"] = str(record["campaign_id"])
    if record.get("command_type") not in (*COMMAND_TYPES, *IMPORT_COMMAND_TYPES):
        raise ValidationError(
            f"command_type: must be one of {', '.join((*COMMAND_TYPES, *IMPORT_COMMAND_TYPES))}, "
            f"got {record.get('command_type')!r}"
        )
    return record


@dataclass(frozen=True)
class SigningKey:
    """An upstream system's command key (``campaigns command-key create``): its id and secret."""

    key_id: str
    secret: str


def send_command(
    producer: Publisher,
    settings: Settings,
    command: Mapping[str, Any],
    *,
    key: SigningKey | None,
    flush: bool = True,
    clock: Callable[[], float] = time.time,
) -> str:
    """Produce one command to ``campaign.commands`` (see :func:`build_command`), signed with ``key``
    (``None``: unsigned, which the consumer rejects — for tests of exactly that); returns its command id.

    The key is the campaign id (or, for a CREATE without one, the command id), so a campaign's commands
    are applied in the order they were sent. With ``flush`` (the default) it returns only once Kafka
    acknowledged the record (SinkError if not).
    """
    record = build_command(command)
    value = get_codec().encode(COMMAND_RECORD, record)
    record_key = str(record["campaign_id"] or record["command_id"]).encode()
    headers = {"command_id": record["command_id"]}
    if key is not None:
        headers.update(signing.signed_headers(key.secret, key.key_id, int(clock() * 1000), record_key, value))
    producer.produce_tracked(settings.kafka.topic(COMMANDS), record_key, value, headers=headers)
    if flush:
        producer.flush(30.0)
    return str(record["command_id"])
