"""Baseline 1: BullMQ (Python) with Redis, one job per recipient.

The same work per recipient as the pipeline's sender: claim (campaign, recipient) in
``campaign_recipient_log`` (``INSERT ... ON CONFLICT DO NOTHING``), call the same kind of in-process
transport, record the outcome. The harness enqueues the audience (the same keyset pages and eligibility
rules as the expander; ineligible recipients get their ``skipped`` rows directly) while the workers run;
the clock runs from the first enqueue until every recipient has a terminal row. No retries topic, no
outcome stream, no analytics: BullMQ gets the easier job.

Variants:

* ``docs``: as BullMQ's docs show it -- one worker process, default options (concurrency 1), completed jobs
  kept, one psycopg2 connection used inline, two statements and two commits per job;
* ``tuned``: one worker process per core (2), concurrency 10 each, completed jobs removed, hiredis
  installed. Chosen by a sweep (docs/benchmarks.md): concurrency 100 costs more CPU per job (BullMQ's
  worker loop waits on a set of all in-flight jobs), and moving the SQL to a thread pool over a psycopg2
  pool (``--sql pool``) cost twice the CPU per job of running it inline, for less throughput.

The Redis server is started by the harness on a free loopback port with a private directory, no
persistence, and stopped afterwards. The worker processes are ``python -m bench.baseline_bullmq worker``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.extras
import psycopg2.pool

from campaigns.core.ids import message_id

from .env import (
    BenchEnv,
    CpuMeter,
    Subprocess,
    free_port,
    proc_cpu_seconds,
    proc_peak_rss_mb,
    python,
    read_json,
    wait_for,
)

log = logging.getLogger("bench")

CLAIM_SQL = (
    "INSERT INTO campaign_recipient_log (campaign_id, recipient_id, message_id, channel_kind, status, "
    "attempts, "
    "claimed_at, created_at, updated_at) VALUES (%s, %s, %s, %s, 'claimed', 0, now(), now(), now()) "
    "ON CONFLICT (campaign_id, recipient_id) DO NOTHING RETURNING recipient_id"
)
RECORD_SQL = (
    "UPDATE campaign_recipient_log SET status = 'sent', attempts = 1, provider_message_id = %s, "
    "sent_at = now(), "
    "updated_at = now() WHERE campaign_id = %s AND recipient_id = %s AND status = 'claimed'"
)


@dataclass(frozen=True)
class Variant:
    name: str
    processes: int
    concurrency: int | None  # None: BullMQ's default (1)
    sql: str  # inline | pool
    remove_on_complete: bool


VARIANTS = {
    "docs": Variant("docs", 1, None, "inline", False),
    "tuned": Variant("tuned", 2, 10, "inline", True),
}


class RedisServer:
    """redis-server on a free loopback port with a private directory; no persistence."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="bench-redis-"))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def __enter__(self) -> RedisServer:
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server not found: install it with `apt-get install -y redis-server`")
        self.proc = subprocess.Popen(  # noqa: S603 - our own arguments, no shell
            [
                exe,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.dir),
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
                "--logfile",
                str(self.dir / "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        import redis

        client = redis.Redis(port=self.port)
        wait_for(lambda: _ping(client), timeout=20, what="redis-server")
        client.close()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


def _ping(client: Any) -> bool:
    try:
        return bool(client.ping())
    except Exception:
        return False


def run(env: BenchEnv, redis: RedisServer, variant: Variant, n: int, batch: int = 1000) -> dict[str, Any]:
    """One campaign of ``n`` recipients through BullMQ; returns the figures and checks."""
    plan, segment = env.audience(n)
    env.reset_tables()
    campaign = env.create_campaign(channel="email", batch_size=batch, segment=segment, name=f"bullmq-{n}")
    queue_name = f"bench-{uuid.uuid4().hex[:8]}"
    tag = f"bullmq-{variant.name}-{queue_name}"
    workers = []
    for i in range(variant.processes):
        args = [
            python(),
            "-m",
            "bench.baseline_bullmq",
            "worker",
            "--redis",
            redis.url,
            "--queue",
            queue_name,
            "--sql",
            variant.sql,
            "--report",
            str(env.log_dir / f"{tag}-{i}.json"),
            "--first-id",
            str(plan.first_id),
            "--count",
            str(n),
        ]
        if variant.concurrency is not None:
            args += ["--concurrency", str(variant.concurrency)]
        workers.append(Subprocess(args, env.child_env("unused."), env.log_dir / f"{tag}-{i}.log"))
    for w in workers:
        w.start()
    try:
        wait_for(
            lambda: all((Path(str(w.log_path)).exists() and "ready" in w.tail(5)) or not w.alive() for w in workers),
            timeout=60,
            what="bullmq workers",
        )
        for w in workers:
            if not w.alive():
                raise RuntimeError(f"bullmq worker died:\n{w.tail()}")
        meter = CpuMeter(env.dbname, [w.pid for w in workers])
        assert redis.proc is not None
        redis_cpu0 = proc_cpu_seconds(redis.proc.pid)
        meter.start()
        t0 = time.perf_counter()
        enqueue_s = asyncio.run(
            _enqueue(env, redis.url, queue_name, campaign, segment, batch, variant.remove_on_complete)
        )
        conn = env.connect()
        conn.autocommit = True

        def done() -> bool:
            if not all(w.alive() for w in workers):
                raise RuntimeError(f"a bullmq worker died:\n{workers[0].tail()}")
            with conn.cursor() as cur:
                cur.execute(
                    "SELECT count(*) FROM campaign_recipient_log WHERE campaign_id = %s "
                    "AND status IN ('sent', 'failed', 'skipped', 'cancelled')",
                    (str(campaign),),
                )
                return bool(cur.fetchone()[0] >= n)

        wait_for(done, timeout=max(300.0, n / 100), interval=0.1, what="every recipient terminal (bullmq)")
        elapsed = time.perf_counter() - t0
        cpu = meter.stop()
        cpu["redis_cpu_s"] = proc_cpu_seconds(redis.proc.pid) - redis_cpu0
        conn.close()
        peak_rss = max(proc_peak_rss_mb(w.pid) for w in workers)
    finally:
        for w in workers:
            w.stop(timeout=60)
    reports = [read_json(env.log_dir / f"{tag}-{i}.json") for i in range(variant.processes)]
    calls = sum(r.get("calls", 0) for r in reports)
    counts = env.log_counts(campaign)
    result = {
        "variant": variant.name,
        "processes": variant.processes,
        "concurrency": variant.concurrency or 1,
        "sql": variant.sql,
        "n": n,
        "elapsed_s": elapsed,
        "enqueue_s": enqueue_s,
        "recipients_per_s": n / elapsed,
        "peak_rss_mb": peak_rss,
        **cpu,
        "worker_cpu_s_per_1k": cpu["worker_cpu_s"] / n * 1000,
        # What the design costs the machine per recipient: workers + Redis + PostgreSQL backends.
        "stack_cpu_s_per_1k": (cpu["worker_cpu_s"] + cpu["redis_cpu_s"] + cpu["postgres_cpu_s"]) / n * 1000,
        "jobs_processed": sum(r.get("jobs", 0) for r in reports),
        "claims_lost": sum(r.get("claims_lost", 0) for r in reports),
        "transport_calls": calls,
        "transport_duplicates": sum(r.get("duplicates", 0) for r in reports),
        "log_counts": counts,
    }
    result["checks"] = {
        "every_recipient_terminal": sum(counts.values()) == n,
        "no_duplicate_sends": calls == counts.get("sent", 0),
    }
    return result


async def _enqueue(
    env: BenchEnv,
    redis_url: str,
    queue_name: str,
    campaign: uuid.UUID,
    segment: int,
    batch: int,
    remove_on_complete: bool,
) -> float:
    """Page through the audience like the expander: skipped rows directly, one job per eligible recipient."""
    from bullmq import Queue

    from sinks.audience import fetch_page

    queue = Queue(queue_name, {"connection": redis_url})
    conn = env.connect()
    started = time.perf_counter()
    cid = str(campaign)
    with conn.cursor() as cur:
        cur.execute("SELECT subject, body FROM campaign_messages WHERE campaign_id = %s", (cid,))
        subject, body = cur.fetchone()
    conn.commit()
    after = 0
    opts = {"removeOnComplete": True} if remove_on_complete else {}
    try:
        while True:
            page = fetch_page(conn.cursor(), campaign, [segment], "email", after, batch)
            if not page:
                break
            skipped = [r for r in page if r.skip_reason]
            if skipped:
                now = datetime.now(UTC)
                with conn.cursor() as cur:
                    psycopg2.extras.execute_values(
                        cur,
                        "INSERT INTO campaign_recipient_log (campaign_id, recipient_id, message_id, "
                        "channel_kind, "
                        "status, failure_reason, created_at, updated_at) VALUES %s ON CONFLICT DO NOTHING",
                        [
                            (
                                cid,
                                r.customer_id,
                                message_id(cid, str(r.customer_id)),
                                "email",
                                "skipped",
                                r.skip_reason,
                                now,
                                now,
                            )
                            for r in skipped
                        ],
                    )
            conn.commit()
            jobs = [
                {
                    "name": "send",
                    "opts": opts,
                    "data": {
                        "campaign_id": cid,
                        "recipient_id": str(r.customer_id),
                        "message_id": message_id(cid, str(r.customer_id)),
                        "address": r.address,
                        "subject": subject,
                        "body": body,
                        "locale": r.locale,
                    },
                }
                for r in page
                if r.skip_reason is None
            ]
            if jobs:
                await queue.addBulk(jobs)
            after = page[-1].customer_id
    finally:
        await queue.close()
        conn.close()
    return time.perf_counter() - started


# --- the worker process ------------------------------------------------------------------------------


def worker_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.baseline_bullmq worker")
    parser.add_argument("--redis", required=True)
    parser.add_argument("--queue", required=True)
    parser.add_argument("--concurrency", type=int, default=None, help="default: BullMQ's own (1)")
    parser.add_argument("--sql", choices=("inline", "pool"), default="inline")
    parser.add_argument("--report", type=Path, required=True)
    parser.add_argument("--first-id", type=int, default=0)
    parser.add_argument("--count", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    report = asyncio.run(_work(args))
    args.report.write_text(json.dumps(report))
    return 0


async def _work(args: argparse.Namespace) -> dict[str, Any]:
    from bullmq import Worker

    from campaigns.settings import load_settings
    from campaigns.transports.base import OutgoingMessage

    from .transport import CountingTransport

    dsn = load_settings().database.dsn()
    transport = CountingTransport("email", first_id=args.first_id, count=args.count)
    stats = {"jobs": 0, "claims_lost": 0}
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    def claim(conn: Any, d: dict[str, Any]) -> bool:
        with conn.cursor() as cur:
            cur.execute(CLAIM_SQL, (d["campaign_id"], int(d["recipient_id"]), d["message_id"], "email"))
            won = cur.fetchone() is not None
        conn.commit()
        return won

    def record(conn: Any, d: dict[str, Any], provider_id: str | None) -> None:
        with conn.cursor() as cur:
            cur.execute(RECORD_SQL, (provider_id, d["campaign_id"], int(d["recipient_id"])))
        conn.commit()

    def message(d: dict[str, Any]) -> OutgoingMessage:
        return OutgoingMessage(
            message_id=d["message_id"],
            campaign_id=d["campaign_id"],
            recipient_id=d["recipient_id"],
            channel="email",
            address=d["address"],
            body=d["body"],
            subject=d["subject"],
            locale=d["locale"],
        )

    if args.sql == "inline":
        conn = psycopg2.connect(dsn)

        async def process(job: Any, token: str) -> str:
            stats["jobs"] += 1
            d = job.data
            if not claim(conn, d):
                stats["claims_lost"] += 1
                return "duplicate"
            receipt = await transport.send(message(d))
            record(conn, d, receipt.provider_message_id)
            return "sent"
    else:
        size = min(args.concurrency or 1, 16)
        pool = psycopg2.pool.ThreadedConnectionPool(1, size, dsn)
        executor = ThreadPoolExecutor(max_workers=size)

        def pooled(fn: Any, *a: Any) -> Any:
            c = pool.getconn()
            try:
                return fn(c, *a)
            finally:
                pool.putconn(c)

        async def process(job: Any, token: str) -> str:
            stats["jobs"] += 1
            d = job.data
            if not await loop.run_in_executor(executor, pooled, claim, d):
                stats["claims_lost"] += 1
                return "duplicate"
            receipt = await transport.send(message(d))
            await loop.run_in_executor(executor, pooled, record, d, receipt.provider_message_id)
            return "sent"

    opts: dict[str, Any] = {"connection": args.redis}
    if args.concurrency is not None:
        opts["concurrency"] = args.concurrency
    worker = Worker(args.queue, process, opts)
    print("ready", flush=True)
    await stop.wait()
    await worker.close()
    out = transport.report()
    return {
        "jobs": stats["jobs"],
        "claims_lost": stats["claims_lost"],
        "calls": out["calls"],
        "duplicates": out["duplicates"],
    }


if __name__ == "__main__":
    import sys

    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        raise SystemExit(worker_main(sys.argv[2:]))
    raise SystemExit("usage: python -m bench.baseline_bullmq worker ...")
