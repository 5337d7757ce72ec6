"""campaign.commands on real Kafka and PostgreSQL: commands apply with the API's RBAC and validation,
a repeated command id applies once, refused and undecodable records go to campaign.commands.rejected
with a reason, and the partition keeps flowing."""

from __future__ import annotations

import time
import uuid
from datetime import timedelta

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from sqlalchemy.exc import OperationalError

from campaigns.codec import get_codec
from campaigns.errors import ServiceUnavailable
from campaigns.service import CampaignService
from producers.commands import CommandConsumer, command_group_id, send_command
from producers.kafka import KafkaProducer
from producers.topics import COMMANDS, COMMANDS_REJECTED, TopicSpec, ensure_topics
from tests.helpers import wait_for
from tests.integration.service_env import build_env

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]


@pytest.fixture
def env(settings):
    ensure_topics(settings.kafka, [TopicSpec(COMMANDS, 3), TopicSpec(COMMANDS_REJECTED, 3)])
    built = build_env(settings.database)
    yield built
    built.engine.dispose()


@pytest.fixture
def consumer(settings, env):
    made = CommandConsumer(settings, env.service, KafkaProducer(settings.kafka))
    yield made
    made.close()


@pytest.fixture
def publisher(settings):
    made = KafkaProducer(settings.kafka)
    yield made
    made.close()


def _pump_until(consumer: CommandConsumer, condition, *, what: str, timeout: float = 30.0) -> None:
    """Drive the consumer until ``condition()`` holds (bounded)."""

    def step():
        consumer.run_once(0.2)
        return condition()

    wait_for(step, timeout=timeout, interval=0.0, what=what)


def _status(env, campaign_id) -> str | None:
    return env.scalar("SELECT status FROM campaigns WHERE id = :c", c=campaign_id)


def _rejections(settings, expected: int, timeout: float = 30.0) -> list[tuple[dict, object]]:
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka.bootstrap_servers,
            "group.id": f"rj-{uuid.uuid4()}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([settings.kafka.topic(COMMANDS_REJECTED)])
    out: list[tuple[dict, object]] = []
    deadline = time.monotonic() + timeout
    try:
        while len(out) < expected and time.monotonic() < deadline:
            for msg in consumer.consume(100, timeout=0.2):
                assert msg.error() is None, msg.error()
                out.append((get_codec().decode(msg.value(), "DeadLetter"), msg))
    finally:
        consumer.close()
    assert len(out) >= expected, f"{len(out)} of {expected} rejections arrived"
    return out


def test_create_then_schedule_commands_are_applied_in_order(settings, env, consumer, publisher):
    campaign_id = uuid.uuid4()
    send_command(
        publisher,
        settings,
        {
            "command_type": "CREATE",
            "campaign_id": campaign_id,
            "principal": env.marketer,
            "payload": env.payload("whatsapp"),
        },
    )
    start = (env.clock() + timedelta(hours=2)).replace(microsecond=0)
    send_command(
        publisher,
        settings,
        {
            "command_type": "SCHEDULE",
            "campaign_id": campaign_id,
            "principal": env.marketer,
            "start_at": start,
        },
    )

    _pump_until(
        consumer, lambda: _status(env, campaign_id) == "scheduled", what="the campaign to be scheduled"
    )
    assert env.rows("SELECT start_at, created_by FROM campaigns WHERE id = :c", c=campaign_id) == [
        (start, env.marketer)
    ]
    events = env.rows("SELECT event_type FROM outbox WHERE key = :k ORDER BY id", k=str(campaign_id))
    assert [e[0] for e in events] == ["CREATED", "SCHEDULED"]
    assert consumer.applied == 2 and consumer.rejected == 0


def test_a_duplicate_command_id_is_applied_once(settings, env, consumer, publisher):
    campaign_id = env.service.create_campaign(env.marketer, env.payload())
    env.service.schedule_campaign(env.marketer, campaign_id, env.clock() + timedelta(hours=1))
    pause = {
        "command_id": f"pause-{uuid.uuid4()}",
        "command_type": "PAUSE",
        "campaign_id": campaign_id,
        "principal": env.marketer,
    }
    create = {
        "command_id": f"create-{uuid.uuid4()}",
        "command_type": "CREATE",
        "principal": env.marketer,
        "payload": env.payload(name=f"dup-create-{env.tag}"),
    }
    for _ in range(3):
        send_command(publisher, settings, pause)
        send_command(publisher, settings, create)

    _pump_until(consumer, lambda: consumer.applied + consumer.duplicates >= 6, what="six commands handled")
    assert (consumer.applied, consumer.duplicates, consumer.rejected) == (2, 4, 0)
    assert _status(env, campaign_id) == "paused"
    assert env.scalar("SELECT version FROM campaigns WHERE id = :c", c=campaign_id) == 3
    assert env.scalar("SELECT count(*) FROM campaigns WHERE name = :n", n=f"dup-create-{env.tag}") == 1
    assert (
        env.scalar("SELECT count(*) FROM outbox WHERE key = :k AND event_type = 'PAUSED'", k=str(campaign_id))
        == 1
    )


