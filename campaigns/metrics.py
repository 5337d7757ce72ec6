"""Prometheus metrics of the pipeline: :class:`PipelineMetrics` and its ``/metrics`` endpoint.

Every metric is named ``campaigns_*`` (plus the standard ``process_*`` / ``python_*`` of the process) and
is documented, with example PromQL, in ``docs/metrics.md``.

Design:

* **One registry per instance.** :class:`PipelineMetrics` owns a ``CollectorRegistry``, so several workers
  (or tests) in one process never collide on the global registry.
* **Cheap hot path.** Stages report per batch or per page, never per message: a sender hands over its
  cumulative :class:`~streams.sender.SenderStats` once per batch and the counters grow by the difference.
  The only per-message work is one histogram observation per provider call.
* **Gauges at scrape time.** Consumer lag, DLQ size and rate-limiter state are computed by a custom
  collector when Prometheus scrapes. Kafka offsets come from an :class:`OffsetsSource` (an AdminClient
  with short timeouts in production, a fake in unit tests) and are cached for ``offsets_ttl_s`` (2 s) so
  frequent or concurrent scrapes cost one round of admin requests at most; a failed round is cached too,
  so an unreachable broker never makes every scrape wait for the timeout.
* **Low cardinality.** Labels are channel, outcome/status, dead-letter reason, campaign state, consumer
  group and topic: all bounded sets. No campaign or recipient ids.
* **Loopback by default.** :meth:`PipelineMetrics.start_http_server` binds ``settings.metrics_host``
  (127.0.0.1 unless configured); nothing from settings but channel and topic names reaches a label, so
  no secret can appear on the endpoint.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from campaigns.core.states import CampaignStatus
from campaigns.core.vocabulary import CHANNELS
from campaigns.settings import KafkaSettings, Settings
from campaigns.topics import (
    ANALYTICS_PARTS,
    COMMANDS,
    MESSAGES_DLQ,
    OUTCOME_BATCHES,
    OUTCOMES,
    RECEIPTS,
    RECEIPTS_GROUP,
    TALLY_FORWARDER_GROUP,
    TALLY_GROUP,
    commands_group,
    messages_topic,
    retry_topic,
    sender_group,
)

log = logging.getLogger(__name__)

__all__ = [
    "LATENCY_BUCKETS",
    "KafkaOffsets",
    "OffsetsSource",
    "PipelineMetrics",
    "RateLimiterState",
    "consumer_lag",
    "default_lag_groups",
]

# Provider calls take from ~1 ms (a local simulator) to the 10 s transport timeout.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# The steps of a stage's batch the runtime times (streams.runtime.StageRuntime.run_once).
BATCH_STEPS = ("take", "handle", "flush")

# SenderStats fields counted per channel (dead letters are counted per reason, below).
SENDER_COUNTERS = {
    "sent": "messages accepted by the provider",
    "failed": "messages recorded failed (permanent failure or retries exhausted)",
    "retried": "provider attempts that failed transiently and went to a retry tier",
    "cancelled": "messages recorded cancelled because their campaign was cancelled or failed",
    "duplicates_dropped": "redelivered messages whose recipient already had a terminal row (not sent again)",
    "throttled": "provider calls answered with a throttle (HTTP 429 or equivalent)",
}
DEAD_LETTER_REASONS = (
    "undecodable", "wrong_channel", "unknown_campaign", "permanent_failure", "retries_exhausted", "failed",
    "invalid_record", "not_in_audience",
)
ATTEMPT_RESULTS = ("sent", "retry", "failed")
# What the receipts stage did with a receipt (streams/receipts.py): applied to its row (changed or not), one of
# the row's counters set (a NULL -> set transition, what campaign_analytics adds), the address newly suppressed,
# held because its send was not recorded yet (each hold counts), dropped after the hold, undecodable.
RECEIPT_RESULTS = ("applied", "counted", "suppressed", "held", "unmatched", "undecodable")
BREAKER_STATES = {"closed": 0, "half_open": 1, "open": 2}
CAMPAIGN_STATES = tuple(s.value for s in CampaignStatus if s is not CampaignStatus.DRAFT)
DLQ_TOPIC = MESSAGES_DLQ
OTHER = "other"  # any value outside a bounded label set is reported as this, never as itself

TopicPartitionKey = tuple[str, int]


# --- rate limiter state --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RateLimiterState:
    """A sender's rate limiter at one moment (all rates in messages per second)."""

    rate: float  # current rate after AIMD back-off
    share: float  # this worker's configured share of the channel's limit
    channel_rate: float  # the channel's configured limit, for all workers together
    tokens: float  # tokens in the bucket now


