"""The outbox relay on real Kafka and PostgreSQL: publishes what the service committed, at least once,
in order per campaign, with several relays at once, and survives a crash between ack and mark."""

from __future__ import annotations

import threading
import time
import uuid
from collections import defaultdict
from datetime import timedelta

import psycopg2
import pytest
from confluent_kafka import Consumer
from sqlalchemy import text

from campaigns.codec import get_codec
from campaigns.errors import SinkError
from producers.kafka import KafkaProducer, MemoryProducer
from producers.outbox_relay import OutboxRelay
from producers.topics import EVENTS, OUTCOMES, TopicSpec, ensure_topics
from tests.helpers import wait_for
from tests.integration.service_env import ServiceEnv, build_env

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]


@pytest.fixture
def env(settings):
    ensure_topics(settings.kafka, [TopicSpec(EVENTS, 3), TopicSpec(OUTCOMES, 3)])
    built = build_env(settings.database)
    yield built
    built.engine.dispose()


def _read(settings, topic: str, keys, *, expected: int, timeout: float = 30.0) -> list:
    """Records of ``topic`` whose key is one of ``keys``, in log order, once ``expected`` of them arrived
    (the shared outbox may also hold other tests' rows, published to this test's topics too)."""
    wanted = {str(k).encode() for k in keys}
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka.bootstrap_servers,
            "group.id": f"read-{uuid.uuid4()}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([settings.kafka.topic(topic)])
    records: list = []
    deadline = time.monotonic() + timeout
    try:
        while len(records) < expected and time.monotonic() < deadline:
            for msg in consumer.consume(500, timeout=0.2):
                assert msg.error() is None, msg.error()
                if msg.key() in wanted:
                    records.append(msg)
    finally:
        consumer.close()
    assert len(records) >= expected, f"only {len(records)} of {expected} records of {topic} within {timeout}s"
    return records


def _events(settings, *, expected: int, campaign_ids, timeout: float = 30.0) -> list:
    return _read(settings, EVENTS, campaign_ids, expected=expected, timeout=timeout)


def _unpublished(env: ServiceEnv, campaign_ids) -> int:
    return int(
        env.scalar(
            "SELECT count(*) FROM outbox WHERE published_at IS NULL AND key = ANY(:k)",
            k=[str(c) for c in campaign_ids],
        )
    )


def _drain_others(env: ServiceEnv, settings) -> None:
    """Publish the rows other tests left in the shared outbox, so counts below are about this test only."""
    relay = OutboxRelay(settings, env.sessions, KafkaProducer(settings.kafka))
    while relay.run_once(5000):
        pass


def test_created_campaign_is_published_as_a_decodable_campaign_event(settings, env):
    _drain_others(env, settings)
    campaign_id = env.service.create_campaign(env.marketer, env.payload("email"))
    relay = OutboxRelay(settings, env.sessions, KafkaProducer(settings.kafka))

    assert relay.run_once() == 1
    assert relay.run_once() == 0  # marked: not published twice

    [record] = _events(settings, expected=1, campaign_ids=[campaign_id])
    event = get_codec().decode(record.value(), "CampaignEvent")
    assert event["campaign_id"] == str(campaign_id) and event["event_type"] == "CREATED"
    assert event["actor"] == env.marketer and event["campaign_version"] == 1
    assert dict(record.headers())["event_id"].decode() == event["event_id"]
    assert _unpublished(env, [campaign_id]) == 0


def test_relay_works_with_a_dsn_and_the_batch_producer(settings, env):
    _drain_others(env, settings)
    campaign_id = env.service.create_campaign(env.marketer, env.payload())
    env.service.update_metrics(env.marketer, campaign_id, {"delivered": 3, "read": 1})
    relay = OutboxRelay(settings, settings.database.dsn(), KafkaProducer(settings.kafka))
    try:
        assert relay.run_once() == 3
    finally:
        relay.close()
    outcomes = [
        get_codec().decode(r.value(), "DeliveryOutcome")
        for r in _read(settings, OUTCOMES, [campaign_id], expected=2)
    ]
    decoded = sorted((o["status"], o["attempt"]) for o in outcomes)
    assert decoded == [("DELIVERED", 3), ("READ", 1)]


class SimulatedCrash(Exception):
    """The relay process dying after Kafka acknowledged the batch and before the outbox was marked."""