def test_rejected_commands_go_to_the_rejected_topic_with_a_reason_and_are_not_rejected_twice(
    settings, env, consumer, publisher
):
    missing = uuid.uuid4()
    not_found = send_command(
        publisher, settings, {"command_type": "PAUSE", "campaign_id": missing, "principal": env.marketer}
    )
    invalid = {
        "command_id": f"bad-{uuid.uuid4()}",
        "command_type": "CREATE",
        "principal": env.marketer,
        "payload": {"name": "", "channel": "pigeon", "segments": []},
    }
    send_command(publisher, settings, invalid)
    send_command(publisher, settings, invalid)  # a repeat of a rejected command is a no-op
    bad_json = send_command(
        publisher,
        settings,
        {"command_type": "CREATE", "principal": env.marketer, "payload_json": "{not json"},
    )
    draft = env.service.create_campaign(env.marketer, env.payload())
    not_allowed = send_command(
        publisher, settings, {"command_type": "RESUME", "campaign_id": draft, "principal": env.marketer}
    )

    _pump_until(consumer, lambda: consumer.rejected + consumer.duplicates >= 5, what="five commands handled")
    assert (consumer.rejected, consumer.duplicates, consumer.applied) == (4, 1, 0)

    by_id = {dl["message_id"]: (dl, msg) for dl, msg in _rejections(settings, expected=4)}
    assert set(by_id) == {not_found, invalid["command_id"], bad_json, not_allowed}
    dl, msg = by_id[not_found]
    assert dl["reason"] == "not_found" and str(missing) in dl["detail"]
    assert dl["campaign_id"] == str(missing) and dl["source_topic"] == settings.kafka.topic(COMMANDS)
    assert get_codec().decode(dl["original_value"], "CampaignCommand")["command_id"] == not_found
    assert msg.key() == str(missing).encode()
    dl, _ = by_id[invalid["command_id"]]
    assert dl["reason"] == "invalid"
    assert "name: must not be empty" in dl["detail"] and "channel: must be one of" in dl["detail"]
    assert (
        by_id[bad_json][0]["reason"] == "invalid"
        and "payload_json: not valid JSON" in by_id[bad_json][0]["detail"]
    )
    assert by_id[not_allowed][0]["reason"] == "transition_not_allowed"
    assert env.rows(
        "SELECT outcome FROM processed_commands WHERE command_id = :i", i=invalid["command_id"]
    ) == [("rejected",)]


def test_unknown_or_unauthorised_principals_are_rejected(settings, env, consumer, publisher):
    spoofed = send_command(
        publisher,
        settings,
        {"command_type": "CREATE", "principal": "mallory", "payload": env.payload(name=f"spoofed-{env.tag}")},
    )
    system = send_command(
        publisher,
        settings,
        {"command_type": "CREATE", "principal": "system", "payload": env.payload(name=f"spoofed-{env.tag}")},
    )
    auditor = send_command(
        publisher,
        settings,
        {
            "command_type": "CREATE",
            "principal": env.auditor,
            "payload": env.payload(name=f"spoofed-{env.tag}"),
        },
    )
    _pump_until(consumer, lambda: consumer.rejected >= 3, what="three rejections")

    by_id = {dl["message_id"]: dl for dl, _ in _rejections(settings, expected=3)}
    assert by_id[spoofed]["reason"] == "permission_denied"
    assert "unknown principal 'mallory'" in by_id[spoofed]["detail"]
    assert "campaigns.create" in by_id[spoofed]["detail"]
    assert by_id[system]["reason"] == "permission_denied"  # the internal principal cannot be borrowed
    assert by_id[auditor]["reason"] == "permission_denied" and "lacks permission" in by_id[auditor]["detail"]
    assert env.scalar("SELECT count(*) FROM campaigns WHERE name = :n", n=f"spoofed-{env.tag}") == 0


