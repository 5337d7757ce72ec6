"""The dashboard's live feed: ONE poller thread per server, fanned out to every server-sent-events client.

Each ``poll_interval_s`` (1 s) while at least one viewer is connected, the poller reads, in one transaction:
the campaigns the dashboard lists (every unfinished one, and those finished in the last hour), their
``campaign_analytics`` totals rows, and the windows of the campaigns whose page someone is watching; and it
reads the new records of ``campaign.messages.dlq`` (an assigned consumer that keeps its position, so each dead
letter is decoded once per server) to count dead letters per campaign. From two snapshots it derives the send
rate. The snapshot goes to every subscriber's one-slot queue (a slow viewer skips snapshots, never
accumulates them). So the database sees one poll per interval whatever the number of viewers, and none when
nobody watches. ``campaign_analytics`` is the source: it is the authoritative, exactly-once count (the Faust
live view is a recoverable copy of it, and may not be running).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from api import queries
from campaigns.db.engine import transaction
from campaigns.settings import Settings
from campaigns.topics import MESSAGES_DLQ

log = logging.getLogger("campaigns.api.live")
RATE_SPAN_S = 10.0  # the send rate is measured over the last this many seconds


class DeadLetterCounter:
    """Dead letters per campaign id, read incrementally from ``campaign.messages.dlq``."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._consumer: Any = None
        self.counts: dict[str, int] = {}

    def poll(self, budget_s: float = 0.3) -> dict[str, int]:
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        from campaigns.codec import get_codec
        from campaigns.errors import SchemaError

        topic = self._settings.kafka.topic(MESSAGES_DLQ)
        if self._consumer is None:
            consumer = Consumer(self._settings.kafka.as_librdkafka(**{
                "group.id": f"{self._settings.kafka.topic('api-dashboard')}-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False}))
            metadata = consumer.list_topics(topic, timeout=5).topics.get(topic)
            if metadata is None or metadata.error is not None:
                consumer.close()
                return self.counts
            consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in metadata.partitions])
            self._consumer = consumer
        codec = get_codec()
        deadline = time.monotonic() + budget_s
        while time.monotonic() < deadline:
            messages = self._consumer.consume(1000, timeout=0.05)
            if not messages:
                break
            for message in messages:
                if message.error() or message.value() is None:
                    continue
                try:
                    campaign = codec.decode(message.value(), "DeadLetter").get("campaign_id")
                except SchemaError:
                    continue
                if campaign:
                    self.counts[campaign] = self.counts.get(campaign, 0) + 1
        return self.counts

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None


@dataclass
class _Subscriber:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[dict[str, Any]]
    campaign_id: uuid.UUID | None


@dataclass
class _Rates:
    samples: dict[str, deque[tuple[float, int]]] = field(default_factory=dict)

    def rate(self, campaign_id: str, now: float, sent: int) -> float:
        history = self.samples.setdefault(campaign_id, deque())
        history.append((now, sent))
        while len(history) > 2 and now - history[0][0] > RATE_SPAN_S:
            history.popleft()
        first_at, first_sent = history[0]
        return round((sent - first_sent) / (now - first_at), 2) if now - first_at >= 0.5 else 0.0


def summarise(row: dict[str, Any], totals: dict[str, int], dead_letters: int, send_rate: float) -> dict[str, Any]:
    """A dashboard line: the campaign, its counts, progress, send rate, failure rate, retries, dead letters."""
    counts = {c: totals.get(c, 0) for c in queries.COUNTERS}
    done = sum(counts[c] for c in ("sent", "failed", "skipped", "cancelled"))
    expected = row["total_recipients"] if row["expansion_done"] and row["total_recipients"] else \
        row["expanded_recipients"]
    attempted = counts["sent"] + counts["failed"]
    return {**row, "counts": counts, "processed": done, "expected": expected,
            "progress": round(min(done / expected, 1.0), 4) if expected else (1.0 if row["status"] == "completed"
                                                                              else 0.0),
            "send_rate": send_rate, "failure_rate": round(counts["failed"] / attempted, 4) if attempted else 0.0,
            "retries": counts["retried"], "dead_letters": dead_letters}


class LiveFeed:
    def __init__(self, sessions: sessionmaker[Session], settings: Settings, *, interval_s: float) -> None:
        self._sessions = sessions
        self._settings = settings
        self._interval = interval_s
        self._subscribers: dict[int, _Subscriber] = {}
        self._ids = itertools.count()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._rates = _Rates()
        self._dead_letters = DeadLetterCounter(settings)
        self.polls = 0  # database polls so far (tests: one per interval, whatever the number of viewers)

    # --- subscribers (event loop side) -----------------------------------------------------------

    async def subscribe(self, campaign_id: uuid.UUID | None = None) -> AsyncIterator[dict[str, Any]]:
        """Snapshots for one viewer (the list, or one campaign's page) until the viewer goes away."""
        subscriber = _Subscriber(asyncio.get_running_loop(), asyncio.Queue(maxsize=1), campaign_id)
        with self._lock:
            key = next(self._ids)
            self._subscribers[key] = subscriber
            self._start()
        self._wake.set()
        try:
            while True:
                yield await subscriber.queue.get()
        finally:
            with self._lock:
                self._subscribers.pop(key, None)

    def _start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="api-live-poller", daemon=True)
            self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._dead_letters.close()

    # --- the poller (its own thread) -------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                subscribers = list(self._subscribers.values())
            if subscribers:
                try:
                    self._poll(subscribers)
                except Exception:
                    log.exception("dashboard poll failed; retrying next interval")
            self._wake.wait(self._interval)
            self._wake.clear()

    def _poll(self, subscribers: list[_Subscriber]) -> None:
        watched = {s.campaign_id for s in subscribers if s.campaign_id is not None}
        with transaction(self._sessions) as session:
            rows = queries.dashboard_campaigns(session)
            listed = {r["id"] for r in rows}
            missing = [cid for cid in watched if str(cid) not in listed]
            if missing:
                rows += [queries._campaign_row(r) for r in session.execute(text(
                    f"SELECT {queries._CAMPAIGN_COLUMNS} FROM campaigns WHERE id = ANY(:ids)"),
                    {"ids": missing}).all()]
            ids = [uuid.UUID(r["id"]) for r in rows]
            totals = queries.analytics_totals(session, ids)
            windows = queries.analytics_windows(session, sorted(watched))
        self.polls += 1
        try:
            dead = self._dead_letters.poll()
        except Exception:
            log.exception("reading the dead-letter topic failed")
            dead = self._dead_letters.counts
        now = time.monotonic()
        lines = {r["id"]: summarise(r, totals.get(r["id"], {}), dead.get(r["id"], 0),
                                    self._rates.rate(r["id"], now, totals.get(r["id"], {}).get("sent", 0)))
                 for r in rows}
        at = datetime.now(UTC).isoformat()
        listing: dict[str, Any] = {"at": at, "campaigns": [lines[r["id"]] for r in rows if r["id"] in listed]}
        for subscriber in subscribers:
            snapshot: dict[str, Any]
            if subscriber.campaign_id is None:
                snapshot = listing
            else:
                cid = str(subscriber.campaign_id)
                snapshot = {"at": at, "campaign": lines.get(cid), "windows": windows.get(cid, []),
                            "window_s": self._settings.analytics.window_s}
            with contextlib.suppress(RuntimeError):  # its event loop closed: the viewer is gone
                subscriber.loop.call_soon_threadsafe(_put_latest, subscriber.queue, snapshot)


def _put_latest(queue: asyncio.Queue[dict[str, Any]], item: dict[str, Any]) -> None:
    with contextlib.suppress(asyncio.QueueEmpty):
        queue.get_nowait()
    queue.put_nowait(item)
