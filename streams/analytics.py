"""Delivery analytics: ``delivery.outcomes`` -> ``campaign_analytics`` (+ ``campaign.analytics``), completion
and the failure threshold.

Exactly-once counting without trusting the transport: each micro-batch (up to a few thousand outcomes)
is applied in ONE PostgreSQL transaction that (1) inserts the batch's outcome ids into
``analytics_seen_outcomes`` with ON CONFLICT DO NOTHING RETURNING, and (2) adds only the outcomes that
came back new to the per-window and running-total rows. A redelivered batch, a crash before the offset
commit, or an operator replaying the whole topic therefore changes nothing. The same idea in Faust tables
would need the changelog and the offsets to commit atomically with the database; here the database is the
single source of truth, and the published ``campaign.analytics`` records are the rows it returned.

Completion: when a campaign's expansion is done and its terminal outcomes reach its recipient count, the
recipient log itself is counted (the authority) before the campaign is completed through the service (so
the event goes through the outbox). A periodic sweep re-checks active campaigns, so a crash at any point
cannot leave one "active" forever; and a campaign is never completed while a recipient lacks a terminal row.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol

from confluent_kafka import Message

from campaigns.codec import get_codec
from campaigns.core.states import CampaignAction
from campaigns.core.tally import backed, log_key
from campaigns.core.vocabulary import COUNTERS, RECEIPT_OUTCOMES, STATUS_TO_COUNTER
from campaigns.core.windows import window_bounds
from campaigns.settings import Settings
from campaigns.topics import ANALYTICS, ANALYTICS_GROUP, OUTCOMES
from producers.kafka import KafkaProducer
from sinks.analytics import ROW_FIELDS, AnalyticsStore, PostgresAnalyticsStore
from streams.runtime import ConsumerPort, StageRuntime, build_consumer, decoded, where

log = logging.getLogger(__name__)

RECEIPTS = RECEIPT_OUTCOMES  # external receipts: ``attempt`` carries the count
LOG_RECOUNT_EVERY_S = 30.0  # the completion backstop: campaigns' logs counted whatever their totals say
OUTCOME_ID_MAX = 128  # analytics_seen_outcomes.outcome_id is VARCHAR(128)


class CampaignFinisher(Protocol):
    """What completion needs of the service: end a campaign (True if this call did)."""

    def finish_campaign(self, campaign_id: uuid.UUID, action: CampaignAction, detail: Any) -> bool: ...


class Aggregate:
    __slots__ = ("counts", "latency_count", "latency_max", "latency_sum")

    def __init__(self) -> None:
        self.counts = dict.fromkeys(COUNTERS, 0)
        self.latency_count = 0
        self.latency_sum = 0.0
        self.latency_max = 0.0

    def add(self, status: str, attempt: int, latency_ms: float | None) -> None:
        self.counts[STATUS_TO_COUNTER[status]] += attempt if status in RECEIPTS else 1
        if latency_ms is not None:
            self.latency_count += 1
            self.latency_sum += latency_ms
            self.latency_max = max(self.latency_max, latency_ms)




class CompletionStage:
    """Completion and the backstop failure threshold, on their own: a sweep of the active, expanded campaigns
    every ``sweep_every_s`` (default 2 s) against the recipient log (completion) and the ``campaign_analytics``
    totals (threshold). The worker's ``completion`` stage, next to the Faust analytics (``streams/tally.py``);
    :class:`AnalyticsStage` runs the same checks after each batch it counts, and this sweep."""

    def __init__(self, settings: Settings, service: CampaignFinisher, clock: Callable[[], float] = time.time,
                 metrics: Any = None, store: AnalyticsStore | None = None) -> None:
        self._metrics = metrics  # campaigns.metrics.PipelineMetrics, optional
        self._service = service
        self._clock = clock
        self._store = store or PostgresAnalyticsStore(settings.database.dsn())
        self._last_sweep = 0.0
        self._last_log_count = 0.0

    def run_forever(self, stop: threading.Event, sweep_every_s: float = 2.0) -> None:
        """Sweep every ``sweep_every_s``, and at once when the analytics totals change (``wait_for_totals``:
        the Faust analytics' flush notifies), checking ``stop`` at least every 0.5 s."""
        try:
            while not stop.is_set():
                self.sweep()
                deadline = self._clock() + sweep_every_s
                while not stop.is_set() and (left := deadline - self._clock()) > 0:
                    if self._store.wait_for_totals(min(left, 0.5)):
                        break
        finally:
            self._store.close()

    # --- completion and failure threshold ----------------------------------------------------------

    def sweep(self) -> None:
        """Re-check every active campaign (catches anything a crash or a race left behind).

        A campaign whose totals say every recipient is terminal is checked against the log at every sweep;
        the others only every ``LOG_RECOUNT_EVERY_S``: counting the log of a campaign of a million recipients
        every 2 s was the largest read of PostgreSQL, for a backstop (the totals are exact: outcomes are counted
        in the transaction that dedupes them, and an outcome whose row committed is re-emitted until counted)."""
        self._last_sweep = now = self._clock()
        ids = self._store.active_expanded()
        recount = now - self._last_log_count >= LOG_RECOUNT_EVERY_S
        if recount:
            self._last_log_count = now
        if ids:
            self.check_campaigns(ids, count_log=recount)

    def check_campaigns(self, campaign_ids: set[str], *, count_log: bool = False) -> None:
        """Fail campaigns over their failure threshold; complete those whose every recipient is terminal.

        ``count_log`` checks the recipient log even when the analytics totals say it is not done yet."""
        for row in self._store.completion_rows(campaign_ids):
            if row.status != "active":
                continue
            cid, sent, failed, threshold, total = row.campaign_id, row.sent, row.failed, row.failure_threshold, \
                row.total_recipients
            attempted = sent + failed
            if attempted >= max(row.failure_min_sample, 1) and failed / attempted > threshold:
                if self._service.finish_campaign(uuid.UUID(cid), CampaignAction.FAIL,
                                                 {"failed": failed, "sent": sent, "threshold": threshold}):
                    if self._metrics is not None:
                        self._metrics.campaign_transition("failed")
                    log.warning("campaign %s failed: %d of %d sends failed", cid, failed, attempted)
                continue
            if (row.expansion_done and total is not None and (row.terminal >= total or count_log)
                    and self._store.terminal_count(cid) >= total):
                if self._service.finish_campaign(uuid.UUID(cid), CampaignAction.COMPLETE, {"recipients": total}):
                    if self._metrics is not None:
                        self._metrics.campaign_transition("completed")
                    log.info("campaign %s completed: %d recipients", cid, total)


class AnalyticsStage(CompletionStage):
    """Consumes ``delivery.outcomes`` in micro-batches on the stage runtime (:mod:`streams.runtime`). Run
    :meth:`run_forever` in its own thread."""

    def __init__(
        self, settings: Settings, producer: KafkaProducer, service: CampaignFinisher,
        clock: Callable[[], float] = time.time, batch_size: int = 5000, metrics: Any = None,
        consumer: ConsumerPort | None = None, sweep_every_s: float = 2.0, store: AnalyticsStore | None = None,
    ) -> None:
        super().__init__(settings, service, clock, metrics, store)
        self._settings = settings
        self._producer = producer
        self._codec = get_codec()
        self._window_s = settings.analytics.window_s
        self._sweep_every_s = sweep_every_s
        kafka = settings.kafka
        self._topic = kafka.topic(OUTCOMES)
        self._analytics_topic = kafka.topic(ANALYTICS)
        self._touched: set[str] = set()  # campaigns the last batch counted: checked once its offsets are committed
        self.runtime = StageRuntime(
            "analytics", consumer or build_consumer(kafka, kafka.topic(ANALYTICS_GROUP)), producer, self,
            batch_size=batch_size, tick=self._after_batch)
        self.received = 0  # outcomes decoded (counted or recognised as already counted)
        self.counted = 0
        self.undecodable = 0
        self.unbacked = 0  # outcomes no recipient-log row backs (not counted)

    def run_forever(self, stop: threading.Event, sweep_every_s: float | None = None) -> None:
        if sweep_every_s is not None:
            self._sweep_every_s = sweep_every_s
        self.runtime.subscribe([self._topic])
        self.runtime.run_forever(stop)

    def run_once(self) -> int:
        n = self.runtime.run_once()
        self._after_batch(sweep=False)
        return n

    def close(self) -> None:
        """Leave the group and close the database connection. Idempotent."""
        self.runtime.close()

    def release(self) -> None:
        self._store.close()

    def handle(self, messages: list[Message]) -> None:
        """Count the batch's outcomes (one transaction) and produce the rows it changed; the runtime then
        flushes and commits. An outcome that cannot be decoded, whatever the decoder raises, is skipped."""
        outcomes = [o for _, o in decoded(messages, self._decode, self._skip, "analytics")]
        self.received += len(outcomes)
        self._touched |= self.apply(self._countable(outcomes))

    def _decode(self, msg: Message) -> dict[str, Any]:
        return self._codec.decode(msg.value(), "DeliveryOutcome")

    def _skip(self, msg: Message, exc: Exception) -> None:
        self.undecodable += 1
        log.warning("analytics: skipping undecodable outcome at %s: %s", where(msg), exc)

    def _after_batch(self, sweep: bool = True) -> None:
        """Completion and the threshold for the campaigns the committed batch counted; the sweep when due."""
        touched, self._touched = self._touched, set()
        if touched:
            self.check_campaigns(touched)
        if sweep and self._clock() - self._last_sweep >= self._sweep_every_s:
            self.sweep()

    def _countable(self, outcomes: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Drop (and log) outcomes that would fail the batch on every redelivery, stopping the partition:
        an outcome id longer than its column, a campaign id that is no known campaign, a negative attempt
        (receipts add it to their counter), a time whose window cannot be represented."""
        ids: dict[str, str] = {}
        for raw in {o["campaign_id"] for o in outcomes}:  # parsed once per campaign, not once per outcome
            try:
                ids[raw] = str(uuid.UUID(raw))
            except ValueError:
                continue
        known = self._store.known_campaigns(set(ids.values())) if ids else set()
        kept = []
        for o in outcomes:
            campaign = ids.get(o["campaign_id"])
            if campaign in known and len(o["outcome_id"]) <= OUTCOME_ID_MAX and o["attempt"] >= 0:
                occurred = o["occurred_at"]
                try:  # the window must be representable (not past the end of year 9999); apply() uses it
                    window = window_bounds(occurred if isinstance(occurred, datetime)
                                           else datetime.fromtimestamp(occurred / 1000, UTC), self._window_s)
                except (OverflowError, ValueError, OSError):
                    continue
                kept.append(dict(o, campaign_id=campaign, window=window))
        if len(kept) < len(outcomes):
            self.undecodable += len(outcomes) - len(kept)
            log.warning("analytics: skipping %d outcomes of unknown campaigns or with invalid values",
                        len(outcomes) - len(kept))
        return self._matching_the_log(kept)

    def _matching_the_log(self, outcomes: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Only outcomes the recipient log vouches for are counted (``campaigns.core.tally.backed``): an outcome on
        ``delivery.outcomes`` that no row backs (forged, or of another cluster) is skipped with a warning."""
        keys = [log_key(o["campaign_id"], o["status"], o["recipient_id"]) for o in outcomes]
        rows = self._store.log_rows(sorted({k for k in keys if k is not None})) if any(keys) else {}
        kept = [o for o, key in zip(outcomes, keys, strict=True)
                if backed(o["status"], o["attempt"], rows.get(key) if key is not None else None)]
        if len(kept) < len(outcomes):
            self.unbacked += len(outcomes) - len(kept)
            log.warning("analytics: skipping %d outcomes no recipient-log row backs", len(outcomes) - len(kept))
        return kept

    def apply(self, outcomes: list[dict[str, Any]]) -> set[str]:
        """Count the outcomes not counted before; publish the updated rows. Returns the campaigns touched."""
        if not outcomes:
            return set()
        by_id = {o["outcome_id"]: o for o in outcomes}
        aggregates: dict[tuple[str, datetime | None], Aggregate] = defaultdict(Aggregate)
        ends: dict[tuple[str, datetime | None], datetime | None] = {}

        def rows_for(new_ids: list[str]) -> list[tuple[Any, ...]]:
            """The window and totals rows to add for the outcomes not counted before (in the store's transaction)."""
            aggregates.clear()
            ends.clear()
            for oid in new_ids:
                o = by_id[oid]
                if "window" in o:  # computed by _countable
                    start, end = o["window"]
                else:
                    occurred = o["occurred_at"]
                    if not isinstance(occurred, datetime):
                        occurred = datetime.fromtimestamp(occurred / 1000, UTC)
                    start, end = window_bounds(occurred, self._window_s)
                for key in ((o["campaign_id"], start), (o["campaign_id"], None)):
                    aggregates[key].add(o["status"], o["attempt"], o["latency_ms"])
                ends[(o["campaign_id"], start)] = end
                ends.setdefault((o["campaign_id"], None), None)
            now = datetime.now(UTC)
            return [
                (cid, start, ends[(cid, start)], *a.counts.values(), a.latency_count, a.latency_sum, a.latency_max, now)
                for (cid, start), a in sorted(aggregates.items(), key=lambda kv: (kv[0][0], kv[0][1] is None))
            ]

        new_ids, updated = self._store.count({oid: o["campaign_id"] for oid, o in by_id.items()}, rows_for)
        if not new_ids:
            return set()
        self.counted += len(new_ids)
        if self._metrics is not None:  # once per batch, aggregated by (channel, status) inside
            self._metrics.outcomes_counted(by_id[oid] for oid in new_ids)
        for row in updated:
            record = dict(zip(ROW_FIELDS, row, strict=True))
            self._producer.produce(self._analytics_topic, record["campaign_id"],
                                   self._codec.encode("CampaignAnalytics", record))
        return {cid for cid, _ in aggregates}
