"""The dashboard's live feed (``api/live.py``) on the real services, in-process: one database poll per interval
whatever the number of viewers, none without viewers, counts from ``campaign_analytics``, windows for watched
campaigns, dead letters counted per campaign from the DLQ topic."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import pytest
from confluent_kafka import Producer

from api.live import LiveFeed
from campaigns.codec import get_codec
from campaigns.db.engine import make_engine, make_sessionmaker
from campaigns.service import CampaignService
from campaigns.settings import Settings
from campaigns.topics import MESSAGES_DLQ
from tests.entrypoints.conftest import REPO_ROOT, query
from tests.helpers import create_topics

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]


def dead_letter(campaign: str, n: int) -> bytes:
    return get_codec().encode("DeadLetter", {
        "dead_letter_id": str(uuid.uuid4()), "message_id": str(uuid.uuid4()), "campaign_id": campaign,
        "recipient_id": str(n), "channel": "sms", "source_topic": "campaign.messages.sms", "source_partition": 0,
        "source_offset": n, "reason": "permanent_failure", "detail": "test", "attempts": 1,
        "failed_at": int(time.time() * 1000), "original_value": None})


async def test_one_poll_per_interval_for_any_number_of_viewers(settings: Settings):
    engine = make_engine(settings.database)
    sessions = make_sessionmaker(engine)
    service = CampaignService(sessions)
    service.provision_principal("ops", "admin")
    service.add_channel("ops", kind="sms", channel_id=None, provider="simulator", rate_per_s=10, burst=5)
    query(settings, "INSERT INTO customers (id, phone) VALUES (1, '+15550000001')")
    payload = json.loads((REPO_ROOT / "examples" / "campaign-inline-sms.json").read_text())
    payload.update(segments=[], manual_recipients=[1])
    campaign = service.create_campaign("ops", payload)
    query(settings, "INSERT INTO campaign_analytics (campaign_id, window_start, window_end, sent, failed, retried) "
                    "VALUES (%s, NULL, NULL, 7, 2, 3), (%s, '2026-01-01T00:00:00Z', '2026-01-01T00:01:00Z', 7, 2, 3)",
          str(campaign), str(campaign))
    dlq = settings.kafka.topic(MESSAGES_DLQ)
    create_topics(settings.kafka.bootstrap_servers, [dlq])
    producer = Producer({"bootstrap.servers": settings.kafka.bootstrap_servers})
    for n in range(3):
        producer.produce(dlq, key=str(n).encode(), value=dead_letter(str(campaign), n))
    producer.produce(dlq, key=b"x", value=b"not avro")  # undecodable: skipped, not counted
    assert producer.flush(30) == 0

    interval = 0.25
    feed = LiveFeed(sessions, settings, interval_s=interval)
    try:
        await asyncio.sleep(3 * interval)
        assert feed.polls == 0, "the poller queried without a viewer"

        async def watch(campaign_id: uuid.UUID | None, seconds: float) -> list[dict]:
            got: list[dict] = []

            async def collect() -> None:
                async for snapshot in feed.subscribe(campaign_id):
                    got.append(snapshot)

            task = asyncio.create_task(collect())
            await asyncio.sleep(seconds)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            return got

        started = time.monotonic()
        results = await asyncio.gather(*[watch(None, 2.5) for _ in range(20)], watch(campaign, 2.5))
        elapsed = time.monotonic() - started
        assert feed.polls <= elapsed / interval + 2, f"{feed.polls} polls in {elapsed:.1f}s for 21 viewers"
        assert all(results), "a viewer got no snapshot"
        line = next(c for c in results[0][-1]["campaigns"] if c["id"] == str(campaign))
        assert line["counts"]["sent"] == 7 and line["counts"]["failed"] == 2 and line["retries"] == 3, line
        assert line["failure_rate"] == pytest.approx(2 / 9, abs=1e-3)
        page = results[-1][-1]
        assert page["campaign"]["id"] == str(campaign) and page["windows"][0]["sent"] == 7, page

        def dead_letters() -> int:
            return next(c for c in results[0][-1]["campaigns"] if c["id"] == str(campaign))["dead_letters"]

        deadline = time.monotonic() + 30
        while dead_letters() != 3 and time.monotonic() < deadline:
            results[0] = await watch(None, 1.0)
        assert dead_letters() == 3, results[0][-1]
    finally:
        feed.close()
        engine.dispose()
