"""The live view's agent and tables through Faust's test context (memory store, no broker)."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from campaigns.codec import get_codec
from campaigns.settings import AnalyticsSettings, KafkaSettings, LiveSettings, Settings
from streams.live import build_app, key_partition

WINDOW_S = 60
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)  # a window start (epoch-aligned for 60 s)


def _record(campaign_id: str, window_start: datetime, **counts: Any) -> bytes:
    return get_codec().encode("OutcomeCounts", {
        "batch_id": "b", "campaign_id": campaign_id, "window_start": window_start,
        "window_end": window_start + timedelta(seconds=WINDOW_S), **counts,
    })


@pytest.fixture
async def live():
    settings = Settings(
        kafka=KafkaSettings(bootstrap_servers="127.0.0.1:1", topic_prefix="unit.", partitions=3),
        analytics=AnalyticsSettings(window_s=WINDOW_S),
        live=LiveSettings(batch_size=100, batch_within_s=0.01),
    )
    built = build_app(settings)
    built.app.finalize()
    built.app.flow_control.resume()
    yield built


async def _until(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def test_batches_are_summed_per_campaign_and_window(live) -> None:
    agent = live.app.agents["count_outcomes"]
    async with agent.test_context() as ctx:
        for _ in range(3):
            await ctx.put(key=b"c1", value=_record("c1", T0, sent=2, latency_count=2, latency_sum_ms=8.0,
                                                   latency_max_ms=5.0), partition=1)
            await ctx.put(key=b"c1", value=_record("c1", T0 - timedelta(seconds=WINDOW_S), sent=1, failed=1),
                          partition=1)
            await ctx.put(key=b"c2", value=_record("c2", T0, skipped=4), partition=2)
        await _until(lambda: live.counter.stats.records == 9)

    at_ms = int((T0 + timedelta(seconds=15)).timestamp() * 1000)
    view = live.counter.view("c1", at_ms)
    assert view["seen"] is True
    assert view["totals"]["sent"] == 9 and view["totals"]["failed"] == 3
    assert view["current_window"]["sent"] == 6 and view["current_window"]["latency_max_ms"] == 5.0
    assert view["previous_window"]["sent"] == 3 and view["previous_window"]["failed"] == 3
    assert view["sends_per_s"] == 3 / WINDOW_S
    assert live.counter.view("c2", at_ms)["totals"]["skipped"] == 12
    assert live.counter.view("nobody", at_ms)["seen"] is False
    stats = live.counter.stats
    # One table write per (campaign, window) and per campaign per batch, however many records.
    assert stats.window_updates <= 3 * stats.batches and stats.totals_updates <= 2 * stats.batches


async def test_redelivered_records_are_not_counted_twice(live) -> None:
    agent = live.app.agents["count_outcomes"]
    async with agent.test_context() as ctx:
        for _ in range(4):
            await ctx.put(key=b"c1", value=_record("c1", T0, sent=1), partition=0)
        await _until(lambda: live.counter.stats.records == 4)
        ctx.sent_offset = 2  # as after a crash: offsets 2 and 3 come again, then 4 is new
        for _ in range(3):
            await ctx.put(key=b"c1", value=_record("c1", T0, sent=1), partition=0)
        await _until(lambda: live.counter.stats.records == 7)
    assert live.counter.totals["c1"]["sent"] == 5
    assert live.counter.stats.skipped == 2


async def test_undecodable_records_are_skipped_and_counted(live) -> None:
    agent = live.app.agents["count_outcomes"]
    async with agent.test_context() as ctx:
        await ctx.put(key=b"c1", value=b"not avro", partition=0)
        await ctx.put(key=b"c1", value=_record("c1", T0, sent=7), partition=0)
        await _until(lambda: live.counter.stats.records == 1)
    assert live.counter.stats.undecodable == 1
    assert live.counter.totals["c1"]["sent"] == 7


def test_key_partition_is_crc32_like_librdkafka() -> None:
    # librdkafka's default partitioner hashes keys with CRC-32 (ISO-HDLC), whose check value is the CRC of
    # "123456789"; the integration test compares against the broker's actual placement.
    assert key_partition("123456789", 7) == 0xCBF43926 % 7
    assert {key_partition(f"k{i}", 3) for i in range(100)} == {0, 1, 2}
