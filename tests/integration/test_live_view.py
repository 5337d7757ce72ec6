"""The Faust live view (``streams/live.py``) on the real broker: a worker subprocess keeps the newest
``campaign.analytics`` rows in its windowed tables and serves them on ``GET /campaigns/{id}/live``; after a restart the
tables come back from their changelog topics."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from confluent_kafka import Producer

from campaigns.codec import get_codec
from campaigns.core.windows import window_bounds
from campaigns.settings import AnalyticsSettings, Settings
from producers.topics import ANALYTICS, ensure_topics
from streams.live import key_partition, source_topic_spec
from tests.helpers import wait_for

pytestmark = pytest.mark.kafka

REPO_ROOT = Path(__file__).resolve().parents[2]
WINDOW_S = 60
PARTITIONS = 3
COUNTERS = ("sent", "failed", "retried", "skipped", "delivered")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LiveWorker:
    """``python -m streams.live worker -l info`` as a subprocess, started and stopped by the test."""

    env: dict[str, str]
    port: int
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    def start(self) -> None:
        self.starts += 1
        log = self.log_path.with_suffix(f".{self.starts}.log").open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streams.live", "worker", "-l", "info"],
            env=self.env, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
        )
        log.close()

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def log_tail(self) -> str:
        path = self.log_path.with_suffix(f".{self.starts}.log")
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def get(self, path: str, **params: Any) -> httpx.Response | None:
        assert self.proc is not None and self.proc.poll() is None, f"the live worker died:\n{self.log_tail()}"
        try:
            return httpx.get(f"http://127.0.0.1:{self.port}{path}", params=params, timeout=2.0)
        except httpx.TransportError:
            return None  # not listening yet

    def live(self, campaign_id: str, at: float) -> dict[str, Any] | None:
        response = self.get(f"/campaigns/{campaign_id}/live", at=f"{at:.3f}")
        if response is None or response.status_code == 503:  # starting, or recovering its tables
            return None
        assert response.status_code == 200, response.text
        return response.json()


@dataclass
class Expected:
    """What the test published: the running counts of each window and of each campaign, as the analytics'
    rows carry them (absolute), and how many rows."""

    totals: dict[str, dict[str, int]] = field(default_factory=dict)
    windows: dict[tuple[str, datetime], dict[str, int]] = field(default_factory=dict)
    rows: int = 0

    def add(self, campaign_id: str, window_start: datetime, counts: dict[str, int]) -> tuple[dict, dict]:
        """Add ``counts`` to the window and the totals; their rows as they are now."""
        window = self.windows.setdefault((campaign_id, window_start), {})
        totals = self.totals.setdefault(campaign_id, {})
        for bucket in (window, totals):
            for name, n in counts.items():
                bucket[name] = bucket.get(name, 0) + n
        return dict(window), dict(totals)


@pytest.fixture
def live_env(kafka_settings, topic_prefix, tmp_path) -> Iterator[tuple[LiveWorker, Settings]]:
    settings = Settings(
        kafka=kafka_settings.model_copy(update={"topic_prefix": topic_prefix, "partitions": PARTITIONS}),
        analytics=AnalyticsSettings(window_s=WINDOW_S),
    )
    port = _free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "CAMPAIGNS_KAFKA__BOOTSTRAP_SERVERS": kafka_settings.bootstrap_servers,
        "CAMPAIGNS_KAFKA__TOPIC_PREFIX": topic_prefix,
        "CAMPAIGNS_KAFKA__PARTITIONS": str(PARTITIONS),
        "CAMPAIGNS_ANALYTICS__WINDOW_S": str(WINDOW_S),
        "CAMPAIGNS_LIVE__WEB_PORT": str(port),
        "CAMPAIGNS_LIVE__DATADIR": str(tmp_path / "faust-data"),
        "CAMPAIGNS_LIVE__BATCH_WITHIN_S": "0.2",
    }
    worker = LiveWorker(env=env, port=port, log_path=tmp_path / "live-worker")
    try:
        yield worker, settings
    finally:
        worker.stop()


class AnalyticsProducer:
    """Publishes campaign.analytics rows like the analytics do (librdkafka, key = campaign id): after each
    change of a window, that window's row and the campaign's totals row, both absolute."""

    def __init__(self, settings: Settings, expected: Expected) -> None:
        self.topic = settings.kafka.topic(ANALYTICS)
        self.producer = Producer(settings.kafka.as_librdkafka(**{"enable.idempotence": True}))
        self.expected = expected
        self.placement: dict[str, set[int]] = {}
        self.codec = get_codec()
        self.latency_max: dict[str | tuple[str, datetime], float] = {}

    def batch(self, campaign_id: str, window_start: datetime, n: int, **per_record: int) -> None:
        for i in range(n):
            counts = {name: value + i % 3 for name, value in per_record.items()}
            window, totals = self.expected.add(campaign_id, window_start, counts)
            for start, row in ((window_start, window), (None, totals)):
                key = campaign_id if start is None else (campaign_id, start)
                self.latency_max[key] = max(self.latency_max.get(key, 0.0), 40.0 + i)
                value = self.codec.encode("CampaignAnalytics", {
                    "campaign_id": campaign_id, "window_start": start,
                    "window_end": None if start is None else start + timedelta(seconds=WINDOW_S), **row,
                    "latency_count": row.get("sent", 0), "latency_sum_ms": 2.0 * row.get("sent", 0),
                    "latency_max_ms": self.latency_max[key], "updated_at": datetime.now(UTC),
                })
                self.producer.produce(self.topic, value, campaign_id, on_delivery=self._delivered)
                self.expected.rows += 1
        assert self.producer.flush(30) == 0

    def _delivered(self, err: Any, msg: Any) -> None:
        assert err is None, err
        self.placement.setdefault(msg.key().decode(), set()).add(msg.partition())


def _matches(view: dict[str, Any] | None, expected: Expected, campaign_id: str,
             current: datetime, previous: datetime) -> bool:
    if view is None:
        return False
    want_totals = expected.totals[campaign_id]
    want_current = expected.windows.get((campaign_id, current), {})
    want_previous = expected.windows.get((campaign_id, previous), {})
    return (
        all(view["totals"][name] == want_totals.get(name, 0) for name in COUNTERS)
        and all(view["current_window"][name] == want_current.get(name, 0) for name in COUNTERS)
        and all(view["previous_window"][name] == want_previous.get(name, 0) for name in COUNTERS)
    )


def _wait_for_view(worker: LiveWorker, expected: Expected, campaigns: list[str], at: float,
                   current: datetime, previous: datetime, timeout: float) -> dict[str, dict[str, Any]]:
    views: dict[str, dict[str, Any]] = {}

    def all_match() -> bool:
        for cid in campaigns:
            view = worker.live(cid, at)
            if not _matches(view, expected, cid, current, previous):
                return False
            assert view is not None
            views[cid] = view
        return True

    try:
        wait_for(all_match, timeout=timeout, interval=0.2, what="the live view to report the summed counts")
    except AssertionError:
        last = {cid: worker.live(cid, at) for cid in campaigns}
        raise AssertionError(f"expected {expected}\nlast views {last}\nworker log:\n{worker.log_tail()}") from None
    return views


def _windows_now() -> tuple[float, datetime, datetime]:
    """A reference time inside the current window (so that window and the previous one exist), pinned for
    the whole test: passing it as ``at`` keeps the view's 'current' stable across a window boundary."""
    now = datetime.now(UTC)
    current, _ = window_bounds(now, WINDOW_S)
    return now.timestamp(), current, current - timedelta(seconds=WINDOW_S)


