"""Forged stage records on the real services (issue 16, part 3, for the message topics): a record names a
(campaign, recipient) pair and nothing more is believed. Regression: a hand-produced record for a real campaign
was delivered to an address and with content of the producer's choosing, and one for a real audience member
won that member's claim, so the real address got nothing (24 log rows for a total of 23)."""

from __future__ import annotations

import time

import psycopg2

from campaigns.codec import get_codec
from campaigns.core.ids import message_id
from campaigns.transports.fake import FakeTransport
from producers.kafka import KafkaProducer
from producers.topics import ensure_topics, topic_specs
from streams.worker import Worker
from tests.e2e.test_pipeline import log_counts
from tests.helpers import consume_to_end, wait_for

TERMINAL = ("sent", "failed", "skipped", "cancelled")


def test_forged_records_send_nothing_of_the_forger_and_every_member_gets_the_real_message(settings, service,
                                                                                          audience):
    plan, segments = audience(60)
    campaign_id = service.create_campaign("marketer-1", {
        "name": "forged", "channel": "email", "content": {"subject": "Real subject", "body": "<p>Real</p>"},
        "segments": segments[:1], "batch_size": 100,
    })
    members = [cid for cid in plan.ids() if 0 in plan.segment_of(cid)]
    outsider = next(cid for cid in plan.ids() if 0 not in plan.segment_of(cid))
    campaign = str(campaign_id)
    forged = {"campaign_id": campaign, "channel": "email", "subject": "You won", "body": "<a href=x>claim</a>",
              "template_name": None, "locale": "en", "attempt": 0, "not_before": 0,
              "created_at": int(time.time() * 1000), "last_error": None}
    producer = KafkaProducer(settings.kafka)
    topic = settings.kafka.topic("campaign.messages.email")
    codec = get_codec()
    ensure_topics(settings.kafka, topic_specs(settings))
    # Before the campaign starts: one forged record for a member (its own address and content), one for a
    # customer outside the audience.
    for recipient in (members[0], outsider):
        record = dict(forged, message_id=message_id(campaign, str(recipient)), recipient_id=str(recipient),
                      address="attacker@example.net")
        producer.produce(topic, str(recipient), codec.encode("RecipientMessage", record))
    producer.flush()

    transport = FakeTransport("email")
    service.schedule_campaign("marketer-1", campaign_id)
    dsn = settings.database.dsn()
    with Worker(settings, stages=("scheduler", "expander", "senders", "tally", "completion"), channels=("email",),
                transports={"email": transport}, rate_limits=False) as worker:
        wait_for(lambda: service.get_campaign("marketer-1", campaign_id).status == "completed", timeout=60,
                 what="campaign completed")
        assert worker.restarts == {}

    view = service.get_campaign("marketer-1", campaign_id)
    counts = log_counts(dsn, campaign_id)
    assert sum(counts.get(s, 0) for s in TERMINAL) == view.total_recipients == len(members)
    assert all(m.address != "attacker@example.net" for m in transport.attempts)
    assert all(m.subject == "Real subject" and m.body == "<p>Real</p>" for m in transport.sent)
    sent_to = [int(m.recipient_id) for m in transport.sent]
    assert len(sent_to) == len(set(sent_to)) and outsider not in sent_to
    assert members[0] in sent_to or counts.get("skipped", 0) > 0
    dlq = [codec.decode(r.value(), "DeadLetter") for r in consume_to_end(
        settings.kafka.bootstrap_servers, settings.kafka.topic("campaign.messages.dlq"))]
    assert [(d["reason"], d["recipient_id"]) for d in dlq if d["campaign_id"] == campaign] == [
        ("not_in_audience", str(outsider))]