class CrashAfterAck:
    """A publisher whose flush delivers everything, then 'kills' the relay before it can mark anything."""

    def __init__(self, real: KafkaProducer) -> None:
        self.real = real

    def produce_tracked(self, *args, **kwargs):
        return self.real.produce_tracked(*args, **kwargs)

    def flush(self, timeout: float = 30.0) -> None:
        self.real.flush(timeout)
        raise SimulatedCrash

    def close(self, timeout: float = 10.0) -> None:
        self.real.close(timeout)


def test_crash_between_ack_and_mark_republishes_and_dedup_on_event_id_sees_each_event_once(settings, env):
    _drain_others(env, settings)
    campaign_id = env.service.create_campaign(env.marketer, env.payload())
    env.service.schedule_campaign(env.marketer, campaign_id, env.clock() + timedelta(hours=1))
    env.service.pause_campaign(env.marketer, campaign_id)

    crashing = OutboxRelay(settings, env.sessions, CrashAfterAck(KafkaProducer(settings.kafka)))
    with pytest.raises(SimulatedCrash):
        crashing.run_once()
    assert _unpublished(env, [campaign_id]) == 3  # the marks were rolled back with the "crash"

    restarted = OutboxRelay(settings, env.sessions, KafkaProducer(settings.kafka))
    assert restarted.run_once() == 3
    assert _unpublished(env, [campaign_id]) == 0

    records = _events(settings, expected=6, campaign_ids=[campaign_id])
    assert len(records) == 6  # at least once: every event twice here
    seen: dict[str, dict] = {}
    for record in records:  # a consumer that de-duplicates on the event_id header
        event_id = dict(record.headers())["event_id"].decode()
        seen.setdefault(event_id, get_codec().decode(record.value(), "CampaignEvent"))
    assert [e["event_type"] for e in seen.values()] == ["CREATED", "SCHEDULED", "PAUSED"]
    assert len(seen) == 3


class FailingDelivery:
    """A publisher whose every delivery fails (as if the broker rejected them)."""

    def __init__(self, real: KafkaProducer) -> None:
        self.real = real
        self.handles = []

    def produce_tracked(self, topic, key, value, headers=None):
        handle = self.real.produce_tracked(topic + ".missing-topic", key, value, headers=headers)
        self.handles.append(handle)
        return handle

    def flush(self, timeout: float = 30.0) -> None:
        self.real.flush(timeout)

    def close(self, timeout: float = 10.0) -> None:
        self.real.close(timeout)


def test_failed_deliveries_are_not_marked_and_raise_sink_error(settings, env):
    _drain_others(env, settings)
    campaign_id = env.service.create_campaign(env.marketer, env.payload())
    relay = OutboxRelay(
        settings,
        env.sessions,
        FailingDelivery(
            KafkaProducer(settings.kafka, **{"delivery.timeout.ms": 3000, "request.timeout.ms": 2000})
        ),
    )
    with pytest.raises(SinkError, match="stay in the outbox"):
        relay.run_once()
    assert _unpublished(env, [campaign_id]) == 1
    assert OutboxRelay(settings, env.sessions, KafkaProducer(settings.kafka)).run_once() >= 1
    assert _unpublished(env, [campaign_id]) == 0


def test_a_row_held_by_another_relay_holds_back_later_rows_of_its_key_only(settings, env):
    _drain_others(env, settings)
    held_campaign = env.service.create_campaign(env.marketer, env.payload())
    env.service.schedule_campaign(env.marketer, held_campaign, env.clock() + timedelta(hours=1))
    other_campaign = env.service.create_campaign(env.marketer, env.payload())
    first_id = env.scalar("SELECT min(id) FROM outbox WHERE key = :k", k=str(held_campaign))

    relay = OutboxRelay(settings, env.sessions, KafkaProducer(settings.kafka))
    other = psycopg2.connect(settings.database.dsn())
    try:
        with other.cursor() as cur:  # "another relay" holds the campaign's first event
            cur.execute("SELECT id FROM outbox WHERE id = %s FOR UPDATE", (first_id,))
        assert relay.run_once() == 1  # only the other campaign's CREATED
        assert _unpublished(env, [held_campaign]) == 2
        assert _unpublished(env, [other_campaign]) == 0
    finally:
        other.rollback()
        other.close()
    assert relay.run_once() == 2
    records = _events(settings, expected=3, campaign_ids=[held_campaign, other_campaign])
    held = [
        get_codec().decode(r.value(), "CampaignEvent")["event_type"]
        for r in records
        if r.key().decode() == str(held_campaign)
    ]
    assert held == ["CREATED", "SCHEDULED"]


