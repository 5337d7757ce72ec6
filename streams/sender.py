"""Channel senders: one per channel, consuming ``campaign.messages.<channel>`` and its retry tiers.

This stage runs on a batched confluent-kafka consumer, not a Faust agent: in a prototype of this hot path
per-event Faust machinery capped it at ~4.5k messages/s, a batched consumer at ~24k/s. Each batch:

0. the channel's breaker (its ``channels`` row) is closed, or half-open and this worker holds the probe
   (then the batch is one message); while it is open nothing is consumed or sent;
1. records are taken from the consumer, as many as there are tokens for (the rest wait, in order);
2. decode (undecodable -> DLQ, the partition keeps flowing); a retry tier holds each record for its delay
   after it was written (tiers by delay: no head-of-line blocking), then it is sent or moves down a tier;
3. look up the campaigns' states; messages of cancelled/failed campaigns are recorded ``cancelled``;
   paused ones are dropped (resume re-expands the campaign, and claims make that harmless);
4. **claim** every (campaign, recipient) in ``campaign_recipient_log``, atomically with the campaign being
   ``active`` (a share lock on its row): the UNIQUE constraint lets exactly one claim win, so a redelivered,
   replayed or re-expanded message is never sent twice, and once a pause/cancel/fail has committed nothing
   of that campaign is claimed. A claim is a lease: one left by a crashed worker is taken over after
   ``claim_lease_s``;
5. send the claimed messages concurrently, each call taking its token right before it starts;
6. record the outcomes in one UPDATE; produce retries, dead letters and ``delivery.outcomes`` records;
   feed the campaigns' failure breakers (a tripped one fails its campaign before the next batch) and the
   channel breaker (an account error or a run of transport errors pauses the channel, failing nobody);
7. the stage runtime (``streams/runtime.py``) flushes the producer; only then does it commit the offsets.

Steps 0-1 are the sender's ``take`` (what the runtime consumes), 2-6 its ``handle``.

The one unavoidable window: a crash after the provider accepted a message and before step 6 committed
leaves the claim unrecorded; after the lease expires the message is sent again. The code leans towards
at-least-once there (a recipient is never silently lost) and passes the message id to providers as an
idempotency key / correlation id so those that dedupe (the SMS API) drop the repeat.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, Protocol

from confluent_kafka import KafkaError, Message, TopicPartition

from campaigns.codec import get_codec
from campaigns.core import states
from campaigns.core.breaker import CampaignBreakers, TransportErrorRun, next_probe_delay_s
from campaigns.core.content import (
    CompiledContent,
    Refusal,
    Rendered,
    list_unsubscribe,
    pick_locale,
    unrendered_fields,
)
from campaigns.core.rate import AimdRate, TokenBucket, worker_share
from campaigns.core.retry import RetryPolicy, decide, tier_for_wait
from campaigns.core.states import CampaignAction
from campaigns.core.unsubscribe import make_token
from campaigns.errors import (
    DeliveryError,
    PermanentDeliveryError,
    ProviderAccountError,
    SchemaError,
    ThrottledError,
    TransientDeliveryError,
)
from campaigns.settings import Settings
from campaigns.topics import MESSAGES_DLQ, OUTCOMES, messages_topic, retry_topic, sender_group
from campaigns.transports.base import OutgoingMessage, Transport
from producers.dead_letters import DeadLetters
from producers.kafka import KafkaProducer
from sinks.sender_store import PostgresSenderStore, SenderStore
from streams.runtime import ConsumerPort, Offsets, StageRuntime, build_consumer

log = logging.getLogger(__name__)

CAMPAIGN_STATE_TTL_S = 0.5
# A provider call starts only with at least MIN_CALL_BUDGET_S of lease left after LEASE_MARGIN_S, and is cut
# at min(providers.timeout_s, what is left): a call never outlives the claim it was made under.
LEASE_MARGIN_S = 0.5
MIN_CALL_BUDGET_S = 0.2
CHANNEL_STATE_TTL_S = 1.0  # how stale this worker's view of its channel's breaker may be
# Failure reasons of calls that never got an answer from the provider's application (the path or the
# provider is down): a run of them opens the channel's breaker.
TRANSPORT_REASONS = frozenset({"connect_error", "connect_timeout", "timeout", "connection_error"})
FINISHED = states.TERMINAL  # a campaign that will never send again (StrEnum members equal their strings)
_BIGINT_MAX = 2**63 - 1
SHORT_TOKEN_WAIT_S = 0.1
RATE_HEADROOM = 0.98


@dataclass(frozen=True, slots=True)
class CampaignState:
    status: str
    policy: RetryPolicy
    expires: float
    failure_threshold: float = 1.0
    failure_min_sample: int = 1


class CampaignFailer(Protocol):
    """What the sender needs of the service: fail a campaign whose breaker tripped (True if it did)."""

    def finish_campaign(self, campaign_id: uuid.UUID, action: CampaignAction, detail: Any) -> bool: ...


@dataclass(slots=True)
class Pending:
    """A decoded message on its way through one batch: the record as consumed, and what the claim rendered for
    its recipient (``address`` to ``unsubscribe``), which only the transport sees."""

    msg: Message
    record: dict[str, Any]
    claimed_attempts: int = 0  # provider calls already made before this one
    claimed_at: datetime | None = None  # identifies this worker's claim (a take-over writes a new one)
    lease_deadline: float = float("inf")  # time.monotonic() after which the claim may belong to another worker
    result: str = ""  # sent | retry | failed | expired (lease ran out first) | held (channel paused: not sent)
    final_failure: bool = False  # its failure is final (permanent, or retries exhausted): recorded failed
    reason: str | None = None
    provider_id: str | None = None
    latency_ms: float | None = None
    retry_after: float | None = None
    refusal: str | None = None  # why this recipient's rendered message may not be sent (a permanent failure)
    address: str = ""  # the customer's, read at the claim
    locale: str = ""
    subject: str | None = None
    body: str = ""
    template_name: str | None = None
    template_parameters: tuple[str, ...] = ()
    text_body: str | None = None  # email: the text/plain alternative
    header_parameters: tuple[str, ...] = ()  # WhatsApp: the template's text header parameter
    unsubscribe: tuple[str, ...] = ()  # email: List-Unsubscribe URIs


@dataclass
class SenderStats:
    received: int = 0  # records consumed (main and retry topics), whatever became of them
    sent: int = 0
    failed: int = 0
    retried: int = 0
    cancelled: int = 0
    duplicates_dropped: int = 0
    dead_lettered: int = 0
    throttled: int = 0
    dead_letter_reasons: dict[str, int] = field(default_factory=dict)  # reason -> count, for metrics


class ChannelSender:
    """Sends one channel's messages. Run :meth:`run_forever` in its own thread."""

    def __init__(
        self,
        settings: Settings,
        channel: str,
        transport: Transport,
        producer: KafkaProducer,
        *,
        group_id: str | None = None,
        rate_per_s: float | None = None,
        burst: int | None = None,
        campaigns: CampaignFailer,
        clock: Callable[[], float] = time.time,
        metrics: Any = None,
        consumer: ConsumerPort | None = None,
        store: SenderStore | None = None,
        breakers: CampaignBreakers | None = None,
    ) -> None:
        self._settings = settings
        self._service = campaigns
        self._call_timeout_s = settings.providers.timeout_s
        if settings.sender.claim_lease_s < self._call_timeout_s + LEASE_MARGIN_S:
            log.warning("%s sender: the claim lease (%.1f s) is shorter than the provider timeout (%.1f s) plus "
                        "a %.1f s margin; calls are cut when their lease runs out", channel,
                        settings.sender.claim_lease_s, self._call_timeout_s, LEASE_MARGIN_S)
        # The campaigns' failure breakers: the worker passes one set per channel to all its sender consumers.
        self._breakers = breakers if breakers is not None else CampaignBreakers()
        # campaign -> (default locale, locale -> content compiled once, or why it cannot be rendered)
        self._contents: dict[str, tuple[str, dict[str, CompiledContent | Refusal]]] = {}
        self._unsubscribe = settings.unsubscribe
        self._transport_errors = TransportErrorRun()
        self._channel_open: tuple[str | None, float] = (None, 0.0)  # (paused reason or None, read at)
        self._metrics = metrics
        self._channel = channel
        self._transport = transport
        self._producer = producer
        self._clock = clock
        self._codec = get_codec()
        kafka = settings.kafka
        self._main_topic = kafka.topic(messages_topic(channel))
        self._retry_topics = [
            kafka.topic(retry_topic(channel, n)) for n in range(1, settings.sender.retry_tiers + 1)
        ]
        # Retry tier topic -> how long it holds each record (ms after the record was written).
        self._tier_delays = settings.sender.retry_tier_delays_s
        self._tier_hold_ms = {t: d * 1000 for t, d in zip(self._retry_topics, self._tier_delays, strict=True)}
        self._dead_letters = DeadLetters(producer, kafka.topic(MESSAGES_DLQ), clock)
        self._outcomes_topic = kafka.topic(OUTCOMES)
        self._consumer = consumer or build_consumer(kafka, group_id or kafka.topic(sender_group(channel)))
        self.runtime = StageRuntime(f"{channel} sender", self._consumer, producer, self, take=self._take,
                                    observe=metrics.stage_batch if metrics is not None else None)
        self._probing = False  # the batch taken is the half-open breaker's probe
        self._store = store or PostgresSenderStore(settings.database.dsn())
        self._campaigns: dict[str, CampaignState] = {}
        self._paused_until: dict[tuple[str, int], float] = {}  # retry partitions waiting for their head
        self._assigned: set[tuple[str, int]] = set()
        self._channel_rate = rate_per_s
        self._channel_burst = burst
        self._bucket: TokenBucket | None = None if rate_per_s is None else self._idle_bucket()
        self._carry: list[Message] = []  # consumed while waiting for tokens; sent once tokens are there
        self._aimd: AimdRate | None = None
        # Calls in flight: sender.max_in_flight, and never more than the transport's pool carries at once.
        self._max_in_flight = min(settings.sender.max_in_flight,
                                   getattr(transport, "concurrency", None) or settings.sender.max_in_flight)
        self.stats = SenderStats()
        self.slot = 0  # which of the worker's sender consumers of this channel it is (settings.sender.consumers)
        self._loop = asyncio.new_event_loop()

    # --- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        self.runtime.subscribe(
            [self._main_topic, *self._retry_topics], on_assign=self._on_assign, on_revoke=self._on_revoke
        )

    def run_forever(self, stop: threading.Event) -> None:
        self.start()
        self.runtime.run_forever(stop)

    def close(self) -> None:
        """Leave the group, close the transport and the database connection. Idempotent."""
        self.runtime.close()

    def release(self) -> None:
        try:
            self._loop.run_until_complete(self._transport.aclose())
            self._loop.close()
        finally:
            self._store.close()

    # --- rebalancing and rate share --------------------------------------------------------------

    def _on_assign(self, consumer: ConsumerPort, partitions: list[TopicPartition]) -> None:
        self._assigned |= {(p.topic, p.partition) for p in partitions}
        self._recompute_share()

    def _on_revoke(self, consumer: ConsumerPort, partitions: list[TopicPartition]) -> None:
        revoked = {(p.topic, p.partition) for p in partitions}
        for key in revoked:
            self._assigned.discard(key)
            self._paused_until.pop(key, None)
        # Records of a partition this worker no longer owns go to its new owner (from the committed offset).
        self._carry = [m for m in self._carry if (m.topic(), m.partition()) not in revoked]
        self._recompute_share()

    def _recompute_share(self) -> None:
        """This worker's share of the channel's rate: the fraction of the main topic's partitions it owns."""
        if self._channel_rate is None:
            self._bucket = None
            return
        total = self._settings.kafka.partitions
        owned = sum(1 for topic, _ in self._assigned if topic == self._main_topic)
        share = worker_share(self._channel_rate, owned, total)
        now = self._clock()
        if share <= 0:
            self._bucket, self._aimd = self._idle_bucket(), None  # an AIMD rate left over would reopen the bucket
            return
        # The bucket times request *starts*; the provider counts *arrivals*, which event-loop and network
        # jitter bunch up (measured: 67 arrivals in a 1 s window at 60/s + burst 6). Running 2% under the
        # share absorbs that; the burst stays whole because it also bounds the batch size.
        share *= RATE_HEADROOM
        burst = max(1.0, (self._channel_burst or 1) * owned / total)
        self._aimd = AimdRate(share, now)
        self._bucket = TokenBucket(share, burst, now, tokens=0)
        log.info("%s sender: %d/%d partitions, %.2f msg/s, burst %.1f", self._channel, owned, total, share, burst)

    def rate_limiter_state(self) -> Any:
        """The rate limiter now (``campaigns.metrics.RateLimiterState``), or None when unlimited.

        Called from the metrics scrape thread: it only reads (``peek`` never refills the bucket)."""
        from campaigns.metrics import RateLimiterState

        bucket, aimd = self._bucket, self._aimd
        if bucket is None or self._channel_rate is None:
            return None
        if aimd is None or bucket.rate < 1e-6:  # owns no main partition: a closed bucket, no share
            rate = share = 0.0
        else:
            rate, share = aimd.rate, aimd.max_rate
        return RateLimiterState(rate=rate, share=share, channel_rate=self._channel_rate,
                                tokens=bucket.peek(self._clock()))

    def _idle_bucket(self) -> TokenBucket:
        """No partition owned (yet): no share of the rate, so no token until an assignment brings one."""
        return TokenBucket(1e-9, 1, self._clock(), tokens=0)

    def _grantable(self, wanted: int) -> int:
        """How many of ``wanted`` calls the bucket would let start now (none is taken yet)."""
        if self._bucket is None:
            return wanted
        now = self._clock()
        if self._aimd is not None and abs(self._aimd.rate - self._bucket.rate) > 1e-9:
            self._bucket.set_rate(self._aimd.rate, now)
        return self._bucket.grantable(wanted, now)

    # --- the loop --------------------------------------------------------------------------------

    def run_once(self) -> int:
        """One batch on the runtime (take, handle, flush, commit); returns the number of records taken."""
        return self.runtime.run_once()

    def _take(self) -> list[Message]:
        """The records to handle now (the runtime's ``take``): steps 0 and 1 of the module docstring.

        Records are taken as far as there are tokens for them, counted for records in hand: never ahead of
        records still to arrive (the bucket would refill meanwhile and the provider would see the rate plus that
        refill when a campaign starts). Each call takes its token right before it starts (``_send_all``). Records
        beyond the tokens available wait in ``_carry``, in order.
        """
        self._probing = False
        self._resume_due_partitions()
        gate = self._channel_gate()
        if gate == "open":  # the provider account is paused: nothing is sent, the group still sees us alive
            self._idle(0.5)
            return []
        wanted = self._settings.sender.batch_size
        if len(self._carry) < wanted:
            timeout = 0 if self._carry else self._settings.sender.poll_timeout_s
            # Not `self._carry += consume(...)`: that extends the list read before the call, and a revoke inside
            # the call (_on_revoke) replaces the carry with one without the revoked partitions' records.
            fetched = self._consumer.consume(num_messages=wanted - len(self._carry), timeout=timeout)
            self._carry.extend(fetched)
        free = self._free_prefix() if self._bucket is not None else 0
        if free:  # records that make no provider call (a finished or paused campaign, garbage): no token
            messages, self._carry = self._carry[:free], self._carry[free:]
            return messages
        tokens = self._grantable(len(self._carry)) if self._carry else 0
        if tokens == 0:
            if gate == "probe":
                self._settle_probe([])  # nothing to probe with yet: the probe is given back
            if self._carry:
                self._wait_for_tokens()
            return []
        if gate == "probe":  # half-open: one message tells whether the provider takes our account again
            tokens = 1
            self._probing = True
        # Per partition the carry is in offset order, so a prefix of it is a prefix of every partition.
        messages, self._carry = self._carry[:tokens], self._carry[tokens:]
        return messages

    def handle(self, messages: list[Message]) -> Offsets:
        """Steps 2-6 for the records taken; the offsets the runtime commits once it has flushed."""
        if not messages:
            return {}
        calls = self.process(messages)
        if self._probing:
            self._settle_probe(calls)
        if self._paused_until:  # a held retry partition was rewound to its head: its later records come again
            self._carry = [m for m in self._carry if (m.topic(), m.partition()) not in self._paused_until]
        return self._done(messages)

    def _free_prefix(self) -> int:
        """How many records at the head of the carry will make no provider call: undecodable ones and those of
        campaigns that are not active (cancelled, failed, completed, paused: recorded or dropped). They are
        processed without waiting for tokens: after a cancel, the campaign's backlog drains at database speed,
        not at the provider's rate, and the records behind it (another campaign's) are not held up."""
        free = 0
        known: dict[str, CampaignState | None] = {}
        for msg in self._carry:
            if msg.error() is not None or msg.topic() != self._main_topic:
                break  # retry tiers keep their own order and holds; errors are handled by process
            try:
                cid = self._codec.decode(msg.value(), "RecipientMessage")["campaign_id"]
            except SchemaError:
                free += 1  # dead-lettered
                continue
            if cid not in known:
                known[cid] = self._campaign_states({cid}).get(cid) if _is_uuid(cid) else None
            state = known[cid]
            if state is None or state.status == "active":
                break  # an active campaign's message (or one process dead-letters): from here, tokens
            free += 1
        return free

    def _wait_for_tokens(self) -> None:
        """Wait for the next token without stalling the group.

        A short wait (the usual case at tens of messages per second) is just that: the channel's rate limits
        every key alike, and pausing would throw away the prefetched records (measured: 40/s instead of 60/s).
        A long wait (1/s long codes, a throttled provider) pauses every partition and keeps polling, so the
        consumer never exceeds ``max.poll.interval.ms``; partitions resume when tokens are due.
        """
        assert self._bucket is not None
        # Wait for a batch worth of tokens (up to 100 ms of the rate), not for one: every batch costs a few
        # round trips, so batches of one would cap the rate (measured: 32/s at a 60/s limit).
        wanted = max(1, min(int(self._bucket.burst), int(self._bucket.rate * 0.1)))
        wait = min(self._bucket.seconds_until(wanted, self._clock()), 0.5)
        if wait <= SHORT_TOKEN_WAIT_S:
            time.sleep(wait)
            return
        self._idle(wait)

    def _idle(self, wait: float) -> None:
        """Wait ``wait`` s with every partition paused, polling so the group keeps this member."""
        partitions = [TopicPartition(t, p) for t, p in self._assigned]
        if partitions:
            self._consumer.pause(partitions)
        # poll() serves the group protocol; a partition assigned during it is not paused yet and may hand
        # us a record: keep it for when a token is there (it is never sent early nor dropped).
        record = self._consumer.poll(max(wait, 0.001))
        if record is not None:
            self._carry.append(record)
        if partitions:
            self._consumer.resume([TopicPartition(t, p) for t, p in self._assigned
                                   if (t, p) not in self._paused_until])

    def _resume_due_partitions(self) -> None:
        now = self._clock()
        due = [key for key, until in self._paused_until.items() if until <= now]
        if due:
            for key in due:
                del self._paused_until[key]
            self._consumer.resume([TopicPartition(t, p) for t, p in due])

    def process(self, messages: list[Message]) -> list[Pending]:
        """Steps 2-6 for one batch of records; returns the claims it called out. The runtime flushes and commits."""
        self.stats.received += len(messages)
        pending: list[Pending] = []
        held: set[tuple[str, int]] = set()
        now_ms = self._clock() * 1000
        for msg in messages:
            if msg.error():
                if msg.error().code() != KafkaError._PARTITION_EOF:
                    log.warning("%s sender: consume error %s", self._channel, msg.error())
                continue
            key = (msg.topic(), msg.partition())
            if key in held:
                continue
            try:
                record = self._codec.decode(msg.value(), "RecipientMessage")
            except SchemaError as exc:
                self._dead_letter(msg, None, "undecodable", str(exc))
                continue
            not_before_ms = _as_millis(record["not_before"])
            if msg.topic() != self._main_topic and not_before_ms > now_ms:
                # A tier holds every record for the same time after it was written, so its partitions release
                # records in order and the head is always the first due: a long wait never holds up a short one.
                release_ms = min(not_before_ms, msg.timestamp()[1] + self._tier_hold_ms[msg.topic()])
                if release_ms > now_ms:  # rewind to the head and pause the partition until it is released
                    held.add(key)
                    self._consumer.seek(TopicPartition(msg.topic(), msg.partition(), msg.offset()))
                    self._consumer.pause([TopicPartition(msg.topic(), msg.partition())])
                    self._paused_until[key] = release_ms / 1000
                else:  # released by its tier but not due yet: on to the tier that fits what is left of the wait
                    self._produce_retry(record, not_before_ms - now_ms)
                continue
            if record["channel"] != self._channel:
                self._dead_letter(msg, record, "wrong_channel", f"{record['channel']} message on {msg.topic()}")
                continue
            invalid = _invalid_ids(record)
            if invalid is not None:  # would fail the batch's claim statement, on every redelivery
                self._dead_letter(msg, record, "invalid_record", invalid)
                continue
            pending.append(Pending(msg, record))

        states = self._campaign_states({p.record["campaign_id"] for p in pending})
        to_claim, to_cancel = [], []
        for p in pending:
            state = states.get(p.record["campaign_id"])
            if state is None:
                self._dead_letter(p.msg, p.record, "unknown_campaign", "no such campaign")
            elif state.status == "active":
                to_claim.append(p)
            elif state.status in FINISHED:
                to_cancel.append(p)
            # paused/scheduled/draft: dropped; resuming re-expands the campaign.
        claimed, inactive, outsiders, skipped = self._claim(to_claim)
        for p in outsiders:  # forged, or replayed into another campaign: never sent, never logged
            self._dead_letter(p.msg, p.record, "not_in_audience",
                              f"recipient {p.record['recipient_id']} is not in campaign {p.record['campaign_id']}'s "
                              "audience")
        self._emit_skipped(skipped)
        if inactive:  # paused, cancelled or failed since the state was read: the claim saw it, re-read it
            for cid in {p.record["campaign_id"] for p in inactive}:
                self._campaigns.pop(cid, None)
            fresh = self._campaign_states({p.record["campaign_id"] for p in inactive})
            to_cancel += [p for p in inactive
                          if getattr(fresh.get(p.record["campaign_id"]), "status", None) in FINISHED]
        self._record_cancelled(to_cancel)
        if claimed:
            self._loop.run_until_complete(self._send_all(claimed))
            recorded = self._record_results(claimed, states)
            self._check_breakers(recorded, states)
            self._check_channel(claimed)
        if self._metrics is not None:  # once per batch: counters grow by what the stats gained
            self._metrics.sender_batch(self._channel, self.stats, claimed)
        return claimed

    def _done(self, messages: list[Message]) -> Offsets:
        """One past each partition's last record, except a held retry partition: its position (the held head)."""
        offsets: dict[tuple[str, int], int] = {}
        for msg in messages:
            if msg.error() is None:
                key = (msg.topic(), msg.partition())
                if key in self._paused_until:
                    continue  # rewound: its position is the held record, committed below
                offsets[key] = max(offsets.get(key, -1), msg.offset() + 1)
        for topic, partition in self._paused_until:
            position = self._position(topic, partition)
            if position >= 0:
                offsets[(topic, partition)] = position
        return offsets

    def _position(self, topic: str, partition: int) -> int:
        positions = self._consumer.position([TopicPartition(topic, partition)])
        return positions[0].offset if positions else -1

    # --- campaign state ----------------------------------------------------------------------------

    def _campaign_states(self, ids: set[str]) -> dict[str, CampaignState]:
        now = self._clock()
        # Only "active" is cached: a message is never dropped or cancelled on a stale state (a resume
        # re-expands at once, and its messages must not meet a cached "paused").
        missing = [
            i for i in ids
            if i not in self._campaigns or self._campaigns[i].expires <= now or self._campaigns[i].status != "active"
        ]
        if missing:
            valid = [i for i in missing if _is_uuid(i)]
            for cid, status, retries, base, cap, jitter, threshold, min_sample in self._store.campaign_states(valid):
                self._campaigns[cid] = CampaignState(
                    status, RetryPolicy(retries, base, cap, jitter), now + CAMPAIGN_STATE_TTL_S,
                    threshold, min_sample,
                )
        return {i: self._campaigns[i] for i in ids if i in self._campaigns}

    # --- claims ------------------------------------------------------------------------------------

    def _claim(self, pending: list[Pending]) -> tuple[list[Pending], list[Pending], list[Pending], list[Pending]]:
        """Claim (campaign, recipient) for each message, atomically with the campaign being ``active``.

        Returns (claimed: this worker may send them now, inactive: their campaign is no longer active,
        outsiders: their recipient is not in the campaign's audience, skipped: their recipient may no longer be
        sent to: opted out, inactive, without an address on the channel or suppressed; they got a ``skipped`` row).

        The record only names the pair: whether it belongs to the campaign, the address and the content come
        from PostgreSQL (``sinks.audience.resolve``, the campaign's content), so a forged or altered record
        can at most cause the genuine message to the genuine address of a genuine audience member, which the
        claim then makes happen once.
        The claim transaction first takes a share lock on the campaigns' rows while they are ``active``
        (``sinks.campaign_progress.lock_active``): a pause, cancel or fail (an UPDATE of that row) waits for
        the claim to commit, and a claim that starts after it sees the new status. So once such a command has committed,
        nothing of that campaign is claimed any more; only claims committed before it are still sent.
        """
        if not pending:
            return [], [], [], []
        for cid in {p.record["campaign_id"] for p in pending} - self._contents.keys():
            self._compile_content(cid)  # before the claim's transaction: the store runs one call at a time
        deadline = time.monotonic() + self._settings.sender.claim_lease_s  # taken before the lease starts
        now = datetime.now(UTC)
        lease = now + timedelta(seconds=self._settings.sender.claim_lease_s)
        by_key = {(p.record["campaign_id"], int(p.record["recipient_id"])): p for p in pending}
        skipped: list[Pending] = []

        def prepare(active: set[str], members: dict[Any, Any]) -> tuple[list[Any], list[Any]]:
            """Inside the claim's transaction: skip who may no longer be sent to, render the rest, claim them."""
            skipped[:] = [p for key, p in by_key.items() if key in members and members[key].skip_reason]
            to_claim = {key: p for key, p in by_key.items() if key in members and not members[key].skip_reason}
            for key, p in to_claim.items():
                self._authoritative(p, members[key])
            return (self._skipped_rows(skipped, members, now),
                    [(c, r, p.record["message_id"]) for (c, r), p in to_claim.items()])

        result = self._store.claim(self._channel, list(by_key), prepare, now, lease)
        inactive = [p for p in pending if p.record["campaign_id"] not in result.active]
        outsiders = [p for key, p in by_key.items() if key[0] in result.active and key not in result.members]
        claimed: list[Pending] = []
        for key in result.claimed:
            p = by_key[key]
            p.claimed_at, p.lease_deadline = now, deadline
            claimed.append(p)
        for c, r, attempts in result.taken_over:  # a retrying row (this is its retry) or an expired claim
            p = by_key[(c, r)]
            p.claimed_attempts = attempts
            p.claimed_at, p.lease_deadline = now, deadline
            claimed.append(p)
        self._settle_unclaimed(result.existing, by_key)
        return claimed, inactive, outsiders, skipped

    def _compile_content(self, cid: str) -> None:
        """The campaign's content per locale, compiled once (or why it cannot be rendered)."""
        if not _is_uuid(cid):
            return
        default, max_segments, rows = self._store.content(cid)
        compiled: dict[str, CompiledContent | Refusal] = {}
        for locale, subject, body, template_name, parameters, header in rows:
            try:
                compiled[locale] = CompiledContent(self._channel, locale, subject, body, template_name,
                                                   parameters, max_segments, header)
            except Exception as exc:  # stored content the service validated always compiles
                log.error("campaign %s: its %s content does not compile (%s); its messages fail", cid, locale, exc)
                compiled[locale] = Refusal(f"invalid_content: {exc}"[:200])
        self._contents[cid] = (default, compiled)

    def _authoritative(self, p: Pending, member: Any) -> None:
        """Give ``p`` the recipient's current address and the campaign's content for its locale, rendered
        for its profile (``campaigns.core.content``: compiled once per campaign, a few microseconds per
        message); a message that may not go out as rendered gets ``p.refusal``. ``p.record`` is left as consumed."""
        cid = p.record["campaign_id"]
        default, by_locale = self._contents[cid]
        p.address = member.address
        locale = pick_locale(list(by_locale), member.locale, default)
        if locale is None:  # the campaign has no content (its rows deleted): nothing of the record's is sent
            p.refusal = "no_content"
            return
        p.locale, content = locale, by_locale[locale]
        if isinstance(content, Refusal):
            p.refusal = content.reason
            return
        values = member.profile
        if self._channel == "email" and member.customer_id > 0:
            token = make_token(self._unsubscribe.secret_bytes(), member.customer_id, "email", cid)
            p.unsubscribe = list_unsubscribe(self._unsubscribe.url, self._unsubscribe.mailto, token)
            values["unsubscribe_url"] = p.unsubscribe[0]
        rendered = content.render(values)
        if isinstance(rendered, Refusal):
            p.refusal = rendered.reason
            return
        assert isinstance(rendered, Rendered)
        p.subject, p.body, p.text_body = rendered.subject, rendered.body, rendered.text_body
        p.template_name, p.template_parameters = content.template_name, rendered.parameters
        p.header_parameters = rendered.header_parameters

    def _skipped_rows(self, skipped: list[Pending], members: dict[Any, Any], now: datetime) -> list[Any]:
        rows = []
        for p in skipped:
            key = (p.record["campaign_id"], int(p.record["recipient_id"]))
            rows.append((key[0], key[1], p.record["message_id"], self._channel, "skipped", members[key].skip_reason,
                         now, now))
        return rows

    def _emit_skipped(self, skipped: list[Pending]) -> None:
        """SKIPPED outcomes for every message whose row is ``skipped`` (after the claim committed; again on a
        redelivery, same outcome id)."""
        by_campaign: dict[str, dict[int, Pending]] = {}
        for p in skipped:
            by_campaign.setdefault(p.record["campaign_id"], {})[int(p.record["recipient_id"])] = p
        for cid, ps in by_campaign.items():
            for recipient, _message_id, reason, updated_at in self._store.terminal_rows(cid, list(ps), "skipped"):
                self._outcome(ps[recipient].record, "SKIPPED", 0, reason, None, None, occurred=updated_at)

    def _settle_unclaimed(self, rows: list[Any], unclaimed: dict[tuple[str, int], Pending]) -> None:
        """Messages whose recipient already has a row this worker cannot take.

        Terminal row: a duplicate; its outcome is produced again (same outcome id, so analytics count it once;
        occurred when the row took its status) in case the crash that caused the redelivery lost it. Live claim of
        another worker: held in retry tier 1 until the lease ends, so a claim left by a dead worker is never
        stuck.
        """
        for c, r, status, attempts, reason, provider_id, lease_until, updated_at in rows:
            p = unclaimed[(c, r)]
            if status in ("sent", "failed", "skipped", "cancelled"):
                self.stats.duplicates_dropped += 1
                # Same outcome id as the first time: skipped/cancelled carry attempt 0, sent/failed their count.
                attempt = 0 if status in ("skipped", "cancelled") else attempts
                self._outcome(p.record, status.upper(), attempt, reason, provider_id, None, occurred=updated_at)
            elif status == "claimed":
                not_before = int(lease_until.timestamp() * 1000) + 100
                self._produce_retry(dict(p.record, not_before=not_before), not_before - self._clock() * 1000)

    def _record_cancelled(self, pending: list[Pending]) -> None:
        """Messages of a finished campaign: their recipient gets a ``cancelled`` row unless it has a terminal
        one (a ``retrying`` row becomes ``cancelled``). After the commit, every message whose row is
        ``cancelled`` emits its CANCELLED outcome, including rows cancelled earlier: a redelivery after a
        crash that lost the outcome emits it again (same outcome id, counted once)."""
        if not pending:
            return
        now = datetime.now(UTC)
        by_key = {(p.record["campaign_id"], int(p.record["recipient_id"])): p for p in pending}
        messages = [(c, r, p.record["message_id"]) for (c, r), p in by_key.items()]
        cancelled, rows = self._store.cancel(self._channel, messages, now)
        self.stats.cancelled += cancelled
        for c, r, reason, updated_at in rows:
            self._outcome(by_key[(c, r)].record, "CANCELLED", 0, reason, None, None, occurred=updated_at)

    # --- sending -----------------------------------------------------------------------------------

    async def _send_all(self, claimed: list[Pending]) -> None:
        """Send the batch with at most ``sender.max_in_flight`` calls at a time (and no more than the transport's
        ``concurrency``): that many lanes, each taking the next message when its call ends (one task per lane
        rather than one per message, and no semaphore: their bookkeeping cost more than the in-process part of
        many transports' calls)."""
        queue = iter(claimed)
        loop, send = asyncio.get_running_loop(), self._transport.send
        honours_deadline = getattr(self._transport, "honours_deadline", False)  # the Transport port
        bucket, clock = self._bucket, self._clock  # a rebalance (the only thing that replaces it) waits for us

        async def lane() -> None:
            for p in queue:
                await send_one(p)

        async def send_one(p: Pending) -> None:
            if p.refusal is not None:  # rendered past what the channel or campaign allows: failed, never sent
                p.result, p.reason = "failed", p.refusal
                return
            r = p.record
            message = OutgoingMessage(
                message_id=r["message_id"], campaign_id=r["campaign_id"], recipient_id=r["recipient_id"],
                channel=self._channel, address=p.address, body=p.body, subject=p.subject,
                template_name=p.template_name, locale=p.locale, template_parameters=p.template_parameters,
                text_body=p.text_body, list_unsubscribe=p.unsubscribe, header_parameters=p.header_parameters,
            )
            # Each call takes its token right before it starts: the provider counts arrivals, and tokens taken
            # for the batch before its claim let the claim's varying commit time bunch two batches' calls up.
            if bucket is not None and not bucket.try_take(1, clock()) and not await self._token(bucket, p):
                p.result = "expired"  # the lease ran out waiting: not sent, handed back
                return
            # The whole call (a pooled connection included) must end before the lease does, or another
            # worker could take the claim over and send the message too.
            budget = min(self._call_timeout_s, p.lease_deadline - time.monotonic() - LEASE_MARGIN_S)
            if budget < MIN_CALL_BUDGET_S:
                # Too little lease left (a long pause, a stalled batch): another worker may soon hold the
                # claim. Not sending is safe; the message is handed back.
                p.result = "expired"
                return
            started = time.perf_counter()
            try:
                if honours_deadline:  # the transport ends the call by then itself: one timer per call, not two
                    receipt = await send(message, deadline=loop.time() + budget)  # type: ignore[call-arg]
                else:
                    async with asyncio.timeout(budget):  # no task per call, unlike asyncio.wait_for
                        receipt = await send(message)
            except ProviderAccountError as exc:  # our account, not the recipient: the channel pauses
                p.result, p.reason = "held", exc.reason
            except ThrottledError as exc:
                p.result, p.reason, p.retry_after = "retry", f"throttled: {exc.reason}", exc.retry_after
                self.stats.throttled += 1
            except TransientDeliveryError as exc:
                p.result, p.reason, p.retry_after = "retry", exc.reason, exc.retry_after
            except PermanentDeliveryError as exc:
                p.result, p.reason = "failed", exc.reason
            except DeliveryError as exc:
                p.result, p.reason = "retry", str(exc)
            except TimeoutError:  # cut at its budget: it may have reached the provider, like any timeout
                p.result, p.reason = "retry", "timeout"
            except Exception as exc:  # a transport bug must not lose the batch: treat it as transient
                log.exception("%s transport raised unexpectedly", self._channel)
                p.result, p.reason = "retry", f"transport_error: {type(exc).__name__}"
            else:
                p.result, p.provider_id = "sent", receipt.provider_message_id
            p.latency_ms = (time.perf_counter() - started) * 1000

        await asyncio.gather(*(lane() for _ in range(min(len(claimed), self._max_in_flight))))

    async def _token(self, bucket: TokenBucket, p: Pending) -> bool:
        """Wait for one token for ``p``'s call; False if its lease would be too short for the call by then.

        ``_take`` took only as many records as there were tokens, so a wait is short and rare: another lane of
        the batch took one first, or a campaign resumed after ``_take`` saw it paused (its records took none)."""
        give_up = p.lease_deadline - LEASE_MARGIN_S - MIN_CALL_BUDGET_S
        while not bucket.try_take(1, self._clock()):
            left = give_up - time.monotonic()
            if left <= 0:
                return False
            await asyncio.sleep(min(bucket.seconds_until(1, self._clock()), 0.5, left))
        return True

    def _record_results(self, claimed: list[Pending], states: dict[str, CampaignState]) -> list[Pending]:
        """Write every result in one UPDATE, then emit outcomes, retries and dead letters only for the rows
        this worker still held: if a slow call outlived its lease and another worker took the claim over,
        that worker's result is the one recorded and counted (one terminal outcome per recipient)."""
        now = datetime.now(UTC)
        rows = []
        effects: dict[tuple[str, int], Callable[[], None]] = {}
        throttled = False
        expired = 0
        for p in claimed:
            r = p.record
            key = (r["campaign_id"], int(r["recipient_id"]))
            attempt = p.claimed_attempts  # 0-based number of this provider call
            if p.result == "expired":  # claimed again from retry tier 1 (a take-over, or a terminal duplicate)
                self._produce_retry(dict(r, not_before=int(self._clock() * 1000)), 0)
                expired += 1
                continue
            if p.result == "sent":
                rows.append((*key, "sent", attempt + 1, None, p.provider_id))
                effects[key] = partial(self._on_sent, p, attempt + 1)
                continue
            if p.result == "held":  # not an attempt: back to retrying, sent once the channel closes again
                rows.append((*key, "retrying", attempt, f"channel_paused: {p.reason}", None))
                effects[key] = partial(self._produce_retry, dict(r, not_before=int(self._clock() * 1000)), 0)
                continue
            throttled = throttled or (p.reason or "").startswith("throttled")
            kind = "permanent" if p.result == "failed" else "transient"
            decision = decide(states[r["campaign_id"]].policy, attempt, kind, random.random(), now,
                              tier_delays_s=self._tier_delays, retry_after_s=p.retry_after)
            if decision.action == "retry":
                rows.append((*key, "retrying", attempt + 1, p.reason, None))
                effects[key] = partial(self._on_retry, p, attempt + 1, decision)
            else:
                reason = p.reason if decision.reason == "permanent_failure" else f"retries_exhausted: {p.reason}"
                p.final_failure = True
                rows.append((*key, "failed", attempt + 1, reason, None))
                effects[key] = partial(self._on_failed, p, attempt + 1, reason, decision.reason or "failed")
        if self._aimd is not None:
            clock = self._clock()
            if throttled:
                self._aimd.on_throttled(clock)
            else:
                self._aimd.on_success(len(claimed), clock)
        recorded: list[tuple[str, int]] = []
        if rows:  # none when every claim expired before its call
            # One claim transaction made every claim of the batch (_claim): they share its claimed_at.
            claimed_at = claimed[0].claimed_at
            assert claimed_at is not None
            recorded = self._store.record_results(rows, claimed_at, now)
        for key in recorded:
            effects[(key[0], key[1])]()
        held = {(c, r) for c, r in recorded}
        if expired:
            log.warning("%s sender: %d claims outlived their %.0f s lease before their call; not sent, handed "
                        "back", self._channel, expired, self._settings.sender.claim_lease_s)
        lost = len(rows) - len(recorded)
        if lost:
            log.warning("%s sender: %d claims were taken over by another worker before their results were "
                        "recorded (calls slower than the %.0f s lease)", self._channel, lost,
                        self._settings.sender.claim_lease_s)
        return [p for p in claimed if (p.record["campaign_id"], int(p.record["recipient_id"])) in held]

    # --- the channel breaker (campaigns.core.breaker) ------------------------------------------------

    def _channel_gate(self) -> str:
        """``closed`` (send), ``open`` (send nothing) or ``probe`` (this worker may send one message to test
        the provider), from the channel's row (re-read every ``CHANNEL_STATE_TTL_S``)."""
        reason, read_at = self._channel_open
        now = time.monotonic()
        if now - read_at < CHANNEL_STATE_TTL_S and reason is None:
            return "closed"
        reason, probe = self._store.channel_gate(
            self._channel, datetime.now(UTC),
            lambda taken: datetime.now(UTC) + timedelta(seconds=next_probe_delay_s(taken)))
        self._channel_open = (reason, now)
        self._report_channel("half_open" if probe else "open" if reason else "closed")
        return "probe" if probe else "open" if reason else "closed"

    def _settle_probe(self, calls: list[Pending]) -> None:
        """A probe that reached the provider and was not refused for our account closes the channel; one
        that made no call (a duplicate, a cancelled campaign) is given back."""
        if not calls:
            self._store.give_back_probe(self._channel, datetime.now(UTC))
        elif any(p.result not in ("held", "expired") and (p.reason or "") not in TRANSPORT_REASONS for p in calls):
            if self._store.close_channel(self._channel):
                log.warning("%s channel: the provider accepts our account again; breaker closed", self._channel)
            self._channel_open = (None, time.monotonic())
            self._report_channel("closed")

    def _check_channel(self, calls: list[Pending]) -> None:
        """Open the channel's breaker on an account error, or on a run of transport errors."""
        account = next((p.reason for p in calls if p.result == "held"), None)
        run_over = False
        for p in calls:
            if p.result != "expired":
                run_over = self._transport_errors.record(
                    p.result == "retry" and ((p.reason or "") in TRANSPORT_REASONS
                                             or (p.reason or "").startswith("server_error")))
        reason = account or ("transport_errors" if run_over else None)
        if reason is None:
            return
        now = datetime.now(UTC)
        opened = self._store.open_channel(self._channel, reason, now, now + timedelta(seconds=next_probe_delay_s(0)))
        self._transport_errors = TransportErrorRun(self._transport_errors.limit)
        self._channel_open = (reason, time.monotonic())
        self._report_channel("open")
        if opened:
            why = f"refused our account ({reason})" if account else "is unreachable (a run of transport errors)"
            log.error("%s channel paused: the provider %s; no recipient is failed for it. Half-open probes "
                      "follow; `campaigns channel close %s` closes it by hand", self._channel, why, self._channel)

    def _report_channel(self, state: str) -> None:
        if self._metrics is not None:
            self._metrics.channel_breaker(self._channel, state)

    def _check_breakers(self, recorded: list[Pending], states: dict[str, CampaignState]) -> None:
        """Feed this batch's final results to the campaigns' failure breakers, in order; fail every campaign
        whose breaker is tripped, before this consumer claims its next batch (so after the crossing only the
        batches already claimed go out: this one, and one per other sender consumer of the worker). The claim's
        status check then keeps every later message of it from being sent."""
        attempts = [(p.record["campaign_id"], p.result != "sent") for p in recorded
                    if p.result == "sent" or p.final_failure]  # a retry is not an attempt yet (campaigns.core.breaker)
        if not attempts:
            return
        limits = lambda cid: (states[cid].failure_threshold, states[cid].failure_min_sample)  # noqa: E731
        for cid, trip in self._breakers.record(attempts, limits).items():
            detail = {"failed": trip.failures, "attempts": trip.attempts, "window": trip.window,
                      "threshold": trip.threshold, "by": f"{self._channel} sender"}
            self._campaigns.pop(cid, None)
            if self._service.finish_campaign(uuid.UUID(cid), CampaignAction.FAIL, detail):
                log.error("campaign %s failed: %d of its last %d attempts failed (threshold %.2f); "
                          "sending stopped", cid, trip.failures, trip.attempts, trip.threshold)
                if self._metrics is not None:
                    self._metrics.campaign_transition("failed")

    def _produce_retry(self, record: dict[str, Any], wait_ms: float) -> None:
        """Put ``record`` in the retry tier that fits the ``wait_ms`` it still has to wait."""
        self._produce_to_tier(tier_for_wait(max(wait_ms, 0) / 1000, self._tier_delays), record)

    def _produce_to_tier(self, tier: int, record: dict[str, Any]) -> None:
        """``record`` without content (``unrendered_fields()``, whatever the consumed record carried: the next claim
        renders the stored content again) to retry tier ``tier``."""
        self._producer.produce(self._retry_topics[tier - 1], record["recipient_id"],
                               self._codec.encode("RecipientMessage", {**record, **unrendered_fields()}))

    def _on_sent(self, p: Pending, attempts: int) -> None:
        self._outcome(p.record, "SENT", attempts, None, p.provider_id, p.latency_ms)
        self.stats.sent += 1

    def _on_retry(self, p: Pending, attempts: int, decision: Any) -> None:
        r = p.record
        self._produce_to_tier(decision.tier, dict(r, attempt=decision.attempt, not_before=decision.not_before_ms,
                                                  last_error=p.reason))
        self._outcome(r, "RETRYING", attempts, p.reason, None, p.latency_ms)
        self.stats.retried += 1

    def _on_failed(self, p: Pending, attempts: int, reason: str, dead_letter_reason: str) -> None:
        self._outcome(p.record, "FAILED", attempts, reason, None, p.latency_ms)
        self._dead_letter(p.msg, p.record, dead_letter_reason, reason, attempts=attempts)
        self.stats.failed += 1

    # --- output records ----------------------------------------------------------------------------

    def _outcome(
        self, r: dict[str, Any], status: str, attempt: int, reason: str | None, provider_id: str | None,
        latency_ms: float | None, occurred: datetime | None = None,
    ) -> None:
        """Produce the outcome; it occurred now, or at ``occurred`` (a row's ``updated_at``: an outcome produced
        again for a row that took its status earlier)."""
        occurred_ms = int(self._clock() * 1000) if occurred is None else int(occurred.timestamp() * 1000)
        self._producer.produce(
            self._outcomes_topic,
            r["recipient_id"],
            self._codec.encode(
                "DeliveryOutcome",
                {
                    "outcome_id": f"{r['message_id']}:{attempt}:{status}", "message_id": r["message_id"],
                    "campaign_id": r["campaign_id"], "recipient_id": r["recipient_id"], "channel": self._channel,
                    "status": status, "attempt": attempt, "latency_ms": latency_ms, "failure_reason": reason,
                    "provider_message_id": provider_id, "occurred_at": occurred_ms,
                },
            ),
        )

    def _dead_letter(
        self, msg: Message, record: dict[str, Any] | None, reason: str, detail: str | None, attempts: int = 0
    ) -> None:
        self._dead_letters.write(
            msg, reason, detail, message_id=record["message_id"] if record else None,
            campaign_id=record["campaign_id"] if record else None,
            recipient_id=record["recipient_id"] if record else None, channel=self._channel, attempts=attempts,
            key=msg.key() or b"",
        )
        self.stats.dead_lettered += 1
        self.stats.dead_letter_reasons[reason] = self.stats.dead_letter_reasons.get(reason, 0) + 1


