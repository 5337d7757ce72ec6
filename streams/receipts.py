"""The receipts stage: ``delivery.receipts`` -> ``campaign_recipient_log``, ``campaign_analytics``, ``suppressions``
(+ ``campaign.analytics``).

Per micro-batch, in ONE PostgreSQL transaction (``sinks/receipts.py``):

1. lock the ``sent`` rows of the batch's provider message ids (recipient-log order);
2. fold each row's receipts into its state with the pure merge rule (``campaigns.core.receipts.merge``: LEAST
   timestamps, ``read`` implies delivered, ``provider_status`` forward only) and write the rows that changed;
3. add to ``campaign_analytics`` (the window of the receipt's event time, and the totals row) exactly the
   timestamps that went from NULL to set: a row adds each of delivered/read/bounced/complained at most once, ever,
   so duplicates, out-of-order receipts and a replay of the whole topic change nothing;
4. suppress the address of hard bounces, complaints and STOP replies (a message's address is the customer's
   current one on that channel; a STOP reply's is the sender's, normalised).

Then commit, publish the changed analytics rows; the stage runtime (``streams/runtime.py``) flushes and commits
the offsets. A crash before the commit redoes the
batch; after it, the redo finds the timestamps set and adds nothing (the rows are published again, unchanged).

Receipts that arrive before their send is recorded: a provider can call back before the sender's batch has
committed the provider message id. Such a receipt is *held* in memory and retried with a backoff (0.5 s doubling
to 8 s) for ``receipts.unknown_hold_s`` (60 s); the partition's committed offset stays at the oldest held
receipt, so a crash re-delivers it rather than losing it. After the hold, it is dropped: counted (``unmatched``)
and logged, not dead-lettered. Why a drop: such a receipt belongs to no message of ours that was ever recorded
(another system on the same provider account, or a message whose send record was lost - and then no row exists to
take it), and it carries nothing an operator could redrive; replaying the topic later re-applies it if its row
appears. Undecodable records are counted and skipped, like the analytics stage does.

Invariant: a receipt applies only to a ``sent`` row and sets each timestamp once, so per campaign the recipient
log has delivered <= sent always; ``campaign_analytics`` reaches it once the analytics stage has counted the sends
(the two stages count independently, so for a moment delivered may lead).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import Message, TopicPartition

from campaigns.codec import get_codec
from campaigns.core.receipts import (
    Receipt,
    ReceiptState,
    ReceiptStatus,
    fold,
    normalize_address,
    suppression_reason,
    transitions,
)
from campaigns.core.vocabulary import CHANNELS, SuppressionReason
from campaigns.core.windows import window_bounds
from campaigns.settings import Settings
from campaigns.topics import ANALYTICS, RECEIPTS, RECEIPTS_GROUP
from producers.kafka import KafkaProducer
from sinks import receipts as sink
from streams.runtime import ConsumerPort, Offsets, StageRuntime, build_consumer, decoded, where

log = logging.getLogger(__name__)

MAX_RETRY_WAIT_S = 8.0


@dataclass
class _Held:
    receipt: Receipt
    partition: tuple[str, int]
    offset: int
    since: float
    next_try: float
    wait: float = 0.5


ADDRESS_MAX = 320  # suppressions.address
PROVIDER_ID_MAX = 256  # campaign_recipient_log.provider_message_id


def _check(receipt: Receipt, window_s: int) -> None:
    """Refuse (ValueError) a receipt that would fail its batch on every redelivery and so stop the partition: an
    unknown channel (the suppressions CHECK), an address or provider id longer than its column, an event time
    whose window cannot be represented. The receiver never produces one; a forged or corrupt record might."""
    if receipt.channel not in CHANNELS:
        raise ValueError(f"unknown channel {receipt.channel!r}")
    if receipt.address is not None and len(receipt.address) > ADDRESS_MAX:
        raise ValueError("address longer than 320 characters")
    if receipt.provider_message_id is not None and len(receipt.provider_message_id) > PROVIDER_ID_MAX:
        raise ValueError("provider message id longer than 256 characters")
    window_bounds(receipt.occurred_at, window_s)  # OverflowError past year 9999


class ReceiptsStage:
    """Consumes ``delivery.receipts`` in micro-batches. Run :meth:`run_forever` in its own thread."""

    def __init__(
        self, settings: Settings, producer: KafkaProducer, clock: Callable[[], float] = time.time, metrics: Any = None,
        consumer: ConsumerPort | None = None, store: sink.ReceiptsStore | None = None,
    ) -> None:
        self._metrics = metrics  # campaigns.metrics.PipelineMetrics, optional
        self._batch_counts: Counter[tuple[str, str]] = Counter()
        self._settings = settings
        self._producer = producer
        self._clock = clock
        self._codec = get_codec()
        kafka = settings.kafka
        self._config = settings.receipts
        self._window_s = settings.analytics.window_s
        self._topic = kafka.topic(RECEIPTS)
        self._analytics_topic = kafka.topic(ANALYTICS)
        self.runtime = StageRuntime("receipts", consumer or build_consumer(kafka, kafka.topic(RECEIPTS_GROUP)),
                                    producer, self, batch_size=self._config.batch_size,
                                    observe=metrics.stage_batch if metrics is not None else None)
        self.runtime.subscribe([self._topic], on_revoke=self._on_revoke)
        self._store = store or sink.PostgresReceiptsStore(settings.database.dsn())
        self._held: list[_Held] = []
        self._positions: dict[tuple[str, int], int] = {}  # next offset to commit when nothing there is held
        self.received = 0
        self.applied = 0  # receipts that found their row (whether or not they changed it)
        self.counted = 0  # counter increments (NULL -> set transitions)
        self.suppressed = 0  # new suppressions
        self.unmatched = 0  # dropped after the hold: no sent row with that provider id
        self.undecodable = 0

    def run_forever(self, stop: threading.Event) -> None:
        self.runtime.run_forever(stop)

    def run_once(self) -> int:
        return self.runtime.run_once()

    def close(self) -> None:
        """Leave the group and close the database connection. Idempotent."""
        self.runtime.close()

    def release(self) -> None:
        self._store.close()

    def _on_revoke(self, _consumer: Any, partitions: list[TopicPartition]) -> None:
        # The new owner re-reads from the committed offset, which is at or before every held receipt.
        lost = {(p.topic, p.partition) for p in partitions}
        self._held = [h for h in self._held if h.partition not in lost]
        for key in lost:
            self._positions.pop(key, None)

    @property
    def held(self) -> int:
        return len(self._held)

    def handle(self, messages: list[Message]) -> Offsets:
        """Apply the batch's receipts and the held ones that are due; the offsets that may be committed."""
        now = self._clock()
        fresh: list[_Held] = []
        for msg in messages:
            if msg.error() is None:
                self._positions[(msg.topic(), msg.partition())] = msg.offset() + 1
        for msg, receipt in decoded(messages, self._decode, self._skip, "receipts"):
            fresh.append(_Held(receipt, (msg.topic(), msg.partition()), msg.offset(), now, now))
        self.received += len(fresh)
        due = [h for h in self._held if h.next_try <= now]
        if not fresh and not due:
            self._report()
            return self._done()
        batch = fresh + due
        unknown = self.apply(batch)
        due_ids = {id(h) for h in due}
        self._held = [h for h in self._held if id(h) not in due_ids]
        for h in unknown:
            if now - h.since >= self._config.unknown_hold_s or (
                id(h) not in due_ids and len(self._held) >= self._config.max_held
            ):
                self.unmatched += 1
                self._batch_counts[(h.receipt.channel, "unmatched")] += 1
                log.warning(
                    "receipts: dropping %s receipt %s for provider message id %r: no sent row has it (after %.0f s)",
                    h.receipt.channel,
                    h.receipt.status.value,
                    h.receipt.provider_message_id,
                    now - h.since,
                )
                continue
            self._batch_counts[(h.receipt.channel, "held")] += 1
            h.next_try = now + h.wait
            h.wait = min(h.wait * 2, MAX_RETRY_WAIT_S)
            self._held.append(h)
        self._report()
        return self._done()

    def _decode(self, msg: Message) -> Receipt:
        receipt = Receipt.from_record(self._codec.decode(msg.value(), "DeliveryReceipt"))
        _check(receipt, self._window_s)
        return receipt

    def _skip(self, msg: Message, exc: Exception) -> None:
        self.undecodable += 1
        self._batch_counts[("", "undecodable")] += 1
        log.warning("receipts: skipping undecodable receipt at %s: %s", where(msg), exc)

    def _report(self) -> None:
        if self._metrics is not None and self._batch_counts:
            self._metrics.receipts_handled(self._batch_counts)
        self._batch_counts.clear()

    def apply(self, batch: list[_Held]) -> list[_Held]:
        """Apply ``batch`` in one transaction (the store's); publish the changed analytics rows. Returns the receipts
        whose provider message id has no ``sent`` row (yet)."""
        now = datetime.now(UTC)
        by_id: dict[tuple[str, str], list[_Held]] = defaultdict(list)
        stops: list[Receipt] = []
        for h in batch:
            if h.receipt.status is ReceiptStatus.STOP or h.receipt.provider_message_id is None:
                stops.append(h.receipt)
            else:
                by_id[(h.receipt.provider_message_id, h.receipt.channel)].append(h)
        found: set[tuple[str, str]] = set()
        counted: Counter[str] = Counter()

        def plan(rows: list[sink.RowState]) -> sink.ReceiptWrites:
            """Inside the store's transaction (again if it is redone): what the locked rows become."""
            found.clear()
            counted.clear()
            updates = []
            counts: dict[tuple[str, datetime | None], dict[str, int]] = defaultdict(lambda: defaultdict(int))
            ends: dict[tuple[str, datetime | None], datetime | None] = {}
            suppress: list[tuple[str, str, str, str]] = []
            for cid, rid, pid, channel, d, rd, b, cm, status, address in rows:
                found.add((pid, channel))
                before = ReceiptState(d, rd, b, cm, status)
                receipts = [h.receipt for h in by_id[(pid, channel)]]
                after = fold(before, receipts)
                if after != before:
                    updates.append((cid, rid, after.delivered_at, after.read_at, after.bounced_at, after.complained_at,
                                    after.provider_status))
                for counter, at in transitions(before, after):
                    start, end = window_bounds(at, self._window_s)
                    for key in ((cid, start), (cid, None)):
                        counts[key][counter] += 1
                    ends[(cid, start)] = end
                    ends.setdefault((cid, None), None)
                    counted[channel] += 1
                for r in receipts:
                    reason = suppression_reason(r)
                    target = address or r.address
                    if reason and target:
                        suppress.append((channel, normalize_address(channel, target), reason,
                                         f"{channel} {r.status.value.lower()} {pid}"))
            for r in stops:
                if r.address:
                    suppress.append((r.channel, normalize_address(r.channel, r.address), SuppressionReason.STOP_REPLY,
                                     f"{r.channel} inbound reply"))
            return sink.ReceiptWrites(
                updates, [(cid, start, ends[(cid, start)], dict(n)) for (cid, start), n in counts.items()], suppress)

        published, suppressed = self._store.apply(list(by_id), plan, now)
        # Counted only once the transaction committed (a deadlock retry redoes the batch).
        applied = [h.receipt.channel for k in found for h in by_id[k]] + [r.channel for r in stops]
        self.applied += len(applied)
        self.counted += sum(counted.values())
        self.suppressed += len(suppressed)
        for channel in applied:
            self._batch_counts[(channel, "applied")] += 1
        for channel, n in counted.items():
            self._batch_counts[(channel, "counted")] += n
        for channel, _address in suppressed:
            self._batch_counts[(channel, "suppressed")] += 1
        for record in published:
            self._producer.produce(
                self._analytics_topic, record["campaign_id"], self._codec.encode("CampaignAnalytics", record)
            )
        return [h for key, held in by_id.items() if key not in found for h in held]

    def _done(self) -> Offsets:
        """Each partition's position, but never past its oldest held receipt (a crash re-delivers it)."""
        oldest: dict[tuple[str, int], int] = {}
        for h in self._held:
            oldest[h.partition] = min(h.offset, oldest.get(h.partition, h.offset))
        return {key: oldest.get(key, position) for key, position in self._positions.items()}