# --- Kafka offsets ---------------------------------------------------------------------------------------


class OffsetsSource(Protocol):
    """Where the collector reads Kafka offsets. Topic and group names are physical (prefixed)."""

    def partitions(self, topics: Sequence[str]) -> dict[str, list[int]]:
        """Partition numbers of each topic that exists (missing topics are left out)."""
        ...

    def watermarks(self, partitions: Sequence[TopicPartitionKey]) -> dict[TopicPartitionKey, tuple[int, int]]:
        """(low, high) watermark of each partition."""
        ...

    def committed(
        self, requests: Mapping[str, Sequence[TopicPartitionKey]]
    ) -> dict[str, dict[TopicPartitionKey, int]]:
        """Committed offset of each group on each partition asked for; negative when none."""
        ...


class KafkaOffsets:
    """:class:`OffsetsSource` over a confluent-kafka AdminClient, every request bounded by ``timeout_s``.

    The client is created on first use (nothing connects at construction). Batched: one metadata request,
    two ListOffsets requests (earliest, latest) for every partition, and one OffsetFetch per group, all
    groups in flight at once.
    """

    def __init__(self, kafka: KafkaSettings, timeout_s: float = 1.0) -> None:
        self._conf = kafka.as_librdkafka(**{"socket.timeout.ms": max(1000, int(timeout_s * 1000))})
        self._timeout_s = timeout_s
        self._admin: Any = None

    def _client(self) -> Any:
        if self._admin is None:
            from confluent_kafka.admin import AdminClient

            self._admin = AdminClient(self._conf)
        # An AdminClient hands librdkafka's log lines to its logger only when polled: serve them now, so
        # they reach the log (and do not pile up) while the broker is unreachable.
        self._admin.poll(0)
        return self._admin

    def partitions(self, topics: Sequence[str]) -> dict[str, list[int]]:
        metadata = self._client().list_topics(timeout=self._timeout_s)
        found = {}
        for name in topics:
            topic = metadata.topics.get(name)
            if topic is not None and topic.error is None:
                found[name] = sorted(topic.partitions)
        return found

    def watermarks(self, partitions: Sequence[TopicPartitionKey]) -> dict[TopicPartitionKey, tuple[int, int]]:
        if not partitions:
            return {}
        from confluent_kafka import TopicPartition
        from confluent_kafka.admin import OffsetSpec  # type: ignore[attr-defined]

        admin = self._client()
        earliest, latest = OffsetSpec.earliest(), OffsetSpec.latest()  # type: ignore[no-untyped-call]
        low = admin.list_offsets({TopicPartition(t, p): earliest for t, p in partitions},
                                 request_timeout=self._timeout_s)
        high = admin.list_offsets({TopicPartition(t, p): latest for t, p in partitions},
                                  request_timeout=self._timeout_s)
        lows = {(tp.topic, tp.partition): f.result(timeout=self._timeout_s).offset for tp, f in low.items()}
        highs = {(tp.topic, tp.partition): f.result(timeout=self._timeout_s).offset for tp, f in high.items()}
        return {key: (lows[key], highs[key]) for key in highs if key in lows}

    def committed(
        self, requests: Mapping[str, Sequence[TopicPartitionKey]]
    ) -> dict[str, dict[TopicPartitionKey, int]]:
        from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition

        admin = self._client()
        futures = {}
        for group, partitions in requests.items():
            if partitions:  # the API takes one group per request: send them all, then wait
                request = ConsumerGroupTopicPartitions(group, [TopicPartition(t, p) for t, p in partitions])
                futures.update(admin.list_consumer_group_offsets([request], request_timeout=self._timeout_s))
        result: dict[str, dict[TopicPartitionKey, int]] = {}
        for group, future in futures.items():
            answer = future.result(timeout=self._timeout_s)
            result[group] = {(tp.topic, tp.partition): tp.offset for tp in answer.topic_partitions}
        return result