def test_a_poison_row_is_reported_and_holds_back_only_its_own_key(settings, env):
    _drain_others(env, settings)
    poisoned_key = str(uuid.uuid4())
    fine = env.service.create_campaign(env.marketer, env.payload())
    with env.engine.begin() as conn:
        bad = conn.execute(
            text(
                "INSERT INTO outbox (event_id, topic, key, event_type, payload) VALUES (gen_random_uuid(), "
                "'campaign.events', :k, 'CREATED', '{\"not\": \"an event\"}') RETURNING id"
            ),
            {"k": poisoned_key},
        ).scalar()
        conn.execute(
            text(
                "INSERT INTO outbox (event_id, topic, key, event_type, payload) "
                "SELECT gen_random_uuid(), topic, :k, event_type, payload FROM outbox WHERE key = :fine"
            ),
            {"k": poisoned_key, "fine": str(fine)},
        )
    relay = OutboxRelay(settings, env.sessions, KafkaProducer(settings.kafka))
    try:
        assert relay.run_once() == 1  # the fine campaign's event; the poisoned key waits
        assert bad in relay.stuck and "CampaignEvent" in relay.stuck[bad]
        assert (
            int(
                env.scalar(
                    "SELECT count(*) FROM outbox WHERE key = :k AND published_at IS NULL", k=poisoned_key
                )
            )
            == 2
        )
    finally:
        with env.engine.begin() as conn:  # the operator's fix: delete (or repair) the poison row
            conn.execute(text("DELETE FROM outbox WHERE id = :i"), {"i": bad})
    assert relay.run_once() == 1
    assert bad not in relay.stuck


def test_two_relays_at_once_publish_everything_in_order_per_campaign(settings, env):
    _drain_others(env, settings)
    stop = threading.Event()
    relays = [OutboxRelay(settings, env.sessions, KafkaProducer(settings.kafka)) for _ in range(2)]
    threads = [
        threading.Thread(target=r.run_forever, args=(stop,), kwargs={"idle_sleep": 0.01, "limit": 7})
        for r in relays
    ]
    for thread in threads:
        thread.start()
    campaign_ids = []
    try:
        # Write while both relays run, so rows commit while batches are being locked and published.
        for _ in range(12):
            campaign_id = env.service.create_campaign(env.marketer, env.payload())
            campaign_ids.append(campaign_id)
            env.service.schedule_campaign(env.marketer, campaign_id, env.clock() + timedelta(hours=1))
        for campaign_id in campaign_ids:
            env.service.pause_campaign(env.marketer, campaign_id)
            env.service.update_metrics(env.marketer, campaign_id, {"delivered": 1})
            env.service.resume_campaign(env.marketer, campaign_id)
            env.service.cancel_campaign(env.marketer, campaign_id)
        wait_for(lambda: _unpublished(env, campaign_ids) == 0, timeout=60, what="every outbox row published")
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    assert all(r.published > 0 for r in relays), [r.published for r in relays]  # both took part

    records = _events(settings, expected=12 * 5, campaign_ids=campaign_ids, timeout=60)
    versions: dict[str, list[int]] = defaultdict(list)
    seen: set[str] = set()
    for record in records:  # per partition (and so per campaign) in log order
        event = get_codec().decode(record.value(), "CampaignEvent")
        if event["event_id"] in seen:
            continue
        seen.add(event["event_id"])
        versions[event["campaign_id"]].append(event["campaign_version"])
    assert {c: v for c, v in versions.items()} == {str(c): [1, 2, 3, 4, 5] for c in campaign_ids}


@pytest.mark.parametrize("kind", ["dsn", "engine"])
def test_an_unreachable_database_is_service_unavailable(kind):
    from campaigns.db.engine import make_engine
    from campaigns.errors import ServiceUnavailable
    from campaigns.settings import DatabaseSettings, Settings

    down = DatabaseSettings(port=1)  # nothing listens there
    source = down.dsn() if kind == "dsn" else make_engine(down)
    relay = OutboxRelay(Settings(), source, MemoryProducer())
    with pytest.raises(ServiceUnavailable, match="cannot reach PostgreSQL"):
        relay.run_once()
