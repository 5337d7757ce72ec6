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
from campaigns.core import signing
from campaigns.errors import ServiceUnavailable
from campaigns.service import CampaignService
from producers.commands import SigningKey, command_group_id, send_command
from producers.kafka import KafkaProducer
from producers.topics import COMMANDS, COMMANDS_REJECTED, TopicSpec, ensure_topics
from streams.commands import CommandConsumer
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


@pytest.fixture
def keys(env) -> dict[str, SigningKey]:
    """A command key per principal that sends commands in these tests (upstream systems acting as them)."""
    return {p: SigningKey(*env.service.create_command_key(env.admin, p)) for p in (env.marketer, env.auditor)}


def send(publisher, settings, keys, command, **kwargs):
    """Produce ``command`` signed with the key of the principal it names (as its upstream system would)."""
    return send_command(publisher, settings, command, key=keys.get(command.get("principal")), **kwargs)


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


def test_create_then_schedule_commands_are_applied_in_order(settings, env, consumer, publisher, keys):
    campaign_id = uuid.uuid4()
    send(
        publisher,
        settings,
        keys,
        {
            "command_type": "CREATE",
            "campaign_id": campaign_id,
            "principal": env.marketer,
            "payload": env.payload("whatsapp"),
        },
    )
    start = (env.clock() + timedelta(hours=2)).replace(microsecond=0)
    send(
        publisher,
        settings,
        keys,
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


def test_a_duplicate_command_id_is_applied_once(settings, env, consumer, publisher, keys):
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
        send(publisher, settings, keys, pause)
        send(publisher, settings, keys, create)

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
    settings, env, consumer, publisher, keys
):
    missing = uuid.uuid4()
    not_found = send(
        publisher, settings, keys, {"command_type": "PAUSE", "campaign_id": missing, "principal": env.marketer}
    )
    invalid = {
        "command_id": f"bad-{uuid.uuid4()}",
        "command_type": "CREATE",
        "principal": env.marketer,
        "payload": {"name": "", "channel": "pigeon", "segments": []},
    }
    send(publisher, settings, keys, invalid)
    send(publisher, settings, keys, invalid)  # a repeat of a rejected command is a no-op
    bad_json = send(
        publisher,
        settings,
        keys,
        {"command_type": "CREATE", "principal": env.marketer, "payload_json": "{not json"},
    )
    draft = env.service.create_campaign(env.marketer, env.payload())
    not_allowed = send(
        publisher, settings, keys, {"command_type": "RESUME", "campaign_id": draft, "principal": env.marketer}
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


def test_unsigned_forged_stale_and_revoked_commands_are_refused_and_the_key_names_the_principal(
    settings, env, consumer, publisher, keys
):
    """Regression (issue 16): an unauthenticated producer sent ``principal: "admin-1"`` and cancelled a
    campaign as admin. Now the principal comes from the signing key, never from the payload."""
    campaign_id = env.service.create_campaign(env.marketer, env.payload())
    env.service.schedule_campaign(env.marketer, campaign_id, env.clock() + timedelta(hours=1))
    cancel = {"command_type": "CANCEL", "campaign_id": campaign_id}
    marketer_key, auditor_key = keys[env.marketer], keys[env.auditor]
    send_command(publisher, settings, {**cancel, "principal": env.admin}, key=None)  # unsigned
    send_command(publisher, settings, {**cancel, "principal": env.admin}, key=marketer_key)  # claims to be admin
    send_command(publisher, settings, {**cancel, "principal": env.marketer},
                 key=SigningKey(marketer_key.key_id, "not-the-secret"))  # forged signature
    send_command(publisher, settings, {**cancel, "principal": env.marketer}, key=marketer_key,
                 clock=lambda: time.time() - 3600)  # a captured record replayed an hour later
    send_command(publisher, settings, {**cancel, "principal": env.auditor}, key=auditor_key)  # signed, no right
    _pump_until(consumer, lambda: consumer.rejected >= 5, what="five rejections")
    assert _status(env, campaign_id) == "scheduled"

    rejected = [dl for dl, _ in _rejections(settings, expected=5)]
    assert [dl["reason"] for dl in rejected] == ["unauthenticated"] * 4 + ["permission_denied"]
    assert "unsigned" in rejected[0]["detail"]
    assert "signed with a key of" in rejected[1]["detail"]
    assert "does not match" in rejected[2]["detail"]
    assert "outside the 300 s window" in rejected[3]["detail"]
    # An unauthenticated record cannot mark a command id as rejected (that would block the genuine one).
    assert all(dl["message_id"] is None for dl in rejected[:4])

    # The genuine command, signed with the marketer's key (the payload may leave the principal out).
    send(publisher, settings, keys, {**cancel, "principal": env.marketer})
    _pump_until(consumer, lambda: _status(env, campaign_id) == "cancelled", what="the signed cancel")
    actor = env.scalar("SELECT principal FROM audit_log WHERE campaign_id = :c AND action = 'cancel_campaign'",
                       c=campaign_id)
    assert actor == env.marketer

    # A revoked key verifies nothing (consumers re-read keys within commands.key_cache_s).
    env.service.revoke_command_key(env.admin, marketer_key.key_id)
    fresh = CommandConsumer(settings.model_copy(update={"commands": settings.commands.model_copy(
        update={"key_cache_s": 0})}), env.service, KafkaProducer(settings.kafka), group_id=f"g-{uuid.uuid4()}")
    try:
        other = env.service.create_campaign(env.marketer, env.payload())
        send(publisher, settings, keys, {"command_type": "SCHEDULE", "campaign_id": other,
                                         "principal": env.marketer})
        _pump_until(fresh, lambda: fresh.rejected >= 1 and fresh.applied == 0, what="the revoked key refused")
        assert _status(env, other) == "draft"
    finally:
        fresh.close()


def test_a_poison_record_does_not_stop_the_partition(settings, env, consumer, publisher, keys):
    campaign_id = env.service.create_campaign(env.marketer, env.payload())
    env.service.schedule_campaign(env.marketer, campaign_id, env.clock() + timedelta(hours=1))
    raw = Producer({"bootstrap.servers": settings.kafka.bootstrap_servers})
    # Same key as the next command, so the same partition, in front of it: garbage signed by a buggy upstream
    # system (authentic, undecodable), and an empty value.
    garbage, key = b"\x00\x01not avro at all", str(campaign_id).encode()
    signed = signing.signed_headers(keys[env.marketer].secret, keys[env.marketer].key_id, int(time.time() * 1000),
                                    key, garbage)
    raw.produce(settings.kafka.topic(COMMANDS), garbage, key=key, headers=signed)
    raw.produce(settings.kafka.topic(COMMANDS), b"", key=str(campaign_id))
    assert raw.flush(30) == 0
    send(
        publisher, settings, keys, {"command_type": "CANCEL", "campaign_id": campaign_id, "principal": env.marketer}
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


def test_a_command_that_breaks_the_decoder_is_rejected_and_the_next_one_applied(
    settings, env, consumer, publisher, keys
):
    """Regression: a payload_json nested 200,000 levels raised RecursionError, which nothing caught; the stage
    crashed on it again and again and the valid command behind it was never applied."""
    campaign_id = env.service.create_campaign(env.marketer, env.payload())
    env.service.schedule_campaign(env.marketer, campaign_id, env.clock() + timedelta(hours=1))
    deep = "[" * 200_000 + "]" * 200_000
    send(publisher, settings, keys, {"command_type": "CREATE", "campaign_id": campaign_id,
                                     "principal": env.marketer, "payload_json": deep})
    send(
        publisher, settings, keys, {"command_type": "CANCEL", "campaign_id": campaign_id, "principal": env.marketer}
    )
    _pump_until(consumer, lambda: _status(env, campaign_id) == "cancelled", what="the cancel behind it")
    rejected = _rejections(settings, expected=1)
    assert [dl["reason"] for dl, _ in rejected] == ["invalid"]


def test_offsets_are_committed_after_processing(settings, env, publisher, keys):
    campaign_id = env.service.create_campaign(env.marketer, env.payload())
    send(
        publisher,
        settings,
        keys,
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

    def command_key(self, key_id):
        return self._inner.command_key(key_id)


def test_a_database_outage_rewinds_instead_of_rejecting(settings, env, publisher, keys):
    campaign_id = env.service.create_campaign(env.marketer, env.payload())
    for command_type in ("SCHEDULE", "PAUSE"):
        send(
            publisher,
            settings,
            keys,
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


def test_the_example_upstream_producer_sends_a_signed_command_as_a_user_runs_it(settings, env, consumer, keys):
    """``python -m producers.upstream_example`` (docs/security.md's reference producer), as a subprocess."""
    import os
    import subprocess
    import sys

    campaign_id = env.service.create_campaign(env.marketer, env.payload())
    env.service.schedule_campaign(env.marketer, campaign_id, env.clock() + timedelta(hours=1))
    key = keys[env.marketer]
    environ = {**os.environ, "CAMPAIGNS_KAFKA__BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
               "CAMPAIGNS_KAFKA__TOPIC_PREFIX": settings.kafka.topic_prefix,
               "CAMPAIGNS_COMMAND_KEY_ID": key.key_id, "CAMPAIGNS_COMMAND_KEY_SECRET": key.secret}
    done = subprocess.run([sys.executable, "-m", "producers.upstream_example", "PAUSE", str(campaign_id)],
                          env=environ, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    _pump_until(consumer, lambda: _status(env, campaign_id) == "paused", what="the example's pause applied")
    missing = subprocess.run([sys.executable, "-m", "producers.upstream_example", "PAUSE", str(campaign_id)],
                             env={k: v for k, v in environ.items() if k != "CAMPAIGNS_COMMAND_KEY_SECRET"},
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "CAMPAIGNS_COMMAND_KEY_SECRET" in missing.stderr


# --- audience import through the command topic (issue 17 part 4) ---------------------------------------------


def _customers(env) -> list[tuple]:
    return env.rows(
        "SELECT external_ref, first_name, email, attributes FROM customers WHERE external_ref LIKE 'up-%' "
        "ORDER BY external_ref"
    )


def test_import_customers_command_upserts_once_per_command_id(settings, env, consumer, publisher, keys):
    rows = [
        {"external_id": f"up-{n}", "email": f"up{n}@example.com", "first_name": f"Up{n}", "plan": "gold"}
        for n in range(1, 4)
    ]
    command = {
        "command_id": f"imp-{uuid.uuid4()}",
        "command_type": "IMPORT_CUSTOMERS",
        "principal": env.marketer,
        "payload": {"rows": rows},
    }
    send(publisher, settings, keys, command)
    send(publisher, settings, keys, command)  # an upstream retry: applied once
    # Commands with other keys may land on other partitions, which Kafka does not order against each other:
    # the update is sent once the first import is in.
    _pump_until(consumer, lambda: consumer.applied + consumer.duplicates >= 2, what="the first import handled")
    changed = [{**rows[0], "first_name": "Changed", "phone": None}, rows[1]]
    send(
        publisher,
        settings,
        keys,
        {"command_type": "IMPORT_CUSTOMERS", "principal": env.marketer, "payload": {"rows": changed}},
    )
    _pump_until(consumer, lambda: consumer.applied + consumer.duplicates >= 3, what="three import commands handled")
    assert (consumer.applied, consumer.duplicates, consumer.rejected) == (2, 1, 0)
    assert _customers(env) == [
        ("up-1", "Changed", "up1@example.com", {"plan": "gold"}),
        ("up-2", "Up2", "up2@example.com", {"plan": "gold"}),
        ("up-3", "Up3", "up3@example.com", {"plan": "gold"}),
    ]
    audit = env.rows(
        "SELECT principal, detail->>'inserted', detail->>'updated', detail->>'unchanged' FROM audit_log "
        "WHERE action = 'import_customers' ORDER BY id"
    )
    assert audit == [(env.marketer, "3", "0", "0"), (env.marketer, "0", "1", "1")]

    send(
        publisher,
        settings,
        keys,
        {
            "command_type": "IMPORT_SEGMENT",
            "principal": env.marketer,
            "payload": {"segment": f"up-seg-{env.tag}", "external_ids": ["up-1", "up-3"]},
        },
    )
    _pump_until(consumer, lambda: consumer.applied >= 3, what="the segment import applied")
    members = env.rows(
        "SELECT c.external_ref FROM segment_members m JOIN customer_segments s ON s.id = m.segment_id "
        "JOIN customers c ON c.id = m.customer_id WHERE s.name = :n ORDER BY 1",
        n=f"up-seg-{env.tag}",
    )
    assert members == [("up-1",), ("up-3",)]


def test_a_rejected_import_changes_nothing_and_lists_its_problems(settings, env, consumer, publisher, keys):
    rows = [{"external_id": f"up-{n}", "email": f"up{n}@example.com"} for n in range(1, 6)]
    rows[2] = {"external_id": "up-3", "email": "not-an-email", "timezone": "Nowhere/City"}
    bad = send(
        publisher,
        settings,
        keys,
        {"command_type": "IMPORT_CUSTOMERS", "principal": env.marketer, "payload": {"rows": rows}},
    )
    denied = send(
        publisher,
        settings,
        keys,
        {"command_type": "IMPORT_CUSTOMERS", "principal": env.auditor, "payload": {"rows": rows[:1]}},
    )
    unknown = send(
        publisher,
        settings,
        keys,
        {
            "command_type": "IMPORT_SEGMENT",
            "principal": env.marketer,
            "payload": {"segment": "s", "external_ids": ["nobody"]},
        },
    )
    too_many = send(
        publisher,
        settings,
        keys,
        {
            "command_type": "IMPORT_CUSTOMERS",
            "principal": env.marketer,
            "payload": {"rows": [{"external_id": "x"}] * 10_001},
        },
    )
    _pump_until(consumer, lambda: consumer.rejected >= 4, what="four rejections")
    by_id = {r["message_id"]: r for r, _ in _rejections(settings, 4)}
    assert by_id[bad]["reason"] == "invalid"
    assert "line 3: email: 'not-an-email' is not an email address" in by_id[bad]["detail"]
    assert "line 3: timezone: 'Nowhere/City' is not an IANA time zone" in by_id[bad]["detail"]
    assert "(2 problems)" in by_id[bad]["detail"]
    assert by_id[denied]["reason"] == "permission_denied" and "customers.import" in by_id[denied]["detail"]
    assert "line 1: external_id: no customer has external id 'nobody'" in by_id[unknown]["detail"]
    assert "10001 rows, at most 10000 per command" in by_id[too_many]["detail"]
    assert _customers(env) == []
    assert env.scalar("SELECT count(*) FROM customer_segments WHERE name = 's'") == 0
    assert env.scalar("SELECT outcome FROM processed_commands WHERE command_id = :c", c=bad) == "rejected"