def consumer_lag(
    watermarks: Mapping[TopicPartitionKey, tuple[int, int]], committed: Mapping[TopicPartitionKey, int]
) -> int:
    """Records not yet consumed by a group over the given partitions: sum of ``high - committed``.

    A partition with no committed offset counts everything retained (``high - low``): the group will start
    from the earliest record (``auto.offset.reset=earliest``). A committed offset below the low watermark
    (retention deleted records) counts from the low watermark.
    """
    total = 0
    for key, (low, high) in watermarks.items():
        position = committed.get(key, -1)
        position = low if position < 0 else max(position, low)
        total += max(0, high - position)
    return total


def default_lag_groups(settings: Settings, channels: Iterable[str] = CHANNELS) -> dict[str, list[str]]:
    """Consumer group -> the topics it consumes (physical names), for the stages of the pipeline.

    The group names follow the stages: ``sender-<channel>`` (streams/sender.py), the Faust analytics' app id
    ``campaigns-analytics`` (streams/tally.py; over the batched outcomes and its parts topic) and its forwarder's
    ``campaigns-analytics-forwarder`` (over the outcomes), the receipts stage's and the
    command consumer's (streams/commands.py), all with the topic prefix.
    """

    kafka = settings.kafka
    groups: dict[str, list[str]] = {}
    tiers = range(1, settings.sender.retry_tiers + 1)
    for channel in channels:
        groups[kafka.topic(sender_group(channel))] = [
            kafka.topic(messages_topic(channel)),
            *(kafka.topic(retry_topic(channel, n)) for n in tiers),
        ]
    groups[kafka.topic(TALLY_FORWARDER_GROUP)] = [kafka.topic(OUTCOMES)]
    groups[kafka.topic(TALLY_GROUP)] = [kafka.topic(OUTCOME_BATCHES), kafka.topic(ANALYTICS_PARTS)]
    groups[kafka.topic(RECEIPTS_GROUP)] = [kafka.topic(RECEIPTS)]
    groups[commands_group(kafka.topic_prefix, kafka.client_id)] = [kafka.topic(COMMANDS)]
    return groups


@dataclass(frozen=True, slots=True)
class OffsetsView:
    lag: dict[tuple[str, str], int]  # (group, topic) -> records behind
    dlq_messages: int | None  # None when the DLQ topic does not exist (yet)


class _OffsetsCache:
    """Reads lag and DLQ size from an :class:`OffsetsSource` at most once per ``ttl_s``."""

    def __init__(
        self, source: OffsetsSource, groups: Mapping[str, Sequence[str]], dlq_topic: str | None, ttl_s: float,
        clock: Callable[[], float],
    ) -> None:
        self._source = source
        self._groups = {g: list(t) for g, t in groups.items()}
        self._dlq_topic = dlq_topic
        self._ttl_s = ttl_s
        self._clock = clock
        self._lock = threading.Lock()  # per scrape, not per message: concurrent scrapes share one read
        self._at: float | None = None
        self._view: OffsetsView | None = None

    def get(self) -> OffsetsView | None:
        with self._lock:
            now = self._clock()
            if self._at is None or now - self._at >= self._ttl_s:
                try:
                    self._view = self._read()
                except Exception as exc:  # a scrape must never fail because Kafka is slow or down
                    log.warning("metrics: could not read Kafka offsets (%s); lag and DLQ size omitted", exc)
                    self._view = None
                self._at = now
            return self._view

    def _read(self) -> OffsetsView:
        topics = sorted({t for ts in self._groups.values() for t in ts})
        if self._dlq_topic is not None and self._dlq_topic not in topics:
            topics.append(self._dlq_topic)
        partitions = self._source.partitions(topics)
        keys = [(t, p) for t in topics for p in partitions.get(t, ())]
        marks = self._source.watermarks(keys)
        requests = {g: [(t, p) for t in ts for p in partitions.get(t, ())] for g, ts in self._groups.items()}
        committed = self._source.committed(requests)
        lag: dict[tuple[str, str], int] = {}
        for group, group_topics in self._groups.items():
            offsets = committed.get(group, {})
            for topic in group_topics:
                if topic not in partitions:
                    continue
                topic_marks = {(t, p): m for (t, p), m in marks.items() if t == topic}
                lag[(group, topic)] = consumer_lag(topic_marks, offsets)
        dlq = None
        if self._dlq_topic is not None and self._dlq_topic in partitions:
            dlq = sum(high - low for (t, _), (low, high) in marks.items() if t == self._dlq_topic)
        return OffsetsView(lag, dlq)