def _as_millis(value: Any) -> float:
    if isinstance(value, datetime):
        return value.timestamp() * 1000
    return float(value or 0)


def _invalid_ids(record: dict[str, Any]) -> str | None:
    """Why the record cannot be claimed (the log keys it by a bigint recipient and a uuid message id), or None."""
    recipient = record["recipient_id"]
    if not (recipient.isascii() and recipient.isdigit() and len(recipient) <= 19 and int(recipient) <= _BIGINT_MAX):
        return f"recipient_id {recipient[:40]!r} is not a customer id"
    if not _is_campaign_id(record["campaign_id"]):
        return f"campaign_id {record['campaign_id'][:40]!r} is not a UUID in canonical form"
    if not _is_uuid(record["message_id"]):
        return f"message_id {record['message_id'][:40]!r} is not a UUID in canonical form"
    return None


@functools.lru_cache(maxsize=4096)
def _is_campaign_id(value: str) -> bool:
    """:func:`_is_uuid`, remembered: a batch names a handful of campaigns (its message ids are all different)."""
    return _is_uuid(value)


def _is_uuid(value: str) -> bool:
    return _CANONICAL_UUID.fullmatch(value) is not None


# The log's keys go into array literals unquoted (sinks.arrays.plain_array_literal): only the canonical
# 8-4-4-4-12 hex form passes, not the braces, URN or undashed forms uuid.UUID and PostgreSQL also accept.
_CANONICAL_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
