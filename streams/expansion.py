"""Campaign expansion: one message per recipient onto ``campaign.messages.<channel>``, keyed by recipient.

Runs as a loop in the worker (``run_forever``) over the campaigns that need it:

* ``active`` and not yet expanded: page through the audience's ids (``sinks.audience.page_ids``), produce a
  RecipientMessage per recipient with a deterministic message id (uuid5 of campaign and recipient), then
  checkpoint the page's last customer id (in the next page's transaction: one commit a page). A crash
  re-produces at most the page after the last checkpoint, which is harmless: senders claim (campaign,
  recipient) before sending. A message only names the pair: the sender's claim reads the customer as they
  are then (``sinks.audience.resolve``), gives a ``skipped`` row to who may not be sent to (inactive, opted
  out, no address, suppressed), and renders the campaign's content for the rest, for their locale and profile.
  So the expansion reads no ``customers`` row (each customer is read once, by the claim, which had to read it
  anyway) and no content (a record's address and content fields are empty).
* ``cancelled`` or ``failed`` (after activation): the sweep pages through the audience and records every
  recipient who has no row yet as ``cancelled``, so every recipient still ends with one terminal row.

Several workers may run this loop: a session-level advisory lock per campaign (released by PostgreSQL if
the worker dies) lets exactly one of them work on a campaign at a time. Every checkpoint is guarded by the
campaign's version, so a pause, resume or cancel arriving mid-page is never overwritten.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg2

from campaigns.codec import get_codec
from campaigns.core.content import unrendered_fields
from campaigns.core.ids import message_id
from campaigns.settings import Settings
from campaigns.topics import OUTCOMES, messages_topic
from producers.kafka import KafkaProducer
from sinks import campaign_progress, recipient_log
from sinks.audience import page_ids

log = logging.getLogger(__name__)


class PageReader:
    """Audience pages (``sinks.audience.page_ids``) read one ahead, on a connection and a thread of their own.

    The next page's query runs while the expander produces, flushes and checkpoints the current one, instead of
    after it: measured alone, a page of 1,000 was ~10 ms of query, ~8 ms of encoding and producing, ~4 ms of
    flush. A page read ahead is only the audience after a cursor, so reading it before the previous page's
    checkpoint changes nothing but when the audience is looked at (a customer joining ahead of the cursor is
    seen if they joined before that page was read, as before, one page earlier); a page read for a pass that
    stops (pause, cancel, a failed checkpoint) is dropped. A failed read raises from :meth:`Future.result` in
    the expander's thread, like a read on its own connection did; the next read opens a new connection."""

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._conn: Any = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="expansion-pages")
        self.cpu_s = 0.0  # CPU time of the reads (their thread's), for the benchmark

    def read(self, plan: CampaignPlan, after: int) -> Future[list[int]]:
        """The page of ``plan``'s audience (customer ids) after customer id ``after``, being read."""
        return self._thread.submit(self._read, plan.id, list(plan.segments), after, plan.batch_size)

    def _read(self, campaign_id: uuid.UUID, segments: list[int], after: int, limit: int) -> list[int]:
        started = time.thread_time()
        if self._conn is None:
            self._conn = psycopg2.connect(self._dsn)
        try:
            with self._conn.cursor() as cur:
                page = page_ids(cur, campaign_id, segments, after, limit)
            self._conn.rollback()  # no snapshot held open between pages
            return page
        except psycopg2.Error:
            self._conn.close()
            self._conn = None
            raise
        finally:
            self.cpu_s += time.thread_time() - started

    def close(self) -> None:
        self._thread.shutdown(wait=True, cancel_futures=True)
        if self._conn is not None:
            self._conn.close()


@dataclass
class CampaignPlan:
    id: uuid.UUID
    status: str
    version: int
    channel: str
    batch_size: int
    cursor: int
    segments: list[int]