class _PipelineCollector(Collector):
    """The scrape-time gauges: rate limiters, consumer lag, DLQ size."""

    def __init__(self, metrics: PipelineMetrics) -> None:
        self._metrics = metrics

    def describe(self) -> list[Metric]:
        return []  # registering must not read Kafka; the names are unique by construction

    def collect(self) -> Iterator[Metric]:
        yield from self._rate_limiters()
        cache = self._metrics._offsets
        if cache is None:
            return
        up = GaugeMetricFamily("campaigns_kafka_offsets_up",
                               "1 if the last read of Kafka offsets (lag, DLQ size) succeeded, else 0")
        view = cache.get()
        up.add_metric([], 0.0 if view is None else 1.0)
        yield up
        if view is None:
            return
        lag = GaugeMetricFamily(
            "campaigns_consumer_lag",
            "records not yet consumed by a consumer group, summed over a topic's partitions",
            labels=["group", "topic"],
        )
        strip = self._metrics._logical
        for (group, topic), value in sorted(view.lag.items()):
            lag.add_metric([strip(group), strip(topic)], float(value))
        yield lag
        if view.dlq_messages is not None:
            yield GaugeMetricFamily(
                "campaigns_dlq_messages",
                "records retained in campaign.messages.dlq (sum of high - low watermarks)",
                value=float(view.dlq_messages),
            )

    def _rate_limiters(self) -> Iterator[Metric]:
        families = {
            "rate": GaugeMetricFamily("campaigns_rate_limit_rate",
                                      "current send rate of this worker after AIMD back-off, messages/s",
                                      labels=["channel"]),
            "share": GaugeMetricFamily("campaigns_rate_limit_share",
                                       "this worker's configured share of the channel's limit, messages/s",
                                       labels=["channel"]),
            "channel_rate": GaugeMetricFamily("campaigns_rate_limit_channel_rate",
                                              "the channel's configured limit for all workers, messages/s",
                                              labels=["channel"]),
            "tokens": GaugeMetricFamily("campaigns_rate_limit_tokens",
                                        "tokens in this worker's bucket for the channel", labels=["channel"]),
        }
        for channel, read in sorted(self._metrics._rate_limiters.items()):
            try:
                state = read()
            except Exception as exc:  # the sender may be mid-rebuild; skip it this scrape
                log.debug("metrics: rate limiter of %s unreadable: %s", channel, exc)
                continue
            if state is None:
                continue  # unlimited (rate limits off, or no limit configured)
            for name, family in families.items():
                family.add_metric([channel], float(getattr(state, name)))
        yield from families.values()


# --- the metrics object ------------------------------------------------------------------------------------