def test_live_view_sums_batches_per_campaign_and_window(live_env) -> None:
    worker, settings = live_env
    ensure_topics(settings.kafka, [source_topic_spec(settings)])
    expected = Expected()
    producer = AnalyticsProducer(settings, expected)
    at, current, previous = _windows_now()
    alpha, beta = str(uuid.uuid4()), str(uuid.uuid4())

    # Records already in the topic when the worker starts (it reads from the earliest offset) ...
    producer.batch(alpha, previous, 20, sent=5, failed=1)
    producer.batch(beta, previous, 10, sent=2, skipped=3)
    worker.start()
    _wait_for_view(worker, expected, [alpha, beta], at, current, previous, timeout=40)

    # ... and batches arriving while it runs, in both windows.
    producer.batch(alpha, current, 30, sent=7, retried=2, delivered=4)
    producer.batch(beta, current, 15, sent=1, failed=2)
    producer.batch(alpha, previous, 5, sent=3)
    views = _wait_for_view(worker, expected, [alpha, beta], at, current, previous, timeout=15)

    a = views[alpha]
    assert a["seen"] is True and a["window_s"] == WINDOW_S
    assert a["current_window"]["start"] == current.isoformat().replace("+00:00", "Z")
    assert a["sends_per_s"] == expected.windows[(alpha, previous)]["sent"] / WINDOW_S
    assert a["totals"]["latency_max_ms"] == 40.0 + 29  # the largest record's max
    assert a["totals"]["latency_mean_ms"] == 2.0

    # The view finds a campaign's partition the way librdkafka placed it.
    assert producer.placement == {
        cid: {key_partition(cid, PARTITIONS)} for cid in (alpha, beta)
    }
    stats = worker.get("/live/stats")
    assert stats is not None and stats.status_code == 200
    body = stats.json()
    assert body["records"] == expected.rows and body["undecodable"] == 0
    # One table update per (campaign, window) per batch, not one per record.
    assert body["window_updates"] < body["records"]
    bad = worker.get(f"/campaigns/{alpha}/live", at="yesterday")
    assert bad is not None and bad.status_code == 400


