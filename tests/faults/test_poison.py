"""Scenario 5: poison records on ``campaign.messages.<channel>`` while a campaign is being sent.

Every poison record must end in the DLQ with a reason (or, when it is a well-formed message the provider
refuses, as a ``failed`` row with its reason plus a DLQ record), and the campaign's own messages keep
flowing on every partition: the campaign completes and its history checks out.
"""

from __future__ import annotations

import os
import time
import uuid
from collections import Counter

from confluent_kafka import Producer

from campaigns.codec import get_codec
from campaigns.core.ids import message_id
from tests.faults.conftest import create_campaign, set_channel, wait_finished
from tests.faults.history import check, dead_letters, settle
from tests.helpers import wait_for


def _message(campaign_id: str, recipient: str, **changes: object) -> dict[str, object]:
    record: dict[str, object] = {
        "message_id": message_id(campaign_id, recipient) if campaign_id and ":" not in campaign_id
        else str(uuid.uuid4()),
        "campaign_id": campaign_id, "recipient_id": recipient, "channel": "whatsapp",
        "address": "+15550009999", "subject": None, "body": "poison", "template_name": None, "locale": "en",
        "attempt": 0, "not_before": 0, "created_at": int(time.time() * 1000), "last_error": None,
    }
    record.update(changes)
    return record


def test_poison_records_go_to_the_dlq_and_the_campaign_completes(settings, service, sessions, audience, cluster):
    """The poison is produced ahead of the campaign's own messages on the same partitions: the campaign is
    activated (as the scheduler would) while no expander runs, the poison goes in, and only then does a
    worker with the expander start. Every real message is queued behind poison and must still flow."""
    channel = "whatsapp"
    set_channel(sessions, channel, 1000, 100)
    plan, segments = audience(2000)
    simulator = cluster.start_simulator("--seed", "5")
    cluster.start_worker("senders", channel)
    campaign_id = create_campaign(service, channel, segments[:2], batch_size=200)
    assert [str(c) for c in service.activate_due()] == [campaign_id]

    codec = get_codec()
    encode = codec.encode
    # An audience member whose (forged, earlier) message has no address: the sender does not believe the
    # record's address (nor its content) and sends the genuine message to the member's real address, once; the
    # real message that follows is a duplicate of that terminal row.
    victim = next(c for c in plan.ids() if set(plan.segment_of(c)) & {0, 1} and c % 50 and c % 97 and c % 11)
    poison: list[tuple[str, bytes | None, bytes | None]] = [  # (expected DLQ reason, key, value)
        ("undecodable", b"1", b"\x00\x01 definitely not avro"),
        ("undecodable", b"2", b""),
        ("undecodable", b"3", None),  # a tombstone
        ("undecodable", b"4", os.urandom(900_000)),  # large and undecodable: kept whole in the DLQ
        ("undecodable", b"4", os.urandom(1_040_000)),  # as large as the broker takes: too large to keep
        ("undecodable", b"5", encode("DeliveryOutcome", {  # a valid record of the wrong type
            "outcome_id": "x", "message_id": "m", "campaign_id": campaign_id, "recipient_id": "5",
            "channel": channel, "status": "SENT", "attempt": 1, "occurred_at": 0})),
        ("wrong_channel", b"6", encode("RecipientMessage", _message(campaign_id, "6", channel="sms"))),
        ("unknown_campaign", b"8", encode("RecipientMessage", _message(str(uuid.uuid4()), "8"))),
        # Ids that are not canonical UUIDs never reach a statement (the log's keys go into unquoted array
        # literals): the braces form PostgreSQL would accept, and text that is no UUID at all.
        ("invalid_record", b"9", encode("RecipientMessage", _message("not-a-campaign", "9"))),
        ("invalid_record", b"w", encode("RecipientMessage", _message("{" + campaign_id + "}", "11"))),
        ("invalid_record", b"v",
         encode("RecipientMessage", _message(campaign_id, "12", message_id="{" + str(uuid.uuid4()) + "}"))),
        ("invalid_record", b"x", encode("RecipientMessage", _message(campaign_id, "not-a-number"))),
        ("invalid_record", b"y", encode("RecipientMessage", _message(campaign_id, "99999999999999999999999"))),
        ("invalid_record", b"z", encode("RecipientMessage", _message(campaign_id, "10", message_id="nope"))),
    ]
    forged = (str(victim).encode(), encode("RecipientMessage", _message(campaign_id, str(victim), address="")))
    producer = Producer(settings.kafka.as_librdkafka(**{"message.max.bytes": 1_048_000}))
    topic = settings.kafka.topic(f"campaign.messages.{channel}")
    for partition in range(settings.kafka.partitions):  # the same poison on every partition
        for _, key, value in poison:
            producer.produce(topic, value=value, key=key, partition=partition)
    producer.produce(topic, value=forged[1], key=forged[0])
    assert producer.flush(30) == 0
    expected = Counter(reason for _ in range(settings.kafka.partitions) for reason, _, _ in poison)
    seen: list[Counter[str]] = []

    def dlq_complete() -> bool:
        seen.append(Counter(d["reason"] for d in dead_letters(settings) if d["source_topic"] == topic))
        return seen[-1] == expected

    try:
        wait_for(dlq_complete, timeout=60, interval=0.5, what=f"dead letters {dict(expected)}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last seen {seen[-1:]}; crashes {cluster.crashed_stages()[-3:]}") from None
    poisoned_at = time.monotonic()

    cluster.start_worker("scheduler,expander,tally,completion", channel)
    wait_finished(settings, campaign_id, timeout=120, cluster=cluster)
    history = settle(settings, campaign_id, channel, simulator)
    report = check(history)
    row = history.log[victim]
    assert row.status == "sent", row
    assert simulator.accepted_ids(channel)[message_id(campaign_id, str(victim))] == 1  # once, at the real address

    letters = [d for d in dead_letters(settings) if d["source_topic"] == topic]
    assert Counter(d["reason"] for d in letters) == expected
    assert all(d["detail"] for d in letters), "every dead letter says why"
    big = [d for d in letters if d["original_value"] and len(d["original_value"]) == 900_000]
    assert len(big) == settings.kafka.partitions, "a large record is kept whole for a redrive"
    too_big = [d for d in letters if "1040000 bytes not copied" in d["detail"]]
    assert len(too_big) == settings.kafka.partitions and all(d["original_value"] is None for d in too_big)
    assert not cluster.crashed_stages(), cluster.crashed_stages()
    report.extra.update(poison=len(poison) * settings.kafka.partitions, dlq=dict(expected),
                        poison_to_completed_s=round(time.monotonic() - poisoned_at, 1))
    print(f"\nscenario 5: {report}")