def test_a_poison_record_does_not_stop_the_partition(settings, env, consumer, publisher):
    campaign_id = env.service.create_campaign(env.marketer, env.payload())
    env.service.schedule_campaign(env.marketer, campaign_id, env.clock() + timedelta(hours=1))
    raw = Producer({"bootstrap.servers": settings.kafka.bootstrap_servers})
    # Same key as the next command, so the same partition, in front of it.
    raw.produce(settings.kafka.topic(COMMANDS), b"\x00\x01not avro at all", key=str(campaign_id))
    raw.produce(settings.kafka.topic(COMMANDS), b"", key=str(campaign_id))
    assert raw.flush(30) == 0
    send_command(
        publisher, settings, {"command_type": "CANCEL", "campaign_id": campaign_id, "principal": env.marketer}
    )

    _pump_until(
        consumer, lambda: _status(env, campaign_id) == "cancelled", what="the cancel behind the poison"
    )
    # A command makes the same change as the API call (here: the cancel also stamps finished_at).
    assert env.scalar("SELECT finished_at FROM campaigns WHERE id = :c", c=campaign_id) is not None
    rejected = _rejections(settings, expected=2)
    assert sorted(dl["reason"] for dl, _ in rejected) == ["undecodable", "undecodable"]
    poison = next(dl for dl, _ in rejected if dl["original_value"])
    assert poison["original_value"] == b"\x00\x01not avro at all"
    assert poison["message_id"] is None and "CampaignCommand" in poison["detail"]


def test_a_command_that_breaks_the_decoder_is_rejected_and_the_next_one_applied(settings, env, consumer, publisher):
    """Regression: a payload_json nested 200,000 levels raised RecursionError, which nothing caught; the stage
    crashed on it again and again and the valid command behind it was never applied."""
    campaign_id = env.service.create_campaign(env.marketer, env.payload())
    env.service.schedule_campaign(env.marketer, campaign_id, env.clock() + timedelta(hours=1))
    deep = "[" * 200_000 + "]" * 200_000
    send_command(publisher, settings, {"command_type": "CREATE", "campaign_id": campaign_id,
                                       "principal": env.marketer, "payload_json": deep})
    send_command(
        publisher, settings, {"command_type": "CANCEL", "campaign_id": campaign_id, "principal": env.marketer}
    )
    _pump_until(consumer, lambda: _status(env, campaign_id) == "cancelled", what="the cancel behind it")
    rejected = _rejections(settings, expected=1)
    assert [dl["reason"] for dl, _ in rejected] == ["invalid"]


def test_offsets_are_committed_after_processing(settings, env, publisher):
    campaign_id = env.service.create_campaign(env.marketer, env.payload())
    send_command(
        publisher,
        settings,
        {"command_type": "SCHEDULE", "campaign_id": campaign_id, "principal": env.marketer},
    )
    first = CommandConsumer(settings, env.service, KafkaProducer(settings.kafka))
    try:
        _pump_until(first, lambda: first.applied == 1, what="the command applied")
    finally:
        first.close()

    # The group's committed offsets are at the end of every partition: a restart re-reads nothing.
    probe = Consumer(
        {"bootstrap.servers": settings.kafka.bootstrap_servers, "group.id": command_group_id(settings)}
    )
    try:
        topic = settings.kafka.topic(COMMANDS)
        partitions = [TopicPartition(topic, p) for p in range(3)]
        committed = {tp.partition: tp.offset for tp in probe.committed(partitions, timeout=10)}
        ends = {p: probe.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in range(3)}
    finally:
        probe.close()
    assert sum(ends.values()) == 1
    assert all(committed[p] == end for p, end in ends.items() if end > 0), (committed, ends)


class _DatabaseDownOnce(CampaignService):
    """The service as seen while PostgreSQL drops the connection on the first command."""

    def __init__(self, inner: CampaignService) -> None:
        self._inner = inner
        self.failures_left = 1

    def execute_command(self, command):
        if self.failures_left:
            self.failures_left -= 1
            raise OperationalError("SELECT 1", {}, Exception("server closed the connection unexpectedly"))
        return self._inner.execute_command(command)

    def record_rejected_command(self, command_id, reason):
        return self._inner.record_rejected_command(command_id, reason)


def test_a_database_outage_rewinds_instead_of_rejecting(settings, env, publisher):
    campaign_id = env.service.create_campaign(env.marketer, env.payload())
    for command_type in ("SCHEDULE", "PAUSE"):
        send_command(
            publisher,
            settings,
            {"command_type": command_type, "campaign_id": campaign_id, "principal": env.marketer},
        )
    flaky = _DatabaseDownOnce(env.service)
    consumer = CommandConsumer(settings, flaky, KafkaProducer(settings.kafka))
    try:

        def step():
            try:
                consumer.run_once(0.2)
            except ServiceUnavailable:
                pass
            return flaky.failures_left == 0 and _status(env, campaign_id) == "paused"

        wait_for(step, timeout=30, interval=0.0, what="both commands applied after the outage")
        assert (consumer.applied, consumer.rejected) == (2, 0)
    finally:
        consumer.close()
