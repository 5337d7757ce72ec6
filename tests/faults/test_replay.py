"""Scenario 9: after a campaign completed, an operator replays everything.

The campaign is driven through ``campaign.commands`` (CREATE then SCHEDULE, with command ids). Once it is
completed: every record of ``campaign.messages.whatsapp`` and of ``delivery.outcomes`` is produced again,
the same two commands are sent again (same ids), and the campaign is resubmitted (a new SCHEDULE id, a
new CREATE id for the same campaign id). A record as large as the broker accepts is put among the
commands, ahead of a valid CREATE for another campaign. Nothing may be sent again, the recipient log and
analytics must not move, the resubmissions are rejected with reasons, and the later valid command applies.
"""

from __future__ import annotations

import os
import uuid

import psycopg2
from confluent_kafka import Producer

from producers.commands import SigningKey, command_group_id, send_command
from producers.kafka import KafkaProducer
from tests.faults.conftest import ACTOR, set_channel, wait_finished
from tests.faults.history import analytics_consumed, check, committed_to_end, read_topic, settle
from tests.helpers import wait_for


def _payload(segments: list[int], name: str) -> dict[str, object]:
    return {"name": name, "channel": "whatsapp", "content": {"body": "Spring offers inside"},
            "segments": segments, "batch_size": 200,
            "retry_policy": {"max_retries": 5, "backoff_base_s": 0.05, "backoff_max_s": 0.5, "jitter": 0.1}}


def _snapshot(dsn: str, campaign_id: str) -> dict[str, object]:
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT status, version FROM campaigns WHERE id = %s", (campaign_id,))
        campaign = cur.fetchone()
        cur.execute("SELECT recipient_id, status, attempts, provider_message_id, updated_at "
                    "FROM campaign_recipient_log WHERE campaign_id = %s ORDER BY recipient_id", (campaign_id,))
        log = cur.fetchall()
        cur.execute("SELECT window_start, sent, failed, skipped, cancelled, retried, updated_at "
                    "FROM campaign_analytics WHERE campaign_id = %s ORDER BY window_start NULLS FIRST",
                    (campaign_id,))
        analytics = cur.fetchall()
    conn.close()
    return {"campaign": campaign, "log": log, "analytics": analytics}


def test_replaying_everything_after_completion_changes_nothing(settings, service, sessions, audience, cluster):
    channel = "whatsapp"
    set_channel(sessions, channel, 1000, 100)
    _plan, segments = audience(2000)
    simulator = cluster.start_simulator("--seed", "9")
    cluster.start_worker("commands,scheduler,expander,tally,completion", channel)
    cluster.start_worker("senders", channel)
    producer = KafkaProducer(settings.kafka)
    service.provision_principal("admin-replay", "admin")
    key = SigningKey(*service.create_command_key("admin-replay", ACTOR))  # the upstream system acting as ACTOR
    campaign_id = str(uuid.uuid4())
    create = {"command_id": f"create-{campaign_id}", "command_type": "CREATE", "campaign_id": campaign_id,
              "principal": ACTOR, "payload": _payload(segments[:2], "replayed")}
    schedule = {"command_id": f"schedule-{campaign_id}", "command_type": "SCHEDULE", "campaign_id": campaign_id,
                "principal": ACTOR}
    send_command(producer, settings, create, key=key)
    send_command(producer, settings, schedule, key=key)
    wait_finished(settings, campaign_id, timeout=120, cluster=cluster)

    dsn = settings.database.dsn()
    before = _snapshot(dsn, campaign_id)
    accepted_before = simulator.accepted_ids(channel)
    stats_before = simulator.stats(channel)

    # The replay: every message and every outcome again, byte for byte.
    raw = Producer(settings.kafka.as_librdkafka(**{"message.max.bytes": 1_048_000}))
    replayed = {}
    for logical in (f"campaign.messages.{channel}", "delivery.outcomes"):
        records = read_topic(settings, logical, None)
        for r in records:
            raw.produce(settings.kafka.topic(logical), value=r["value"], key=r["key"], partition=r["_partition"])
        replayed[logical] = len(records)
    assert raw.flush(30) == 0
    # The commands again, a resubmission, a huge record, then a valid command behind it.
    other_id = str(uuid.uuid4())
    send_command(producer, settings, create, key=key)
    send_command(producer, settings, schedule, key=key)
    send_command(producer, settings, dict(schedule, command_id=f"again-{uuid.uuid4()}"), key=key)
    send_command(producer, settings, dict(create, command_id=f"again-{uuid.uuid4()}"), key=key)
    raw.produce(settings.kafka.topic("campaign.commands"), value=os.urandom(1_040_000), key=other_id.encode())
    assert raw.flush(30) == 0
    send_command(producer, settings, {"command_id": f"create-{other_id}", "command_type": "CREATE",
                                      "campaign_id": other_id, "principal": ACTOR,
                                      "payload": _payload(segments[2:], "behind the huge record")}, key=key)

    for group, logical in ((settings.kafka.topic(f"sender-{channel}"), f"campaign.messages.{channel}"),
                           (command_group_id(settings), "campaign.commands")):
        topic = settings.kafka.topic(logical)
        wait_for(lambda g=group, t=topic: committed_to_end(settings, g, t), timeout=60, interval=0.25,
                 what=f"{group} consumed the replay of {logical}")
    wait_for(lambda: analytics_consumed(settings), timeout=60, interval=0.25,
             what="the Faust analytics consumed the replay of delivery.outcomes")

    after = _snapshot(dsn, campaign_id)
    assert after == before, "the replay changed the recipient log, analytics or the campaign"
    assert simulator.accepted_ids(channel) == accepted_before, "the replay re-sent messages"
    assert simulator.stats(channel) == stats_before
    history = settle(settings, campaign_id, channel, simulator)
    report = check(history)

    rejected = read_topic(settings, "campaign.commands.rejected", "DeadLetter")
    reasons = sorted(r["reason"] for r in rejected)
    # The huge random record is unsigned: refused as unauthenticated before anything decodes it.
    assert len(rejected) == 3 and reasons.count("unauthenticated") == 1, reasons
    assert all(r["detail"] for r in rejected)
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT status FROM campaigns WHERE id = %s", (other_id,))
        assert cur.fetchone() == ("draft",), "the valid command behind the huge record was not applied"
    conn.close()
    assert not cluster.crashed_stages()
    report.extra.update(replayed=replayed, resubmissions_rejected=reasons)
    print(f"\nscenario 9: {report}")