def _millis(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


class Expander:
    """Expands and sweeps campaigns. Not thread-safe: one per thread, each with its own connection."""

    def __init__(
        self, settings: Settings, producer: KafkaProducer,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC), metrics: Any = None,
    ) -> None:
        self._settings = settings
        self._metrics = metrics  # campaigns.metrics.PipelineMetrics, optional
        self._producer = producer
        self._clock = clock
        self._codec = get_codec()
        self._conn = psycopg2.connect(settings.database.dsn())
        self._pages = PageReader(settings.database.dsn())
        self._outcomes_topic = settings.kafka.topic(OUTCOMES)
        self.expanded = 0  # messages produced, for metrics and the benchmark
        self.on_page: Callable[[uuid.UUID, int], None] | None = None  # test and metrics hook

    @property
    def reads_cpu_s(self) -> float:
        """CPU seconds the audience page reads took on their own thread (the benchmark adds them to this one's)."""
        return self._pages.cpu_s

    def close(self) -> None:
        self._pages.close()
        self._conn.close()

    def run_forever(self, stop: threading.Event, idle_s: float = 0.1) -> None:
        """Expand until ``stop`` is set (or a crash the worker rebuilds the stage from), then close the
        connections and the page reader's thread."""
        try:
            while not stop.is_set():
                try:
                    worked = self.run_once()
                except psycopg2.OperationalError as exc:
                    log.warning("expansion: database unavailable (%s); retrying", exc)
                    self._reconnect(stop)
                    continue
                if not worked:
                    stop.wait(idle_s)
        finally:
            self.close()

    def _reconnect(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self._conn.close()
                self._conn = psycopg2.connect(self._settings.database.dsn())
                return
            except psycopg2.OperationalError:
                stop.wait(1.0)

    def run_once(self) -> int:
        """Work on every campaign that needs expansion or a sweep; returns how many it handled."""
        with self._conn.cursor() as cur:
            candidates = campaign_progress.candidates(cur)
        self._conn.commit()
        handled = 0
        for campaign_id in candidates:
            if self._with_lock(campaign_id, self._process):
                handled += 1
        return handled

    def _with_lock(self, campaign_id: uuid.UUID, work: Callable[[uuid.UUID], bool]) -> bool:
        """Run ``work`` under the campaign's advisory lock; its result (did it make progress), or False when
        another worker holds the lock."""
        with self._conn.cursor() as cur:
            locked = campaign_progress.try_lock(cur, campaign_id)
        self._conn.commit()
        if not locked:
            return False
        try:
            return work(campaign_id)
        finally:
            self._conn.rollback()
            with self._conn.cursor() as cur:
                campaign_progress.unlock(cur, campaign_id)
            self._conn.commit()

    def _load(self, campaign_id: uuid.UUID) -> CampaignPlan | None:
        with self._conn.cursor() as cur:
            row = campaign_progress.plan(cur, campaign_id)
        if row is None:
            return None
        return CampaignPlan(
            id=campaign_id, status=row.status, version=row.version, channel=row.channel, batch_size=row.batch_size,
            cursor=row.cursor, segments=row.segments,
        )

    def _process(self, campaign_id: uuid.UUID) -> bool:
        """Expand or sweep the campaign; False if there was nothing to do yet (the loop may idle).

        Per page: one transaction checkpoints the page before it (its records are acknowledged) and, in a sweep,
        writes this page's ``cancelled`` rows; committed, then this page's messages (or the sweep's outcomes) are
        produced and flushed; the next page's transaction checkpoints it. One commit a page, and the order that
        matters holds: an outcome is produced only once its row has committed, a cursor moves past a page only
        once its records are acknowledged. A crash redoes at most the page after the cursor: its rows exist (no
        row is written twice) and its outcomes and messages are produced again with the same ids."""
        plan = self._load(campaign_id)
        if plan is None:
            return False
        sweeping = plan.status in ("cancelled", "failed")
        ahead = self._pages.read(plan, plan.cursor)
        done: list[int] = []  # the page whose records are acknowledged, not checkpointed yet
        while True:
            page = ahead.result()
            if page:
                ahead = self._pages.read(plan, page[-1])  # read while this page is worked on
            with self._conn.cursor() as cur:
                if done and not campaign_progress.checkpoint(cur, plan.id, plan.version, done[-1], len(done)):
                    self._conn.rollback()
                    return True  # the campaign changed (pause, cancel, resume): start over from its new state
                cancelled = self._write_cancelled(cur, plan, page) if sweeping else []
            self._conn.commit()
            if done:
                plan.cursor = done[-1]
                if self.on_page is not None:
                    self.on_page(plan.id, len(done))
            if not page:
                if sweeping and not self._settle_in_flight(plan):
                    return False  # live claims of a sender: they end (recorded or expired); a later pass settles
                self._finish(plan)
                return True
            if sweeping:
                self._emit_cancelled(plan, page, cancelled)
            else:
                self._produce_messages(plan, page)
            # Messages and outcomes must be on the broker before the checkpoint says they are.
            self._producer.flush()
            done = page

    def _produce_messages(self, plan: CampaignPlan, recipients: list[int]) -> None:
        """One RecipientMessage per recipient, naming the (campaign, recipient) pair and nothing more: the sender
        takes the address and the content, rendered for the recipient, from PostgreSQL at the claim, so the
        record's address and content fields are empty (the expansion reads no customer and no content; an
        email's HTML body is not copied into a million records). What the page's messages share is encoded once."""
        topic = self._settings.kafka.topic(messages_topic(plan.channel))
        campaign = str(plan.id)
        produce = self._producer.produce
        encode = self._codec.encoder("RecipientMessage", {
            "campaign_id": campaign, "channel": plan.channel, **unrendered_fields(), "attempt": 0, "not_before": 0,
            "created_at": _millis(self._clock()), "last_error": None,
        })
        for customer_id in recipients:
            recipient = str(customer_id)
            produce(topic, recipient, encode({"message_id": message_id(campaign, recipient),
                                              "recipient_id": recipient}))
        self.expanded += len(recipients)
        if self._metrics is not None:  # once per page
            self._metrics.expansion_page(plan.channel, len(recipients))

    def _write_cancelled(self, cur: Any, plan: CampaignPlan, recipients: list[int]) -> list[tuple[Any, ...]]:
        """A sweep: give the recipients not logged yet a ``cancelled`` row (in the caller's transaction), and end
        rows left ``retrying`` (their retries will find the campaign over); the rows written, ``(recipient,
        message id, failure reason, updated at)``."""
        if not recipients:
            return []
        now = self._clock()
        campaign = str(plan.id)
        reason = f"campaign_{plan.status}"
        return recipient_log.record_terminal(cur, "cancelled", [
            (campaign, r, message_id(campaign, str(r)), plan.channel, "cancelled", reason, now, now)
            for r in recipients
        ])

    def _emit_cancelled(self, plan: CampaignPlan, recipients: list[int], written: list[tuple[Any, ...]]) -> None:
        """Once :meth:`_write_cancelled`'s transaction has committed: one outcome for every ``cancelled`` row of
        these recipients. The rows written, when that is all of them; else (a page done again after a crash
        before its checkpoint, or rows a sender cancelled) the rows read back, so an outcome lost with a crashed
        producer is never lost for good. Either way the same outcome ids: analytics count each once."""
        if len(written) < len(recipients):
            with self._conn.cursor() as cur:
                written = recipient_log.terminal_rows(cur, str(plan.id), recipients, "cancelled")
            self._conn.rollback()  # a read: no snapshot held open while producing
        self._emit(plan, "cancelled", written)

    def _settle_in_flight(self, plan: CampaignPlan) -> bool:
        """After a sweep: end the rows no sender will end (``retrying``, and claims whose lease ran out, left
        by a crashed sender) as ``cancelled``. False while a live claim remains (its sender records it)."""
        campaign = str(plan.id)
        with self._conn.cursor() as cur:
            settled, live = recipient_log.settle_in_flight(cur, campaign, f"campaign_{plan.status}", self._clock())
            self._conn.commit()
        self._emit(plan, "cancelled", settled)
        if settled:
            self._producer.flush()
        return not live

    def _emit(self, plan: CampaignPlan, status: str, rows: list[tuple[Any, ...]]) -> None:
        """The outcomes of ``(recipient, message id, reason, updated at)`` rows, each occurring when its row took
        the status (a page done again emits its rows' outcomes again: the same ids and times)."""
        campaign = str(plan.id)
        outcome_status = status.upper()
        for recipient_id, msg_id, failure_reason, updated_at in rows:
            occurred = _millis(updated_at)
            self._producer.produce(
                self._outcomes_topic,
                str(recipient_id),
                self._codec.encode(
                    "DeliveryOutcome",
                    {
                        "outcome_id": f"{msg_id}:0:{outcome_status}", "message_id": str(msg_id),
                        "campaign_id": campaign, "recipient_id": str(recipient_id), "channel": plan.channel,
                        "status": outcome_status, "attempt": 0, "latency_ms": None,
                        "failure_reason": failure_reason, "provider_message_id": None, "occurred_at": occurred,
                    },
                ),
            )

    def _finish(self, plan: CampaignPlan) -> None:
        """The pass is over: the total is what it expanded (accumulated page by page in the checkpoints), so
        a customer who joined the audience behind the cursor is not counted without ever getting a row."""
        with self._conn.cursor() as cur:
            total = campaign_progress.finish(cur, plan.id, plan.version)
        self._conn.commit()
        if total is None:
            return  # the campaign changed meanwhile: the next pass finishes it
        log.info("expansion of %s done: %d recipients", plan.id, total)