def test_a_campaign_without_content_sends_nothing_a_record_carries(settings, service, audience):
    """The sender sends only the campaign's stored content, rendered at the claim (the expansion's records carry
    none): with none left (its rows deleted behind the service's back), every message fails as ``no_content``,
    and a forged record's content and address go nowhere."""
    plan, segments = audience(30)
    campaign_id = service.create_campaign("marketer-1", {
        "name": "no content", "channel": "email", "content": {"subject": "s", "body": "b"},
        "segments": segments[:1], "batch_size": 100,
    })
    campaign = str(campaign_id)
    members = [cid for cid in plan.ids() if 0 in plan.segment_of(cid)]
    with psycopg2.connect(settings.database.for_migrations().dsn()) as conn, conn.cursor() as cur:
        cur.execute("DELETE FROM campaign_messages WHERE campaign_id = %s", (campaign,))
        assert cur.rowcount == 1
    ensure_topics(settings.kafka, topic_specs(settings))
    producer = KafkaProducer(settings.kafka)
    codec = get_codec()
    producer.produce(settings.kafka.topic("campaign.messages.email"), str(members[0]), codec.encode(
        "RecipientMessage", {"message_id": message_id(campaign, str(members[0])), "campaign_id": campaign,
                             "recipient_id": str(members[0]), "channel": "email", "address": "attacker@example.net",
                             "subject": "You won", "body": "<a href=x>claim</a>", "template_name": None,
                             "locale": "en", "attempt": 0, "not_before": 0, "created_at": int(time.time() * 1000),
                             "last_error": None}))
    producer.flush()

    transport = FakeTransport("email")
    service.schedule_campaign("marketer-1", campaign_id)
    with Worker(settings, stages=("scheduler", "expander", "senders", "tally", "completion"), channels=("email",),
                transports={"email": transport}, rate_limits=False):
        wait_for(lambda: service.get_campaign("marketer-1", campaign_id).status in ("completed", "failed"),
                 timeout=60, what="campaign ended")

    assert transport.attempts == []
    with psycopg2.connect(settings.database.dsn()) as conn, conn.cursor() as cur:
        cur.execute("SELECT status, failure_reason, count(*) FROM campaign_recipient_log WHERE campaign_id = %s"
                    " GROUP BY 1, 2", (campaign,))
        rows = {(status, reason): n for status, reason, n in cur.fetchall()}
    assert rows.get(("failed", "no_content"), 0) > 0
    assert {status for status, _ in rows} <= {"failed", "skipped", "cancelled"}
    assert {reason for status, reason in rows if status == "failed"} == {"no_content"}
    assert sum(rows.values()) == len(members)


def test_forged_outcomes_are_not_counted(settings, service, audience):
    """Regression (issue 16): anyone who could write delivery.outcomes could inject FAILED outcomes and fail any
    campaign. The analytics count only outcomes a recipient-log row
    backs: the forged FAILED outcomes (30, over a 10 % threshold with a sample of 5) would fail the campaign."""
    from tests.e2e.test_pipeline import analytics_totals

    plan, segments = audience(40)
    campaign_id = service.create_campaign("marketer-1", {
        "name": "forged outcomes", "channel": "email", "content": {"subject": "s", "body": "b"},
        "segments": segments[:1], "batch_size": 100, "failure_threshold": 0.1, "failure_min_sample": 5,
    })
    campaign = str(campaign_id)
    ensure_topics(settings.kafka, topic_specs(settings))
    producer = KafkaProducer(settings.kafka)
    codec = get_codec()
    for recipient in plan.ids()[:30]:  # FAILED for recipients that have no row (and some outside the campaign)
        producer.produce(settings.kafka.topic("delivery.outcomes"), str(recipient), codec.encode("DeliveryOutcome", {
            "outcome_id": f"forged-{recipient}", "message_id": message_id(campaign, str(recipient)),
            "campaign_id": campaign, "recipient_id": str(recipient), "channel": "email", "status": "FAILED",
            "attempt": 1, "occurred_at": int(time.time() * 1000)}))
    producer.flush()
    transport = FakeTransport("email")
    dsn = settings.database.dsn()
    with Worker(settings, stages=("scheduler", "expander", "senders", "tally", "completion"), channels=("email",),
                transports={"email": transport}, rate_limits=False):
        service.schedule_campaign("marketer-1", campaign_id)
        wait_for(lambda: service.get_campaign("marketer-1", campaign_id).status == "completed", timeout=60,
                 what="campaign completed (not failed by forged outcomes)")
        counts = log_counts(dsn, campaign_id)
        wait_for(lambda: analytics_totals(dsn, campaign_id)["sent"] == counts.get("sent", 0), timeout=30,
                 what="analytics caught up")
    totals = analytics_totals(dsn, campaign_id)
    assert totals["failed"] == counts.get("failed", 0) == 0
