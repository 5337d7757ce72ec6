"""Operator commands on real services: replay and DLQ redrive never re-send and never double-count."""

from __future__ import annotations

import uuid

from app.cli import main as cli_main
from campaigns.codec import get_codec
from campaigns.transports.fake import FakeTransport
from producers.kafka import KafkaProducer
from producers.operate import Range, dead_letters, redrive, replay
from streams.worker import Worker
from tests.e2e.test_pipeline import analytics_totals, log_counts
from tests.faults.history import analytics_consumed
from tests.helpers import wait_for


def run_campaign(settings, service, segments, transport):
    campaign_id = service.create_campaign("marketer-1", {
        "name": "replayed", "channel": "email", "content": {"subject": "s", "body": "b"},
        "segments": segments, "batch_size": 300,
    })
    service.schedule_campaign("marketer-1", campaign_id)
    wait_for(lambda: service.get_campaign("marketer-1", campaign_id).status == "completed", timeout=90,
             what="campaign completed")
    return campaign_id


def test_replaying_messages_and_outcomes_resends_nothing_and_counts_nothing_twice(settings, service, audience):
    _, segments = audience(800)
    transport = FakeTransport("email")
    worker = Worker(settings, stages=("scheduler", "expander", "senders", "tally", "completion"), channels=("email",),
                    transports={"email": transport}, rate_limits=False)
    with worker:
        campaign_id = run_campaign(settings, service, segments, transport)
        sent_before = len(transport.sent)
        log_before, totals_before = log_counts(settings.database.dsn(), campaign_id), analytics_totals(
            settings.database.dsn(), campaign_id)
        senders = worker.senders["email"]  # sender.consumers of them, each with its share of the partitions

        def received() -> int:
            return sum(sender.stats.received for sender in senders)

        received_before = received()

        report = replay(settings, settings.kafka.topic("campaign.messages.email"), Range(), campaign=str(campaign_id))
        assert report.produced == sum(log_before.values()), "a message per audience member, skipped ones too"
        wait_for(lambda: received() - received_before >= report.produced, timeout=60,
                 what="replayed messages processed")

        outcomes = replay(settings, settings.kafka.topic("delivery.outcomes"), Range(), campaign=str(campaign_id))
        assert outcomes.produced > 0
        # The sender re-emitted one outcome per dropped duplicate too: all of them must be recognised. The Faust
        # analytics commit an offset only once its outcome's effects (table writes, parts) are flushed.
        wait_for(lambda: analytics_consumed(settings), timeout=60, interval=0.25,
                 what="the Faust analytics consumed delivery.outcomes to its end")

    assert len(transport.sent) == sent_before, "nothing was sent again"
    assert transport.duplicate_message_ids() == {}
    assert log_counts(settings.database.dsn(), campaign_id) == log_before
    assert analytics_totals(settings.database.dsn(), campaign_id) == totals_before


def test_dlq_list_and_redrive(settings, service, audience, capsys):
    transport = FakeTransport("email")
    poison = {"message_id": str(uuid.uuid4()), "campaign_id": str(uuid.uuid4()), "recipient_id": "42",
              "channel": "email", "address": "x@example.com", "subject": "s", "body": "b", "template_name": None,
              "locale": "en", "attempt": 0, "not_before": 0, "created_at": 0, "last_error": None}
    topic = settings.kafka.topic("campaign.messages.email")
    with Worker(settings, stages=("senders",), channels=("email",), transports={"email": transport},
                rate_limits=False):
        producer = KafkaProducer(settings.kafka)
        producer.produce(topic, "42", get_codec().encode("RecipientMessage", poison))
        producer.produce(topic, "43", b"\x00garbage")
        producer.flush()
        wait_for(lambda: len(dead_letters(settings)) == 2, timeout=60, what="two dead letters")
        assert {d["reason"] for d in dead_letters(settings)} == {"unknown_campaign", "undecodable"}

        report = redrive(settings, reason="unknown_campaign")
        assert report.produced == 1
        wait_for(lambda: len(dead_letters(settings, reason="unknown_campaign")) == 2, timeout=60,
                 what="the re-driven record dead-lettered again (its campaign still does not exist)")
    assert transport.sent == []


def test_cli_dlq_list_and_replay_dry_run(settings, service, monkeypatch, capsys):
    from campaigns.settings import load_settings

    service.provision_principal("ops-admin", "admin")  # reading and replaying topics needs pipeline.* permissions
    monkeypatch.setenv("CAMPAIGNS_TOKEN", service.create_token("ops-admin", "ops-admin")[1])
    monkeypatch.setenv("CAMPAIGNS_KAFKA__TOPIC_PREFIX", settings.kafka.topic_prefix)
    monkeypatch.setenv("CAMPAIGNS_DATABASE__NAME", settings.database.name)
    load_settings.cache_clear()
    try:
        from producers.topics import ensure_topics, topic_specs

        ensure_topics(settings.kafka, topic_specs(settings))
        assert cli_main(["dlq", "list"]) == 0
        assert "0 dead letters" in capsys.readouterr().out
        assert cli_main(["replay", "--topic", "campaign.messages.sms", "--from-offset", "0", "--dry-run"]) == 0
        assert "would re-drive 0" in capsys.readouterr().out
        assert cli_main(["replay", "--topic", "campaign.messages.sms", "--from-offset", "0",
                         "--from-time", "2026-01-01T00:00:00Z"]) == 2
        capsys.readouterr()
        # A target that does not exist is refused before anything is read or produced (it used to wait for
        # the producer's delivery timeout, ~30 s, and then fail).
        assert cli_main(["replay", "--topic", "campaign.messages.sms", "--from-offset", "0",
                         "--to", settings.kafka.topic("no.such.topic")]) == 2
        assert "does not exist" in capsys.readouterr().err
    finally:
        load_settings.cache_clear()
