"""Pure parts of the producers: topic names and configs, command building/decoding, the relay's marking
rule and the fake publisher."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import pytest

from campaigns.codec import get_codec
from campaigns.errors import SinkError, ValidationError
from campaigns.settings import KafkaSettings, SenderSettings, Settings
from producers.commands import build_command, command_request
from producers.kafka import Delivery, MemoryProducer
from producers.outbox_relay import RECORD_FOR_TOPIC, _acknowledged_prefixes, _Row
from producers.topics import all_topic_names, logical_topic_names, topic_specs


def _settings(**kafka) -> Settings:
    return Settings(kafka=KafkaSettings(**kafka), sender=SenderSettings(retry_tier_delays_s=(1, 5)))


def test_every_topic_of_the_design_is_listed_and_prefixed():
    settings = _settings(topic_prefix="t1.", partitions=4, retention_ms=1000)
    names = logical_topic_names(settings)
    assert names == [
        "campaign.commands",
        "campaign.commands.rejected",
        "campaign.events",
        "campaign.messages.whatsapp",
        "campaign.messages.whatsapp.retry.1",
        "campaign.messages.whatsapp.retry.2",
        "campaign.messages.sms",
        "campaign.messages.sms.retry.1",
        "campaign.messages.sms.retry.2",
        "campaign.messages.email",
        "campaign.messages.email.retry.1",
        "campaign.messages.email.retry.2",
        "campaign.messages.dlq",
        "delivery.outcomes",
        "campaign.analytics",
        "delivery.receipts",
    ]
    assert all_topic_names(settings) == [f"t1.{n}" for n in names]
    specs = topic_specs(settings)
    assert {s.partitions for s in specs} == {4}
    assert {tuple(sorted(s.config.items())) for s in specs} == {
        (("cleanup.policy", "delete"), ("retention.ms", "1000"))
    }


def test_build_command_fills_defaults_and_encodes():
    campaign_id = uuid.uuid4()
    record = build_command(
        {"command_type": "CREATE", "principal": "svc", "campaign_id": campaign_id, "payload": {"name": "x"}}
    )
    assert record["campaign_id"] == str(campaign_id) and json.loads(record["payload_json"]) == {"name": "x"}
    assert uuid.UUID(record["command_id"]) and record["issued_at"].tzinfo is not None
    decoded = get_codec().decode(get_codec().encode("CampaignCommand", record), "CampaignCommand")
    assert decoded["command_type"] == "CREATE"
    with pytest.raises(ValidationError, match="command_type"):
        build_command({"command_type": "DELETE", "principal": "svc"})


def test_command_request_checks_what_only_the_command_knows():
    start = datetime(2026, 5, 1, 9, tzinfo=UTC)
    request = command_request(
        {
            "command_id": "c1",
            "command_type": "SCHEDULE",
            "principal": "svc",
            "campaign_id": str(uuid.UUID(int=1)),
            "payload_json": None,
            "start_at": start,
        }
    )
    assert request.start_at == start and request.campaign_id == uuid.UUID(int=1)
    with pytest.raises(ValidationError) as bad:
        command_request(
            {
                "command_id": "c2",
                "command_type": "PAUSE",
                "principal": "svc",
                "campaign_id": "not-a-uuid",
                "payload_json": "{}",
                "start_at": start,
            }
        )
    assert bad.value.problems == [
        "campaign_id: must be a UUID, got 'not-a-uuid'",
        "payload_json: only CREATE and IMPORT_* commands carry a payload, not PAUSE",
        "start_at: only SCHEDULE commands carry a start time, not PAUSE",
    ]
    with pytest.raises(ValidationError, match="payload_json: required for CREATE"):
        command_request({"command_id": "c3", "command_type": "CREATE", "principal": "svc"})


def _row(row_id: int, key: str) -> _Row:
    return _Row(row_id, str(uuid.uuid4()), "campaign.events", key, "CREATED", {})


def _delivery(ok: bool) -> Delivery:
    return Delivery("t", None, done=True, error=None if ok else "boom")


def test_relay_marks_per_key_only_the_acknowledged_prefix():
    sent = [
        (_row(1, "a"), _delivery(True)),
        (_row(2, "b"), _delivery(False)),
        (_row(3, "a"), _delivery(True)),
        (_row(4, "b"), _delivery(True)),  # acknowledged, but after b's failure: re-sent with it, in order
        (_row(5, "c"), Delivery("t", None)),  # no report yet: not acknowledged
    ]
    assert _acknowledged_prefixes(sent) == [1, 3]


def test_the_relay_knows_the_record_of_each_outbox_topic():
    assert RECORD_FOR_TOPIC == {"campaign.events": "CampaignEvent", "delivery.outcomes": "DeliveryOutcome"}


def test_memory_publisher_keeps_encoded_bytes_and_can_fail():
    publisher = MemoryProducer(fail_topics={"bad"})
    ok = publisher.produce_tracked("good", "k", b"v", headers={"event_id": "e"})
    publisher.flush()
    assert ok.ok and publisher.records == [("good", b"k", b"v", {"event_id": b"e"})]
    failed = publisher.produce_tracked("bad", None, b"v")
    with pytest.raises(SinkError, match="1 of 1 records failed"):
        publisher.flush()
    assert not failed.ok


def test_every_topic_of_the_pipeline_has_its_record_in_the_registry():
    from campaigns.codec import get_codec
    from campaigns.topics import record_for

    settings = Settings(kafka=KafkaSettings(topic_prefix="p."))
    codec = get_codec()
    for name in all_topic_names(settings):
        record = record_for(name, "p.")
        assert record is not None, name
        assert record in codec.record_names, (name, record)
    assert record_for("someone.elses.topic") is None