def test_tables_are_recovered_from_the_changelog_after_a_restart(live_env) -> None:
    worker, settings = live_env
    expected = Expected()
    producer = AnalyticsProducer(settings, expected)
    at, current, previous = _windows_now()
    alpha, beta = str(uuid.uuid4()), str(uuid.uuid4())

    worker.start()  # main() creates the source and changelog topics before the worker starts
    try:
        wait_for(lambda: worker.live(alpha, at), timeout=30, interval=0.2, what="the live worker to be ready")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nworker log:\n{worker.log_tail()}") from None
    producer.batch(alpha, previous, 12, sent=4, failed=1)
    producer.batch(alpha, current, 8, sent=6)
    producer.batch(beta, current, 10, sent=1, skipped=2)
    before = _wait_for_view(worker, expected, [alpha, beta], at, current, previous, timeout=15)

    # A clean stop commits the source offsets: the new worker re-reads nothing, so what it serves came from
    # the changelog topics.
    worker.stop(signal.SIGTERM)
    worker.start()
    after = _wait_for_view(worker, expected, [alpha, beta], at, current, previous, timeout=40)
    for cid in (alpha, beta):
        for part in ("totals", "current_window", "previous_window"):
            assert after[cid][part] == before[cid][part]
    stats = worker.get("/live/stats")
    assert stats is not None and stats.json()["records"] == stats.json()["stale"] == 0

    # A crash (SIGKILL right after a batch) may leave offsets uncommitted: the re-delivered rows are no newer
    # than the kept ones and change nothing.
    producer.batch(beta, previous, 6, sent=9)
    _wait_for_view(worker, expected, [alpha, beta], at, current, previous, timeout=15)
    worker.stop(signal.SIGKILL)
    worker.start()
    final = _wait_for_view(worker, expected, [alpha, beta], at, current, previous, timeout=40)
    assert final[beta]["totals"]["sent"] == expected.totals[beta]["sent"]
    stats = worker.get("/live/stats")
    assert stats is not None and stats.json()["stale"] <= stats.json()["records"]


def test_two_workers_split_the_campaigns_and_redirect_to_the_owner(live_env, tmp_path) -> None:
    worker, settings = live_env
    port = _free_port()
    other = LiveWorker(env={**worker.env, "CAMPAIGNS_LIVE__WEB_PORT": str(port),
                            "CAMPAIGNS_LIVE__DATADIR": str(tmp_path / "faust-data-2")},
                       port=port, log_path=tmp_path / "live-worker-2")
    expected = Expected()
    producer = AnalyticsProducer(settings, expected)
    at, current, previous = _windows_now()
    campaigns: list[str] = []
    while len(campaigns) < 2 * PARTITIONS:  # two campaigns in every partition, so both workers own some
        cid = str(uuid.uuid4())
        if sum(key_partition(c, PARTITIONS) == key_partition(cid, PARTITIONS) for c in campaigns) < 2:
            campaigns.append(cid)

    def answers(w: LiveWorker, cid: str) -> httpx.Response | None:
        response = w.get(f"/campaigns/{cid}/live", at=f"{at:.3f}")
        return response if response is not None and response.status_code in (200, 307) else None

    worker.start()
    other.start()
    try:
        # The group has settled when each worker serves some campaigns and redirects the rest.
        wait_for(lambda: all(answers(w, cid) for w in (worker, other) for cid in campaigns)
                 and all({answers(w, cid).status_code for cid in campaigns} == {200, 307} for w in (worker, other)),
                 timeout=45, interval=0.3, what="two workers to split the partitions")
        for cid in campaigns:
            producer.batch(cid, current, 5, sent=2, failed=1)

        def served_everywhere() -> bool:
            for w in (worker, other):
                for cid in campaigns:
                    response = answers(w, cid)
                    if response is not None and response.status_code == 307:  # owned by the other worker
                        response = httpx.get(response.headers["location"], timeout=2.0)
                    if response is None or response.status_code != 200 or not _matches(
                            response.json(), expected, cid, current, previous):
                        return False
            return True

        wait_for(served_everywhere, timeout=20, interval=0.3, what="both workers to serve every campaign")
        updates = {w.port: w.get("/live/stats").json()["totals_updates"] for w in (worker, other)}
        assert all(updates.values()), f"each worker counts the campaigns of its own partitions: {updates}"
    finally:
        other.stop()
