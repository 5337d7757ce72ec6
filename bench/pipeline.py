"""The pipeline's own scenarios: end to end, schedule-to-first-send latency, expansion alone, and the
same end to end over real HTTP through the provider simulator.

End to end = from the campaign's ``activated_at`` (set by the scheduler when the start time comes) to its
``finished_at`` (set by the completion stage when the analytics have counted every recipient and the recipient
log has a terminal row for each). Both are written by the worker, so the harness's own polling is not in the figure.
The worker is a subprocess (``bench.worker_proc``: the production ``Worker`` with a counting transport), so
its CPU seconds and peak RSS are its own.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from campaigns.codec import get_codec
from campaigns.settings import Settings
from campaigns.topics import OUTCOME_BATCHES, OUTCOMES, TALLY_FORWARDER_GROUP, TALLY_GROUP
from producers.kafka import KafkaProducer
from producers.topics import TopicSpec, ensure_topics, messages_topic, topic_specs
from streams.expansion import Expander

from .env import (
    BenchEnv,
    CpuMeter,
    Subprocess,
    delete_run_topics,
    family_peak_rss_mb,
    free_port,
    percentile,
    python,
    read_json,
    wait_for,
    wait_groups_ready,
)
from .probe import SAMPLE_MESSAGE

log = logging.getLogger("bench")
TERMINAL = ("sent", "failed", "skipped", "cancelled")
READY_TOPIC = "bench.ready"  # (prefixed per run) where ready_producer's one record goes


def ready_producer(settings: Settings) -> KafkaProducer:
    """A producer as a running worker's stage has one: past its start, so what is timed is the work.

    A producer built just now delivers nothing for its first ~0.5 s: librdkafka's idempotent producer asks a
    broker for its producer id when it is built, finds no connection up yet, and retries on a fixed 500 ms timer
    (``rd_kafka_idemp_pid_timer_restart``; measured 506-513 ms from construction to the first acknowledged
    record, 6 ms without idempotence). A worker pays that once, when it starts; timed in a scenario, it was a
    fifth of the expansion of 100,000 recipients. So this returns once one record (on a topic of the run's own,
    ``READY_TOPIC``, deleted with the run's topics) is acknowledged."""
    ensure_topics(settings.kafka, [TopicSpec(READY_TOPIC, 1)], timeout=120)
    producer = KafkaProducer(settings.kafka)
    try:
        producer.produce(settings.kafka.topic(READY_TOPIC), None, b"ready")
        producer.flush(30.0)
    except BaseException:
        producer.close()
        raise
    return producer


# The worker's stages in the e2e runs; ``BENCH_STAGES`` overrides them (e.g. ``python -m bench.compare
# HEAD+BENCH_STAGES=...``).
DEFAULT_STAGES = "scheduler,expander,senders,tally,completion"


def _stages() -> str:
    return os.environ.get("BENCH_STAGES", "").strip() or DEFAULT_STAGES


def _worker(
    env: BenchEnv,
    prefix: str,
    tag: str,
    *,
    first_id: int = 0,
    count: int = 0,
    channel: str = "email",
    extra_env: dict[str, str] | None = None,
) -> tuple[Subprocess, Path]:
    name = f"{tag}-{prefix.strip('.')}"
    report = env.log_dir / f"{name}.json"
    sub = Subprocess(
        [
            python(),
            "-m",
            "bench.worker_proc",
            "--stages",
            _stages(),
            "--channels",
            channel,
            "--no-rate-limits",
            "--first-id",
            str(first_id),
            "--count",
            str(count),
            "--report",
            str(report),
        ],
        env.child_env(prefix, **(extra_env or {})),
        env.log_dir / f"{name}.log",
    )
    return sub, report


def _ready(env: BenchEnv, prefix: str, channel: str, sub: Subprocess) -> None:
    settings = env.settings(prefix)
    stages = _stages().split(",")
    groups = {f"{prefix}sender-{channel}": f"{prefix}campaign.messages.{channel}"}
    if "tally" in stages:  # the Faust app (its group, on the batches) and its forwarder (on the outcomes)
        groups[f"{prefix}{TALLY_GROUP}"] = f"{prefix}{OUTCOME_BATCHES}"
        groups[f"{prefix}{TALLY_FORWARDER_GROUP}"] = f"{prefix}{OUTCOMES}"
    try:
        wait_groups_ready(settings, groups, timeout=90)
    except TimeoutError:
        raise RuntimeError(f"worker not ready; its log ends:\n{sub.tail()}") from None


def e2e_run(
    env: BenchEnv,
    n: int,
    batch: int,
    *,
    workers: int = 1,
    sender_batch: int | None = None,
    worker_env: dict[str, str] | None = None,
    profile: bool = False,
) -> dict[str, Any]:
    """One campaign of ``n`` recipients through ``workers`` fresh worker processes; figures and checks.

    ``sender_batch`` overrides ``CAMPAIGNS_SENDER__BATCH_SIZE`` for the workers; ``worker_env`` adds any other
    environment (settings, or ``BENCH_PRODUCER_OVERRIDES``, see ``bench.worker_proc``). ``profile``: sample the
    (first) worker with py-spy from activation to completion and PostgreSQL's active statements; the
    collapsed stacks go to ``bench/results/logs/profile-*.txt``."""
    plan, segment = env.audience(n)
    env.reset_tables()
    prefix = env.new_prefix("e2e")
    settings = env.settings(prefix)
    ensure_topics(settings.kafka, topic_specs(settings), timeout=120)
    extra = dict(worker_env or {})
    if sender_batch:
        extra["CAMPAIGNS_SENDER__BATCH_SIZE"] = str(sender_batch)
    subs = [_worker(env, prefix, f"e2e-w{i}", first_id=plan.first_id, count=n, extra_env=extra) for i in range(workers)]
    for sub, _ in subs:
        sub.start()
    codes: list[int | None] = []
    try:
        for sub, _ in subs:
            _ready(env, prefix, "email", sub)
        campaign = env.create_campaign(channel="email", batch_size=batch, segment=segment, name=f"e2e-{n}")
        first = subs[0][0]
        spy = _py_spy(env, first.pid, f"e2e-{n}x{batch}-{prefix.strip('.')}") if profile else None
        pg = PgSampler(env) if profile else None
        meter = CpuMeter(env.dbname, [sub.pid for sub, _ in subs])
        meter.start()
        env.schedule(campaign)
        env.wait_finished([campaign], timeout=max(300.0, n / 500), alive=lambda: all(sub.alive() for sub, _ in subs))
        # The analytics' last outcomes are part of the work: the CPU meter runs until they are counted.
        analytics_after_s = env.wait_analytics(campaign, timeout=120.0,
                                              alive=lambda: all(sub.alive() for sub, _ in subs))
        cpu = meter.stop()
        # Each worker's own peak and its Faust analytics child's (a process of its own, with its own memory).
        rss = [family_peak_rss_mb(sub.pid) for sub, _ in subs]
        peak_rss = max(own for own, _ in rss)
        analytics_rss = max((child for _, child in rss if child is not None), default=None)
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(60)
        pg_profile = pg.stop() if pg is not None else None
    finally:
        codes = [sub.stop(timeout=60) for sub, _ in subs]
        delete_run_topics(settings, prefix)
    reports = [read_json(path) for _, path in subs]
    transports = [r.get("transports", {}).get("email", {}) for r in reports]
    row = env.campaign_row(campaign)
    counts = env.log_counts(campaign)
    totals = env.analytics_totals(campaign)
    elapsed = (row["finished_at"] - row["activated_at"]).total_seconds()
    total = row["total_recipients"] or 0
    firsts = [t["first_call_at"][str(campaign)] for t in transports if str(campaign) in t.get("first_call_at", {})]
    result = {
        "n": n,
        "batch": batch,
        "workers": workers,
        "sender_batch": sender_batch or env.base.sender.batch_size,
        "worker_env": extra,
        "campaign_id": str(campaign),
        "status": row["status"],
        "total_recipients": total,
        "elapsed_s": elapsed,
        "recipients_per_s": total / elapsed if elapsed else None,
        "first_send_after_activation_s": min(firsts) - row["activated_at"].timestamp() if firsts else None,
        "analytics_after_completion_s": analytics_after_s,
        "peak_rss_mb": peak_rss,
        "analytics_peak_rss_mb": analytics_rss,
        **cpu,
        "worker_cpu_s_per_1k": cpu["worker_cpu_s"] / total * 1000 if total else None,
        "postgres_cpu_s_per_1k": cpu["postgres_cpu_s"] / total * 1000 if total else None,
        "log_counts": counts,
        "analytics": totals,
        "transport_calls": sum(t.get("calls", 0) for t in transports),
        # Duplicates within one worker's transport, plus any recipient sent by two workers (calls > rows).
        "transport_duplicates": sum(t.get("duplicates", 0) for t in transports)
        + max(0, sum(t.get("distinct_recipients", 0) for t in transports) - counts.get("sent", 0)),
        "worker_errors": [e for r in reports for e in r.get("errors", [])],
        "worker_exit": codes,
    }
    if profile:
        result["postgres_active_samples"] = pg_profile
    result["checks"] = _checks(result)
    return result


class PgSampler:
    """A sampling profiler for PostgreSQL: which statements of our database are running, every 10 ms.

    ``pg_stat_statements`` needs a server restart to load; this needs nothing, and its sample counts are
    proportional to the time backends spend in each statement (waiting for a lock included)."""

    def __init__(self, env: BenchEnv, interval_s: float = 0.01) -> None:
        import threading
        from collections import Counter

        self._env = env
        self._interval = interval_s
        self._stop = threading.Event()
        self.samples: Counter[str] = Counter()
        self.ticks = 0
        self._thread = threading.Thread(target=self._run, name="pg-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        conn = self._env.connect()
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                while not self._stop.wait(self._interval):
                    cur.execute(
                        "SELECT left(regexp_replace(query, '\\s+', ' ', 'g'), 90), wait_event_type "
                        "FROM pg_stat_activity WHERE datname = current_database() AND state = 'active' "
                        "AND pid <> pg_backend_pid()"
                    )
                    self.ticks += 1
                    for query, wait in cur.fetchall():
                        self.samples[f"{query}{' [wait ' + wait + ']' if wait else ''}"] += 1
        finally:
            conn.close()

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        self._thread.join(10)
        return {"ticks": self.ticks, "interval_s": self._interval, "top": self.samples.most_common(15)}


def _py_spy(env: BenchEnv, pid: int, tag: str) -> subprocess.Popen[bytes] | None:
    # The venv's own bin directory first: `.venv/bin/python -m bench` runs without the venv on PATH.
    beside = Path(sys.executable).with_name("py-spy")
    exe = str(beside) if beside.exists() else shutil.which("py-spy")
    if exe is None:  # asked for a profile: a run without one would be mistaken for one
        raise RuntimeError("--profile needs py-spy: pip install -e '.[bench]' (make bench does)")
    out = env.log_dir / f"profile-{tag}.txt"
    log.info("profiling the worker into %s", out)
    return subprocess.Popen(  # noqa: S603 - our own arguments, no shell
        [
            exe,
            "record",
            "--pid",
            str(pid),
            "--format",
            "raw",
            "--rate",
            "97",
            "--output",
            str(out),
            "--nonblocking",
            "--subprocesses",  # the Faust analytics child (the tally stage) too
            "--gil",  # only the thread holding the GIL: where the worker's Python CPU goes, not who waits
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _checks(r: dict[str, Any]) -> dict[str, bool]:
    counts = r["log_counts"]
    terminal = sum(counts.get(s, 0) for s in TERMINAL)
    return {
        "completed": r["status"] == "completed",
        "every_recipient_terminal": terminal == r["total_recipients"] == sum(counts.values()) > 0,
        "no_duplicate_sends": r["transport_duplicates"] == 0,
        "one_call_per_sent_row": r["transport_calls"] == counts.get("sent", 0),
        "analytics_equal_log": all(r["analytics"].get(s, 0) == counts.get(s, 0) for s in TERMINAL),
    }


def latency_run(env: BenchEnv, campaigns: int = 10, recipients: int = 50, spacing_s: float = 0.7) -> dict[str, Any]:
    """Small campaigns with start times in the near future; first provider call minus ``start_at``."""
    plan, _segment = env.audience(10_000)
    env.reset_tables()
    prefix = env.new_prefix("lat")
    settings = env.settings(prefix)
    ensure_topics(settings.kafka, topic_specs(settings), timeout=120)
    sub, report_path = _worker(env, prefix, "latency", first_id=plan.first_id, count=plan.customers)
    sub.start()
    ids: list[uuid.UUID] = []
    starts: dict[str, datetime] = {}
    try:
        _ready(env, prefix, "email", sub)
        # Eligible recipients only, so the first page always has something to send.
        eligible = [c for c in plan.ids() if c % 50 and c % 97]
        created = [
            env.create_campaign(
                channel="email",
                batch_size=1000,
                name=f"lat-{i}",
                manual=eligible[i * recipients : (i + 1) * recipients],
            )
            for i in range(campaigns)
        ]
        base = datetime.now(UTC) + timedelta(seconds=2)
        for i, cid in enumerate(created):
            start = base + timedelta(seconds=i * spacing_s)
            env.schedule(cid, start)
            ids.append(cid)
            starts[str(cid)] = start
        env.wait_finished(ids, timeout=120, alive=sub.alive)
    finally:
        sub.stop(timeout=60)
        delete_run_topics(settings, prefix)
    first = read_json(report_path).get("transports", {}).get("email", {}).get("first_call_at", {})
    samples, activation = [], []
    for cid in ids:
        row = env.campaign_row(cid)
        activation.append((row["activated_at"] - starts[str(cid)]).total_seconds())
        if str(cid) in first:
            samples.append(first[str(cid)] - starts[str(cid)].timestamp())
    return {
        "campaigns": campaigns,
        "recipients_each": recipients,
        "latency_s": samples,
        "activation_lag_s": activation,
        "p50_s": percentile(samples, 50),
        "p99_s": percentile(samples, 99),
        "max_s": max(samples) if samples else None,
        "checks": {"every_campaign_sent": len(samples) == campaigns},
    }


def expansion_run(env: BenchEnv, n: int, batch: int) -> dict[str, Any]:
    """The expander alone (this process, one thread): recipients/s from the database into Kafka."""
    _plan, segment = env.audience(n)
    env.reset_tables()
    prefix = env.new_prefix("exp")
    settings = env.settings(prefix)
    ensure_topics(settings.kafka, topic_specs(settings), timeout=120)
    producer = ready_producer(settings)
    expander = Expander(settings, producer)
    try:
        campaign = env.create_campaign(channel="email", batch_size=batch, segment=segment, name=f"exp-{n}")
        env.schedule(campaign, datetime.now(UTC) - timedelta(milliseconds=1))
        assert env.service is not None
        env.service.activate_due()
        cpu0, t0 = time.thread_time(), time.perf_counter()
        expander.run_once()
        # This thread's CPU and its page reader's (pages are read ahead on a thread of their own).
        elapsed, cpu = time.perf_counter() - t0, time.thread_time() - cpu0 + expander.reads_cpu_s
    finally:
        expander.close()
        producer.close()
        delete_run_topics(settings, prefix)
    row = env.campaign_row(campaign)
    total = row["total_recipients"] or 0
    return {
        "n": n,
        "batch": batch,
        "elapsed_s": elapsed,
        "recipients_per_s": total / elapsed,
        "messages_produced": expander.expanded,
        "messages_per_s": expander.expanded / elapsed,
        "expander_cpu_s": cpu,
        "checks": {"expansion_done": bool(row["expansion_done"]), "all_recipients": total == n},
    }


def simulator_run(env: BenchEnv, n: int, channel: str = "sms", batch: int = 1000) -> dict[str, Any]:
    """The production worker entry point (``python -m streams.worker``) sending over HTTP to the simulator."""
    import json
    import urllib.request

    _plan, segment = env.audience(n)
    env.reset_tables()
    prefix = env.new_prefix("sim")
    settings = env.settings(prefix)
    ensure_topics(settings.kafka, topic_specs(settings), timeout=120)
    http_port, smtp_port = free_port(), free_port()
    base = f"http://127.0.0.1:{http_port}"
    child = env.child_env(
        prefix,
        CAMPAIGNS_PROVIDERS__SMS_BASE_URL=f"{base}/sms",
        CAMPAIGNS_PROVIDERS__WHATSAPP_BASE_URL=f"{base}/whatsapp",
        CAMPAIGNS_PROVIDERS__SMTP_PORT=str(smtp_port),
    )
    tag = prefix.strip(".")
    simulator = Subprocess(
        [
            python(),
            "-m",
            "simulator",
            "--http-port",
            str(http_port),
            "--smtp-port",
            str(smtp_port),
            "--log-level",
            "warning",
            # Free-form WhatsApp text to a seeded audience that never wrote in (--sim-channel whatsapp).
            "--open-service-window",
        ],
        child,
        env.log_dir / f"simulator-{tag}.log",
    )
    worker = Subprocess(
        [
            python(),
            "-m",
            "streams.worker",
            "--stages",
            _stages(),
            "--channels",
            channel,
            "--no-rate-limits",
        ],
        child,
        env.log_dir / f"sim-worker-{tag}.log",
    )

    def stats() -> dict[str, Any]:
        with urllib.request.urlopen(f"{base}/_control/stats", timeout=10) as resp:  # noqa: S310 - loopback
            return json.loads(resp.read())[channel]

    simulator.start()
    try:
        wait_for(lambda: _http_ok(f"{base}/_control/health"), timeout=30, what="the provider simulator")
        worker.start()
        try:
            _ready(env, prefix, channel, worker)
            campaign = env.create_campaign(channel=channel, batch_size=batch, segment=segment, name=f"sim-{n}")
            meter = CpuMeter(env.dbname, [worker.pid, simulator.pid])
            meter_worker = CpuMeter(env.dbname, [worker.pid])
            meter.start()
            meter_worker.start()
            env.schedule(campaign)
            env.wait_finished([campaign], timeout=max(300.0, n / 100), alive=worker.alive)
            cpu, cpu_worker = meter.stop(), meter_worker.stop()
            peak_rss, analytics_rss = family_peak_rss_mb(worker.pid)
            sim_stats = stats()
        finally:
            worker.stop(timeout=60)
    finally:
        simulator.stop()
        delete_run_topics(settings, prefix)
    row = env.campaign_row(campaign)
    counts = env.log_counts(campaign)
    elapsed = (row["finished_at"] - row["activated_at"]).total_seconds()
    total = row["total_recipients"] or 0
    return {
        "n": n,
        "channel": channel,
        "batch": batch,
        "status": row["status"],
        "total_recipients": total,
        "elapsed_s": elapsed,
        "recipients_per_s": total / elapsed,
        "messages_per_s": counts.get("sent", 0) / elapsed,
        "worker_cpu_s": cpu_worker["worker_cpu_s"],
        "simulator_cpu_s": cpu["worker_cpu_s"] - cpu_worker["worker_cpu_s"],
        "postgres_cpu_s": cpu["postgres_cpu_s"],
        "machine_util": cpu["machine_util"],
        "peak_rss_mb": peak_rss,
        "analytics_peak_rss_mb": analytics_rss,
        "log_counts": counts,
        "simulator": sim_stats,
        "checks": {
            "completed": row["status"] == "completed",
            "every_recipient_terminal": sum(counts.get(s, 0) for s in TERMINAL) == total > 0,
            "no_duplicates_at_provider": sim_stats.get("duplicates") == 0,
            "accepted_equals_sent": sim_stats.get("accepted") == counts.get("sent", 0),
        },
    }


def _http_ok(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 - loopback
            return bool(resp.status == 200)
    except OSError:
        return False


def python_client_ceiling(env: BenchEnv, records: int) -> dict[str, Any]:
    """confluent-kafka from Python on this broker: produce encoded RecipientMessages, then consume+decode."""
    from confluent_kafka import Consumer

    prefix = env.new_prefix("cli")
    settings = env.settings(prefix)
    ensure_topics(settings.kafka, topic_specs(settings), timeout=120)
    topic = settings.kafka.topic(messages_topic("email"))
    codec = get_codec()
    record = dict(SAMPLE_MESSAGE, message_id=str(uuid.uuid4()), campaign_id=str(uuid.uuid4()),
                  created_at=int(time.time() * 1000))
    value = codec.encode("RecipientMessage", record)
    producer = ready_producer(settings)
    try:
        t0 = time.perf_counter()
        for i in range(records):
            producer.produce(topic, str(10_000_000 + i), value)
        producer.flush()
        produce_s = time.perf_counter() - t0
        consumer = Consumer(
            settings.kafka.as_librdkafka(
                **{
                    "group.id": f"{prefix}ceiling",
                    "auto.offset.reset": "earliest",
                    "enable.auto.commit": False,
                }
            )
        )
        consumer.subscribe([topic])
        got, t0, started = 0, time.perf_counter(), None
        deadline = time.monotonic() + 120
        while got < records and time.monotonic() < deadline:
            batch = consumer.consume(1000, timeout=0.5)
            if batch and started is None:
                started = time.perf_counter()
            for msg in batch:
                if msg.error() is None:
                    codec.decode(msg.value(), "RecipientMessage")
                    got += 1
        consume_s = time.perf_counter() - (started or t0)
        consumer.close()
    finally:
        producer.close()
        delete_run_topics(settings, prefix)
    return {
        "records": records,
        "record_bytes": len(value),
        "produce_per_s": records / produce_s,
        "consume_decode_per_s": got / consume_s if consume_s else None,
    }