class PipelineMetrics:
    """Counters, histograms and scrape-time gauges of one worker, on a registry of its own.

    Thread-safe: each stage reports from its own thread. ``settings`` supplies the endpoint's host/port
    and the Kafka cluster whose offsets are read; without settings (or with ``offsets=False``) no lag or
    DLQ gauges are produced. ``offsets`` may be any :class:`OffsetsSource` (tests pass a fake).
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        channels: Iterable[str] = CHANNELS,
        offsets: OffsetsSource | bool = True,
        lag_groups: Mapping[str, Sequence[str]] | None = None,
        offsets_ttl_s: float = 2.0,
        offsets_timeout_s: float = 1.0,
        process_metrics: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.channels = tuple(channels)
        self.registry = CollectorRegistry(auto_describe=True)
        self._prefix = settings.kafka.topic_prefix if settings is not None else ""
        self._server: Any = None
        self._server_thread: threading.Thread | None = None
        self._rate_limiters: dict[str, Callable[[], RateLimiterState | None]] = {}
        self._sender_seen: dict[int, tuple[Any, dict[str, int], dict[str, int]]] = {}
        reg = self.registry

        self.sender_counters = {
            name: Counter(f"campaigns_messages_{name}", help_text, ["channel"], registry=reg)
            for name, help_text in SENDER_COUNTERS.items()
        }
        self.dead_lettered = Counter("campaigns_messages_dead_lettered",
                                     "records sent to campaign.messages.dlq, by reason",
                                     ["channel", "reason"], registry=reg)
        self.send_latency = Histogram("campaigns_send_latency_seconds",
                                      "duration of one provider call, by what came of it",
                                      ["channel", "outcome"], buckets=LATENCY_BUCKETS, registry=reg)
        self.expansion_messages = Counter("campaigns_expansion_messages",
                                          "recipient messages produced by expansion", ["channel"],
                                          registry=reg)
        self.expansion_pages = Counter("campaigns_expansion_pages", "audience pages expanded", ["channel"],
                                       registry=reg)
        self.receipts = Counter("campaigns_receipts", "delivery receipts handled by the receipts stage, by result",
                                ["channel", "result"], registry=reg)
        self.transitions = Counter("campaigns_campaign_transitions",
                                   "campaign state changes made by this worker, by the state entered", ["to"],
                                   registry=reg)
        self.channel_breakers = Gauge("campaigns_channel_breaker_state",
                                      "the channel's breaker as this worker sees it: 0 closed, 1 half-open "
                                      "(probing), 2 open (paused: nothing is sent)", ["channel"], registry=reg)
        self.stage_batch_seconds = Histogram(
            "campaigns_stage_batch_seconds",
            "time a stage's batch with records spent in each step of the runtime: take (from the consumer, the "
            "wait for its first record included), handle (decode, database writes, provider calls, produces), "
            "flush (its records acknowledged by Kafka)", ["stage", "step"], buckets=LATENCY_BUCKETS, registry=reg)
        self.stage_restarts = Counter("campaigns_stage_restarts",
                                      "stage crashes the worker recovered from by rebuilding the stage", ["stage"],
                                      registry=reg)
        # Series exist (at 0) from the start, so rate() and ratios work before the first event.
        for channel in self.channels:
            self.channel_breakers.labels(channel).set(0)
            for counter in (*self.sender_counters.values(), self.expansion_messages, self.expansion_pages):
                counter.labels(channel)
            for reason in DEAD_LETTER_REASONS:
                self.dead_lettered.labels(channel, reason)
            for result in RECEIPT_RESULTS:
                self.receipts.labels(channel, result)
        for state in CAMPAIGN_STATES:
            self.transitions.labels(state)

        if process_metrics:
            from prometheus_client import GCCollector, PlatformCollector, ProcessCollector

            ProcessCollector(registry=reg)
            PlatformCollector(registry=reg)
            GCCollector(registry=reg)

        self._offsets: _OffsetsCache | None = None
        source: OffsetsSource | None
        if offsets is True:
            source = KafkaOffsets(settings.kafka, offsets_timeout_s) if settings is not None else None
        elif offsets is False:
            source = None
        else:
            source = offsets
        if source is not None:
            if lag_groups is None:
                lag_groups = default_lag_groups(settings, self.channels) if settings is not None else {}
            dlq = settings.kafka.topic(DLQ_TOPIC) if settings is not None else DLQ_TOPIC
            self._offsets = _OffsetsCache(source, lag_groups, dlq, offsets_ttl_s, clock)
        reg.register(_PipelineCollector(self))

    # --- label hygiene ---------------------------------------------------------------------------

    def _logical(self, name: str) -> str:
        """Topic and group names without the deployment's topic prefix (stable across environments)."""
        return name[len(self._prefix):] if self._prefix and name.startswith(self._prefix) else name

    def _channel(self, channel: str) -> str:
        return channel if channel in self.channels or channel in CHANNELS else OTHER

    # --- reporting (called by the stages) --------------------------------------------------------

    def sender_batch(self, channel: str, stats: Any, attempts: Iterable[Any] = ()) -> None:
        """After a sender batch: grow the counters by what ``stats`` (cumulative ``SenderStats``) gained
        since the last call for the same stats object, and observe each provider call's latency.

        ``attempts`` are the batch's claimed messages (``result`` in sent/retry/failed, ``latency_ms``).
        """
        channel = self._channel(channel)
        entry = self._sender_seen.get(id(stats))
        if entry is None or entry[0] is not stats:  # a new sender (or a rebuilt one) starts from zero
            entry = (stats, dict.fromkeys(SENDER_COUNTERS, 0), {})
            self._sender_seen[id(stats)] = entry
        _, seen, seen_reasons = entry
        for name, counter in self.sender_counters.items():
            value = getattr(stats, name, 0)
            if value > seen[name]:
                counter.labels(channel).inc(value - seen[name])
                seen[name] = value
        reasons = getattr(stats, "dead_letter_reasons", None)
        if reasons is None:  # older stats without the breakdown: count the total as "other"
            reasons = {OTHER: getattr(stats, "dead_lettered", 0)}
        for reason, value in list(reasons.items()):
            before = seen_reasons.get(reason, 0)
            if value > before:
                label = reason if reason in DEAD_LETTER_REASONS else OTHER
                self.dead_lettered.labels(channel, label).inc(value - before)
                seen_reasons[reason] = value
        observers: dict[str, Any] = {}
        for attempt in attempts:
            latency_ms = getattr(attempt, "latency_ms", None)
            result = getattr(attempt, "result", "")
            if latency_ms is None or result not in ATTEMPT_RESULTS:
                continue
            observer = observers.get(result)
            if observer is None:
                observer = observers[result] = self.send_latency.labels(channel, result)
            observer.observe(latency_ms / 1000.0)

    def expansion_page(self, channel: str, produced: int) -> None:
        """One audience page expanded: ``produced`` messages went to the channel's topic."""
        channel = self._channel(channel)
        self.expansion_pages.labels(channel).inc()
        if produced:
            self.expansion_messages.labels(channel).inc(produced)

    def receipts_handled(self, counts: Mapping[tuple[str, str], int]) -> None:
        """Per batch of the receipts stage: ``(channel, result) -> count`` (results: :data:`RECEIPT_RESULTS`)."""
        for (channel, result), n in counts.items():
            if n and result in RECEIPT_RESULTS:
                self.receipts.labels(self._channel(channel), result).inc(n)

    def channel_breaker(self, channel: str, state: str) -> None:
        self.channel_breakers.labels(self._channel(channel)).set(BREAKER_STATES[state])

    def stage_batch(self, stage: str, take_s: float, handle_s: float, flush_s: float) -> None:
        """One batch of ``stage`` (a :data:`streams.runtime.BatchObserver`): the seconds of each of its steps."""
        for step, seconds in zip(BATCH_STEPS, (take_s, handle_s, flush_s), strict=True):
            self.stage_batch_seconds.labels(stage, step).observe(seconds)

    def stage_restarted(self, stage: str) -> None:
        self.stage_restarts.labels(stage).inc()

    def campaign_transition(self, to: str, count: int = 1) -> None:
        """``count`` campaigns entered state ``to`` through this worker."""
        if count > 0:
            self.transitions.labels(to if to in CAMPAIGN_STATES else OTHER).inc(count)

    def watch_rate_limiter(self, channel: str, read: Callable[[], RateLimiterState | None]) -> None:
        """Report ``read()`` as the channel's rate-limiter gauges at every scrape (replaces an earlier one).

        ``read`` runs on the scrape thread: it must only read (no refill, no locks held by the sender).
        """
        self._rate_limiters[self._channel(channel)] = read

    # --- exposition ----------------------------------------------------------------------------------

    def render(self) -> bytes:
        """The text exposition, as ``/metrics`` would serve it."""
        from prometheus_client import generate_latest

        return generate_latest(self.registry)

    def start_http_server(self, host: str | None = None, port: int | None = None) -> int:
        """Serve ``/metrics`` on ``host:port`` (defaults: ``settings.metrics_host`` / ``metrics_port``, else
        127.0.0.1:9108) in a daemon thread; returns the bound port (``port=0`` picks a free one).
        Idempotent while running."""
        if self._server is not None:
            return self.port  # type: ignore[return-value]
        from prometheus_client import start_http_server

        if host is None:
            host = self.settings.metrics_host if self.settings is not None else "127.0.0.1"
        if port is None:
            port = self.settings.metrics_port if self.settings is not None else 9108
        self._server, self._server_thread = start_http_server(port, addr=host, registry=self.registry)
        log.info("metrics on http://%s:%d/metrics", host, self.port)
        return self.port  # type: ignore[return-value]

    @property
    def port(self) -> int | None:
        """The bound port of the running endpoint, or None."""
        return None if self._server is None else int(self._server.server_port)

    @property
    def address(self) -> tuple[str, int] | None:
        """(host, port) the endpoint is bound to, or None."""
        if self._server is None:
            return None
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def stop_http_server(self, timeout: float = 5.0) -> None:
        if self._server is None:
            return
        server, thread = self._server, self._server_thread
        self._server = self._server_thread = None
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout)
