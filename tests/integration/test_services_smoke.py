"""The foundation works on the real services: Kafka produce/consume through a consumer group, a Faust
agent with a tumbling-windowed table processing real events, and a PostgreSQL round trip."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg2
from confluent_kafka import Producer

from tests.helpers import consume_all, create_topics

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_confluent_produce_consume_through_group(kafka_settings, topic_prefix):
    topic = f"{topic_prefix}smoke"
    create_topics(kafka_settings.bootstrap_servers, [topic])
    producer = Producer({"bootstrap.servers": kafka_settings.bootstrap_servers, "enable.idempotence": True})
    for i in range(100):
        producer.produce(topic, key=f"k{i % 7}", value=f"v{i}")
    assert producer.flush(30) == 0

    records = consume_all(kafka_settings.bootstrap_servers, topic, expected=100, timeout=30)

    assert sorted(r.value().decode() for r in records) == sorted(f"v{i}" for i in range(100))
    by_key = {}
    for r in records:
        by_key.setdefault(r.key(), set()).add(r.partition())
    assert all(len(parts) == 1 for parts in by_key.values()), "a key must stay on one partition"


def test_faust_agent_with_tumbling_table_on_real_broker(kafka_settings, topic_prefix):
    source, sink = f"{topic_prefix}faust-in", f"{topic_prefix}faust-out"
    create_topics(kafka_settings.bootstrap_servers, [source, sink])
    env = {
        **os.environ,
        "SMOKE_APP_ID": f"{topic_prefix}smoke-app",
        "SMOKE_BROKER": kafka_settings.faust_broker,
        "SMOKE_IN": source,
        "SMOKE_OUT": sink,
        "PYTHONPATH": str(REPO_ROOT),
    }
    worker = subprocess.Popen(
        [sys.executable, "-m", "tests.integration.faust_smoke_app", "worker", "-l", "info", "--without-web"],
        env=env,
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        producer = Producer({"bootstrap.servers": kafka_settings.bootstrap_servers})
        for _ in range(5):
            producer.produce(source, key="alpha", value="x")
        for _ in range(3):
            producer.produce(source, key="beta", value="x")
        assert producer.flush(30) == 0

        records = consume_all(kafka_settings.bootstrap_servers, sink, expected=8, timeout=90)
        assert worker.poll() is None, "the Faust worker died"
        final = {}
        for r in records:
            final[r.key()] = max(final.get(r.key(), 0), int(r.value()))
        assert final == {b"alpha": 5, b"beta": 3}
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()


def test_postgres_round_trip(database_settings):
    marker = uuid.uuid4().hex
    with psycopg2.connect(database_settings.dsn()) as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO customer_segments (name) VALUES (%s) RETURNING id", (marker,))
        (segment_id,) = cur.fetchone()
        cur.execute("SELECT name FROM customer_segments WHERE id = %s", (segment_id,))
        assert cur.fetchone() == (marker,)
        cur.execute("SELECT count(*) FROM role_permissions WHERE role_name = 'auditor'")
        assert cur.fetchone() == (3,)  # campaigns.read, campaigns.audit, pipeline.read (0001, 0006)
