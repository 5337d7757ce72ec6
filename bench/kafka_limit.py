"""The broker's own limit: Kafka's ``ProducerPerformance`` and ``ConsumerPerformance`` (kafka-tools 4.4.0,
from ``ops/kafka/.cache/libs``) against the same broker, with records of the pipeline's size.

Producer settings mirror the pipeline's ``KafkaProducer`` (acks=all, idempotence, linger 5 ms); the payload
is random bytes, so compression is off (lz4 on random bytes only costs CPU). One topic with the pipeline's
partition count, created for the run and deleted after.
"""

from __future__ import annotations

import re
import subprocess
from typing import Any

from confluent_kafka.admin import AdminClient, NewTopic

from .env import REPO_ROOT, BenchEnv, CpuMeter, delete_run_topics

LIBS = REPO_ROOT / "ops" / "kafka" / ".cache" / "libs"


def _java(tool: str, args: list[str], timeout: float) -> str:
    cmd = ["java", "-Xmx512m", "-cp", f"{LIBS}/*", f"org.apache.kafka.tools.{tool}", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT)  # noqa: S603
    if done.returncode != 0:
        raise RuntimeError(f"{tool} failed ({done.returncode}): {done.stderr.strip()[-800:]}")
    return done.stdout


def run(env: BenchEnv, records: int, record_size: int = 250) -> dict[str, Any]:
    if not LIBS.is_dir():
        raise RuntimeError(f"{LIBS} missing: run `ops/kafka/kafka.sh fetch` (or `make services`)")
    prefix = env.new_prefix("limit")
    settings = env.settings(prefix)
    topic = settings.kafka.topic("perf")
    bootstrap = settings.kafka.bootstrap_servers
    admin = AdminClient(settings.kafka.as_librdkafka())
    admin.create_topics([NewTopic(topic, settings.kafka.partitions, 1)])[topic].result(30)
    meter = CpuMeter(env.dbname)
    try:
        meter.start()
        out = _java(
            "ProducerPerformance",
            [
                "--topic",
                topic,
                "--num-records",
                str(records),
                "--record-size",
                str(record_size),
                "--throughput",
                "-1",
                "--producer-props",
                f"bootstrap.servers={bootstrap}",
                "acks=all",
                "enable.idempotence=true",
                "linger.ms=5",
                "batch.size=262144",
                "compression.type=none",
            ],
            timeout=600,
        )
        produce_cpu = meter.stop()
        summary = [line for line in out.splitlines() if "records sent" in line][-1]
        produce = float(re.search(r"([\d.]+) records/sec", summary).group(1))  # type: ignore[union-attr]
        produce_mb = float(re.search(r"\(([\d.]+) MB/sec\)", summary).group(1))  # type: ignore[union-attr]
        meter.start()
        out = _java(
            "ConsumerPerformance",
            [
                "--bootstrap-server",
                bootstrap,
                "--topic",
                topic,
                "--messages",
                str(records),
                "--group",
                f"{prefix}perf-consumer",
                "--timeout",
                "60000",
            ],
            timeout=600,
        )
        consume_cpu = meter.stop()
        lines = [line for line in out.splitlines() if line.strip()]
        header = [h.strip() for h in lines[-2].split(",")]
        values = [v.strip() for v in lines[-1].split(",")]
        row = dict(zip(header, values, strict=False))
        consume = float(row.get("nMsg.sec", "nan"))
        fetch = float(row.get("fetch.nMsg.sec", "nan"))
    finally:
        delete_run_topics(settings, prefix)
    return {
        "records": records,
        "record_size": record_size,
        "producer_records_per_s": produce,
        "producer_mb_per_s": produce_mb,
        "consumer_records_per_s": consume,
        "consumer_fetch_records_per_s": fetch,
        "producer_summary": summary.strip(),
        # The broker's CPU per 1,000 records while each tool ran (the same broker serves other clients too).
        "broker_cpu_s_per_1k_produced": produce_cpu.get("kafka_cpu_s", 0) / records * 1000,
        "broker_cpu_s_per_1k_consumed": consume_cpu.get("kafka_cpu_s", 0) / records * 1000,
        "machine_util": produce_cpu["machine_util"],
    }
