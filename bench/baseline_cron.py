"""Baseline 2: the seed's simple design -- a cron-style poller plus a ``sendBatch`` loop over the database.

Every ``period`` seconds (60, aligned to the minute like cron) the poller activates the campaigns whose
start time has passed, then for each active campaign loops: SELECT the next page of recipients (the same
keyset query and eligibility rules as the expander), send each eligible one in turn through the transport,
INSERT the page's log rows (sent / skipped) in one statement, commit, next page. No Kafka, no claims
before the provider call (a crash mid-page re-sends the page), no retries, no outcome stream or analytics,
one process: it is the floor of the work, and the ceiling of the latency (up to one period).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg2.extras

from campaigns.core.ids import message_id
from campaigns.transports.base import OutgoingMessage

from .env import BenchEnv, CpuMeter, percentile
from .transport import CountingTransport


class CronSender:
    """One poller over one database connection; ``tick`` is one cron firing."""

    def __init__(self, env: BenchEnv, transport: CountingTransport) -> None:
        self._env = env
        self._conn = env.connect()
        self._transport = transport
        self.rows = 0

    def close(self) -> None:
        self._conn.close()

    def tick(self) -> list[str]:
        """Activate due campaigns, then send every active one to the end. Returns the campaigns finished."""
        conn = self._conn
        now = datetime.now(UTC)
        with conn.cursor() as cur:
            cur.execute(
                "UPDATE campaigns SET status = 'active', activated_at = %s, version = version + 1 "
                "WHERE status = 'scheduled' AND start_at <= %s",
                (now, now),
            )
            cur.execute(
                "SELECT c.id::text, c.batch_size, m.subject, m.body, array_agg(s.segment_id) "
                "FROM campaigns AS c JOIN campaign_messages AS m ON m.campaign_id = c.id "
                "LEFT JOIN campaign_segments AS s ON s.campaign_id = c.id "
                "WHERE c.status = 'active' GROUP BY c.id, c.batch_size, m.subject, m.body"
            )
            active = cur.fetchall()
        conn.commit()
        finished = []
        for cid, batch, subject, body, segments in active:
            asyncio.run(self._send_campaign(cid, batch, subject, body, [s for s in segments if s is not None]))
            with conn.cursor() as cur:
                cur.execute(
                    "UPDATE campaigns SET status = 'completed', finished_at = now(), version = version + 1, "
                    "expansion_done = true, total_recipients = (SELECT count(*) FROM campaign_recipient_log "
                    "WHERE campaign_id = %s) WHERE id = %s",
                    (cid, cid),
                )
            conn.commit()
            finished.append(cid)
        return finished

    async def _send_campaign(self, cid: str, batch: int, subject: str | None, body: str, segments: list[int]) -> None:
        from sinks.audience import fetch_page

        conn = self._conn
        after = 0
        while True:
            page = fetch_page(conn.cursor(), uuid.UUID(cid), segments, "email", after, batch)
            if not page:
                return
            now = datetime.now(UTC)
            rows = []
            for r in page:
                mid = message_id(cid, str(r.customer_id))
                if r.skip_reason:
                    rows.append((cid, r.customer_id, mid, "email", "skipped", r.skip_reason, None, 0, None, now, now))
                    continue
                receipt = await self._transport.send(
                    OutgoingMessage(
                        message_id=mid,
                        campaign_id=cid,
                        recipient_id=str(r.customer_id),
                        channel="email",
                        address=r.address or "",
                        body=body,
                        subject=subject,
                        locale=r.locale,
                    )
                )
                rows.append(
                    (
                        cid,
                        r.customer_id,
                        mid,
                        "email",
                        "sent",
                        None,
                        receipt.provider_message_id,
                        1,
                        datetime.now(UTC),
                        now,
                        now,
                    )
                )
            with conn.cursor() as cur:
                psycopg2.extras.execute_values(
                    cur,
                    "INSERT INTO campaign_recipient_log (campaign_id, recipient_id, message_id, "
                    "channel_kind, status, failure_reason, provider_message_id, attempts, sent_at, "
                    "created_at, updated_at) "
                    "VALUES %s "
                    "ON CONFLICT (campaign_id, recipient_id) DO NOTHING",
                    rows,
                    page_size=len(rows),
                )
            conn.commit()
            self.rows += len(rows)
            after = page[-1].customer_id


def throughput_run(env: BenchEnv, n: int, batch: int) -> dict[str, Any]:
    """One campaign of ``n``: from the tick that picks it up to its last log row (this process)."""
    plan, segment = env.audience(n)
    env.reset_tables()
    transport = CountingTransport("email", first_id=plan.first_id, count=n)
    sender = CronSender(env, transport)
    try:
        campaign = env.create_campaign(channel="email", batch_size=batch, segment=segment, name=f"cron-{n}")
        env.schedule(campaign, datetime.now(UTC) - timedelta(milliseconds=1))
        meter = CpuMeter(env.dbname)
        meter.start()
        cpu0, t0 = time.process_time(), time.perf_counter()
        sender.tick()
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        machine = meter.stop()
    finally:
        sender.close()
    counts = env.log_counts(campaign)
    out = transport.report()
    return {
        "n": n,
        "batch": batch,
        "elapsed_s": elapsed,
        "recipients_per_s": n / elapsed,
        "sender_cpu_s": cpu,
        "sender_cpu_s_per_1k": cpu / n * 1000,
        "postgres_cpu_s": machine["postgres_cpu_s"],
        "machine_util": machine["machine_util"],
        "stack_cpu_s_per_1k": (cpu + machine["postgres_cpu_s"]) / n * 1000,
        "log_counts": counts,
        "checks": {
            "every_recipient_terminal": sum(counts.values()) == n,
            "no_duplicate_sends": out["duplicates"] == 0 and out["calls"] == counts.get("sent", 0),
        },
    }


def latency_run(env: BenchEnv, campaigns: int, period_s: float, recipients: int = 50) -> dict[str, Any]:
    """Small campaigns with start times spread over two periods; the poller fires on period boundaries."""
    plan, _segment = env.audience(10_000)
    env.reset_tables()
    transport = CountingTransport("email", first_id=plan.first_id, count=plan.customers)
    sender = CronSender(env, transport)
    eligible = [c for c in plan.ids() if c % 50 and c % 97]
    import random

    rng = random.Random(7)
    starts: dict[str, datetime] = {}
    try:
        now = datetime.now(UTC)
        for i in range(campaigns):
            cid = env.create_campaign(
                channel="email",
                batch_size=1000,
                name=f"cron-lat-{i}",
                manual=eligible[i * recipients : (i + 1) * recipients],
            )
            start = now + timedelta(seconds=1 + rng.uniform(0, 2 * period_s))
            env.schedule(cid, start)
            starts[str(cid)] = start
        pending = set(starts)
        deadline = time.monotonic() + 4 * period_s + 30
        while pending and time.monotonic() < deadline:
            # Sleep to the next multiple of the period (cron fires at :00 of every minute).
            wall = time.time()
            time.sleep(period_s - (wall % period_s))
            pending -= set(sender.tick())
    finally:
        sender.close()
    first = transport.report()["first_call_at"]
    samples = [first[c] - s.timestamp() for c, s in starts.items() if c in first]
    return {
        "campaigns": campaigns,
        "period_s": period_s,
        "latency_s": samples,
        "p50_s": percentile(samples, 50),
        "p99_s": percentile(samples, 99),
        "max_s": max(samples) if samples else None,
        "checks": {"every_campaign_sent": len(samples) == campaigns},
    }
