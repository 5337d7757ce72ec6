"""PipelineMetrics with fakes: registry isolation, batch deltas, the scrape-time collector, the endpoint."""

from __future__ import annotations

from types import SimpleNamespace

import httpx
import pytest
from prometheus_client import REGISTRY

from campaigns.core.rate import TokenBucket
from campaigns.metrics import PipelineMetrics, RateLimiterState, consumer_lag, default_lag_groups
from campaigns.settings import KafkaSettings, Settings
from streams.sender import SenderStats


def value(metrics: PipelineMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def metrics(**kwargs) -> PipelineMetrics:  # type: ignore[no-untyped-def]
    kwargs.setdefault("offsets", False)
    kwargs.setdefault("process_metrics", False)
    return PipelineMetrics(**kwargs)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class FakeOffsets:
    """An OffsetsSource from dicts; counts calls so caching is visible."""

    def __init__(self, partitions, marks, committed, fail: bool = False) -> None:  # type: ignore[no-untyped-def]
        self._partitions, self._marks, self._committed = partitions, marks, committed
        self.fail = fail
        self.reads = 0

    def partitions(self, topics):  # type: ignore[no-untyped-def]
        self.reads += 1
        if self.fail:
            raise RuntimeError("broker down")
        return {t: ps for t, ps in self._partitions.items() if t in topics}

    def watermarks(self, partitions):  # type: ignore[no-untyped-def]
        return {k: self._marks[k] for k in partitions}

    def committed(self, requests):  # type: ignore[no-untyped-def]
        known = self._committed
        return {g: {k: known.get(g, {}).get(k, -1001) for k in keys} for g, keys in requests.items()}


# --- registry ------------------------------------------------------------------------------------------


def test_each_instance_has_its_own_registry() -> None:
    a, b = metrics(), metrics()
    a.sender_batch("sms", SenderStats(sent=3))
    assert value(a, "campaigns_messages_sent_total", channel="sms") == 3
    assert value(b, "campaigns_messages_sent_total", channel="sms") == 0
    assert REGISTRY.get_sample_value("campaigns_messages_sent_total", {"channel": "sms"}) is None


def test_series_exist_at_zero_before_any_event() -> None:
    m = metrics(channels=("email",))
    assert value(m, "campaigns_messages_failed_total", channel="email") == 0
    assert value(m, "campaigns_messages_dead_lettered_total", channel="email", reason="undecodable") == 0
    assert value(m, "campaigns_campaign_transitions_total", to="completed") == 0
    assert value(m, "campaigns_messages_sent_total", channel="sms") is None  # only the worker's channels


def test_every_metric_name_is_prefixed() -> None:
    text = metrics().render().decode()
    names = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")}
    assert names and all(n.startswith("campaigns_") for n in names)


# --- senders ---------------------------------------------------------------------------------------------


def test_sender_counters_grow_by_what_the_stats_gained() -> None:
    m = metrics()
    stats = SenderStats()
    stats.sent, stats.retried, stats.duplicates_dropped = 5, 2, 1
    m.sender_batch("sms", stats)
    stats.sent, stats.failed, stats.cancelled, stats.throttled = 8, 1, 4, 2
    m.sender_batch("sms", stats)
    m.sender_batch("sms", stats)  # nothing new: nothing counted twice
    assert value(m, "campaigns_messages_sent_total", channel="sms") == 8
    assert value(m, "campaigns_messages_failed_total", channel="sms") == 1
    assert value(m, "campaigns_messages_retried_total", channel="sms") == 2
    assert value(m, "campaigns_messages_cancelled_total", channel="sms") == 4
    assert value(m, "campaigns_messages_duplicates_dropped_total", channel="sms") == 1
    assert value(m, "campaigns_messages_throttled_total", channel="sms") == 2


def test_a_rebuilt_sender_adds_to_the_counters() -> None:
    m = metrics()
    m.sender_batch("email", SenderStats(sent=10))
    m.sender_batch("email", SenderStats(sent=3))  # the stage crashed and was built afresh
    assert value(m, "campaigns_messages_sent_total", channel="email") == 13


def test_dead_letters_by_reason_with_unknown_reasons_as_other() -> None:
    m = metrics()
    reasons = {"undecodable": 1, "retries_exhausted": 2, "weird": 1}
    stats = SenderStats(dead_lettered=4, dead_letter_reasons=reasons)
    m.sender_batch("whatsapp", stats)
    stats.dead_letter_reasons["undecodable"] = 3
    m.sender_batch("whatsapp", stats)
    name = "campaigns_messages_dead_lettered_total"
    assert value(m, name, channel="whatsapp", reason="undecodable") == 3
    assert value(m, name, channel="whatsapp", reason="retries_exhausted") == 2
    assert value(m, name, channel="whatsapp", reason="other") == 1
    assert value(m, name, channel="whatsapp", reason="weird") is None


def test_latency_is_observed_per_provider_call_in_seconds() -> None:
    m = metrics()
    attempts = [SimpleNamespace(result=r, latency_ms=ms)
                for r, ms in (("sent", 2.0), ("sent", 40.0), ("retry", 3000.0), ("", None))]
    m.sender_batch("sms", SenderStats(), attempts)
    assert value(m, "campaigns_send_latency_seconds_count", channel="sms", outcome="sent") == 2
    total = value(m, "campaigns_send_latency_seconds_sum", channel="sms", outcome="sent")
    assert total == pytest.approx(0.042)
    assert value(m, "campaigns_send_latency_seconds_bucket", channel="sms", outcome="sent", le="0.0025") == 1
    assert value(m, "campaigns_send_latency_seconds_bucket", channel="sms", outcome="sent", le="0.05") == 2
    assert value(m, "campaigns_send_latency_seconds_count", channel="sms", outcome="retry") == 1
    assert value(m, "campaigns_send_latency_seconds_bucket", channel="sms", outcome="retry", le="2.5") == 0


def test_a_stage_batch_is_observed_per_step_in_seconds() -> None:
    m = metrics()
    m.stage_batch("email sender", 0.001, 0.04, 0.003)
    m.stage_batch("email sender", 0.0, 0.2, 0.002)
    for step, total, under_50ms in (("take", 0.001, 2), ("handle", 0.24, 1), ("flush", 0.005, 2)):
        labels = {"stage": "email sender", "step": step}
        assert value(m, "campaigns_stage_batch_seconds_count", **labels) == 2
        assert value(m, "campaigns_stage_batch_seconds_sum", **labels) == pytest.approx(total)
        assert value(m, "campaigns_stage_batch_seconds_bucket", **labels, le="0.05") == under_50ms


# --- expansion, analytics, transitions ---------------------------------------------------------------------


def test_expansion_pages_and_messages() -> None:
    m = metrics()
    m.expansion_page("email", 500)
    m.expansion_page("email", 0)  # a page of skipped recipients only
    assert value(m, "campaigns_expansion_pages_total", channel="email") == 2
    assert value(m, "campaigns_expansion_messages_total", channel="email") == 500


def test_campaign_transitions() -> None:
    m = metrics()
    m.campaign_transition("active", 3)
    m.campaign_transition("completed")
    m.campaign_transition("active", 0)
    assert value(m, "campaigns_campaign_transitions_total", to="active") == 3
    assert value(m, "campaigns_campaign_transitions_total", to="completed") == 1


# --- scrape-time gauges --------------------------------------------------------------------------------


def test_rate_limiter_gauges_read_at_scrape_time() -> None:
    m = metrics()
    bucket = TokenBucket(50, 10, now=0.0, tokens=2)
    m.watch_rate_limiter("sms", lambda: RateLimiterState(rate=25.0, share=50.0, channel_rate=100.0,
                                                         tokens=bucket.peek(0.1)))
    m.watch_rate_limiter("email", lambda: None)  # unlimited: no samples

    def broken() -> RateLimiterState:
        raise RuntimeError("sender rebuilding")

    m.watch_rate_limiter("whatsapp", broken)
    assert value(m, "campaigns_rate_limit_rate", channel="sms") == 25
    assert value(m, "campaigns_rate_limit_share", channel="sms") == 50
    assert value(m, "campaigns_rate_limit_channel_rate", channel="sms") == 100
    assert value(m, "campaigns_rate_limit_tokens", channel="sms") == pytest.approx(7.0)
    assert value(m, "campaigns_rate_limit_rate", channel="email") is None
    assert value(m, "campaigns_rate_limit_rate", channel="whatsapp") is None


def test_peek_reads_without_refilling() -> None:
    bucket = TokenBucket(10, 5, now=0.0, tokens=0)
    assert bucket.peek(0.3) == pytest.approx(3.0)
    assert bucket.peek(99.0) == 5.0
    assert bucket.try_take(5, 0.2) == 2  # the peeks changed nothing


def test_consumer_lag() -> None:
    marks = {("t", 0): (0, 10), ("t", 1): (5, 8), ("t", 2): (100, 120)}
    assert consumer_lag(marks, {("t", 0): 7, ("t", 1): 8, ("t", 2): 50}) == 3 + 0 + 20  # below low: from low
    assert consumer_lag(marks, {}) == 10 + 3 + 20  # nothing committed: everything retained


def lag_fixture(fail: bool = False) -> tuple[FakeOffsets, dict[str, list[str]]]:
    partitions = {"p.campaign.messages.sms": [0, 1], "p.delivery.outcomes": [0],
                  "p.campaign.messages.dlq": [0, 1]}
    marks = {("p.campaign.messages.sms", 0): (0, 100), ("p.campaign.messages.sms", 1): (0, 50),
             ("p.delivery.outcomes", 0): (10, 30),
             ("p.campaign.messages.dlq", 0): (2, 5), ("p.campaign.messages.dlq", 1): (0, 4)}
    committed = {"p.sender-sms": {("p.campaign.messages.sms", 0): 90, ("p.campaign.messages.sms", 1): 50}}
    groups = {"p.sender-sms": ["p.campaign.messages.sms", "p.campaign.messages.sms.retry.1"],
              "p.campaigns-analytics": ["p.delivery.outcomes"]}
    return FakeOffsets(partitions, marks, committed, fail=fail), groups


def test_lag_and_dlq_from_offsets_with_logical_names() -> None:
    source, groups = lag_fixture()
    settings = Settings(kafka=KafkaSettings(topic_prefix="p."))
    m = metrics(settings=settings, offsets=source, lag_groups=groups)
    assert value(m, "campaigns_kafka_offsets_up") == 1
    assert value(m, "campaigns_consumer_lag", group="sender-sms", topic="campaign.messages.sms") == 10
    assert value(m, "campaigns_consumer_lag", group="campaigns-analytics", topic="delivery.outcomes") == 20
    # A topic that does not exist (yet) has no series rather than a made-up zero.
    assert value(m, "campaigns_consumer_lag", group="sender-sms",
                 topic="campaign.messages.sms.retry.1") is None
    assert value(m, "campaigns_dlq_messages") == 3 + 4


def test_offsets_are_cached_between_scrapes() -> None:
    source, groups = lag_fixture()
    clock = FakeClock()
    m = metrics(settings=Settings(kafka=KafkaSettings(topic_prefix="p.")), offsets=source, lag_groups=groups,
                clock=clock, offsets_ttl_s=2.0)
    m.render()
    clock.now = 1.9
    m.render()
    assert source.reads == 1
    clock.now = 2.0
    m.render()
    assert source.reads == 2


def test_an_unreachable_broker_is_reported_not_raised_and_not_retried_every_scrape() -> None:
    source, groups = lag_fixture(fail=True)
    clock = FakeClock()
    m = metrics(settings=Settings(kafka=KafkaSettings(topic_prefix="p.")), offsets=source, lag_groups=groups,
                clock=clock)
    text = m.render().decode()
    assert "campaigns_kafka_offsets_up 0.0" in text
    assert "campaigns_consumer_lag{" not in text and "campaigns_dlq_messages " not in text
    m.render()
    assert source.reads == 1
    assert value(m, "campaigns_messages_sent_total", channel="sms") == 0  # the rest still scrapes


def test_default_lag_groups_follow_the_stage_group_names() -> None:
    settings = Settings(kafka=KafkaSettings(topic_prefix="x."))
    groups = default_lag_groups(settings, ("sms",))
    assert groups["x.sender-sms"] == ["x.campaign.messages.sms",
                                      *(f"x.campaign.messages.sms.retry.{n}" for n in range(1, 6))]
    assert groups["x.campaigns-analytics"] == ["x.delivery.outcomes.batched", "x.campaign.analytics_parts"]  # Faust's
    assert groups["x.campaigns-analytics-forwarder"] == ["x.delivery.outcomes"]  # its forwarder's
    assert groups["x.campaigns.commands"] == ["x.campaign.commands"]


# --- the endpoint --------------------------------------------------------------------------------------


def test_endpoint_on_loopback_with_a_free_port() -> None:
    m = metrics(settings=Settings(metrics_port=0))
    port = m.start_http_server()
    try:
        assert port > 0 and m.address == ("127.0.0.1", port)
        assert m.start_http_server() == port  # idempotent
        m.sender_batch("sms", SenderStats(sent=2))
        response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
        assert response.status_code == 200
        assert 'campaigns_messages_sent_total{channel="sms"} 2.0' in response.text
    finally:
        m.stop_http_server()
    assert m.port is None
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2)
