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


def _row(campaign_id: str, window_start: datetime | None, **counts: Any) -> bytes:
    """A campaign.analytics record: a window's row, or the totals row (``window_start=None``)."""
    end = None if window_start is None else window_start + timedelta(seconds=WINDOW_S)
    return get_codec().encode("CampaignAnalytics", {
        "campaign_id": campaign_id, "window_start": window_start, "window_end": end,
        "updated_at": T0, **counts,
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


async def test_the_newest_row_is_kept_per_campaign_and_window(live) -> None:
    agent = live.app.agents["count_outcomes"]
    async with agent.test_context() as ctx:
        for n in range(1, 4):  # the rows one campaign's analytics publish as its counts grow
            await ctx.put(key=b"c1", value=_row("c1", T0, sent=2 * n, latency_count=2 * n,
                                                latency_sum_ms=8.0 * n, latency_max_ms=5.0), partition=1)
            await ctx.put(key=b"c1", value=_row("c1", T0 - timedelta(seconds=WINDOW_S), sent=n, failed=n),
                          partition=1)
            await ctx.put(key=b"c1", value=_row("c1", None, sent=3 * n, failed=n), partition=1)
            await ctx.put(key=b"c2", value=_row("c2", None, skipped=4 * n), partition=2)
        await _until(lambda: live.counts.stats.records == 12)

    at_ms = int((T0 + timedelta(seconds=15)).timestamp() * 1000)
    view = live.counts.view("c1", at_ms)
    assert view["seen"] is True
    assert view["totals"]["sent"] == 9 and view["totals"]["failed"] == 3
    assert view["current_window"]["sent"] == 6 and view["current_window"]["latency_max_ms"] == 5.0
    assert view["current_window"]["latency_mean_ms"] == 4.0
    assert view["previous_window"]["sent"] == 3 and view["previous_window"]["failed"] == 3
    assert view["sends_per_s"] == 3 / WINDOW_S
    assert live.counts.view("c2", at_ms)["totals"]["skipped"] == 12
    assert live.counts.view("nobody", at_ms)["seen"] is False
    stats = live.counts.stats
    # One table write per (campaign, window) and per campaign per batch, however many records.
    assert stats.window_updates <= 2 * stats.batches and stats.totals_updates <= 2 * stats.batches


async def test_redelivered_and_older_rows_change_nothing(live) -> None:
    agent = live.app.agents["count_outcomes"]
    async with agent.test_context() as ctx:
        for n in (1, 2, 3, 4):
            await ctx.put(key=b"c1", value=_row("c1", None, sent=n), partition=0)
        await _until(lambda: live.counts.stats.records == 4)
        ctx.sent_offset = 2  # as after a crash: offsets 2 and 3 come again
        for n in (3, 4):
            await ctx.put(key=b"c1", value=_row("c1", None, sent=n), partition=0)
        await ctx.put(key=b"c1", value=_row("c1", None, sent=2), partition=0)  # an older row, late
        await _until(lambda: live.counts.stats.records == 7)
    assert live.counts.totals["c1"]["sent"] == 4
    assert live.counts.stats.stale >= 3


async def test_undecodable_records_are_skipped_and_counted(live) -> None:
    agent = live.app.agents["count_outcomes"]
    async with agent.test_context() as ctx:
        await ctx.put(key=b"c1", value=b"not avro", partition=0)
        await ctx.put(key=b"c1", value=_row("c1", None, sent=7), partition=0)
        await _until(lambda: live.counts.stats.records == 1)
    assert live.counts.stats.undecodable == 1
    assert live.counts.totals["c1"]["sent"] == 7


def test_key_partition_is_crc32_like_librdkafka() -> None:
    # librdkafka's default partitioner hashes keys with CRC-32 (ISO-HDLC), whose check value is the CRC of
    # "123456789"; the integration test compares against the broker's actual placement.
    assert key_partition("123456789", 7) == 0xCBF43926 % 7
    assert {key_partition(f"k{i}", 3) for i in range(100)} == {0, 1, 2}
