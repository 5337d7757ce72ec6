"""The worker's /metrics endpoint on real Kafka and PostgreSQL: a small campaign end to end, then the
documented metrics must agree with the recipient log, the DLQ and the consumer groups, the endpoint must
listen on loopback only, and nothing secret may appear on it."""

from __future__ import annotations

import socket
import uuid
from datetime import UTC, datetime

import httpx
import psycopg2
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from campaigns.errors import PermanentDeliveryError, TransientDeliveryError
from campaigns.transports.fake import FakeTransport
from streams.worker import Worker
from tests.e2e.test_expansion import eligible
from tests.helpers import wait_for
from tests.pipeline_fixtures import audience, service, sessions  # noqa: F401 (fixtures)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(port: int) -> tuple[str, Samples]:
    body = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).raise_for_status().text
    samples: Samples = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return body, samples


def get(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def log_counts(dsn: str, since: datetime) -> dict[str, int]:
    """Email rows written since ``since``: all written by this test's worker. (The session's database is
    shared: a campaign another test left scheduled is activated and sent by this worker too, so the
    counters are compared with everything the worker did, not with one campaign.)"""
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT status, count(*) FROM campaign_recipient_log WHERE channel_kind = 'email' "
                    "AND created_at >= %s GROUP BY status", (since,))
        return dict(cur.fetchall())


def analytics_since(dsn: str, since: datetime) -> dict[str, int]:
    """The ``campaign_analytics`` totals summed over the campaigns that have email rows written since ``since``
    (the same campaigns as :func:`log_counts`)."""
    names = ("sent", "failed", "retried", "skipped", "cancelled")
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(f"SELECT {', '.join(f'coalesce(sum({n}), 0)' for n in names)} FROM campaign_analytics "
                    "WHERE window_start IS NULL AND campaign_id IN (SELECT campaign_id FROM campaign_recipient_log "
                    "WHERE channel_kind = 'email' AND created_at >= %s)", (since,))
        return dict(zip(names, map(int, cur.fetchone()), strict=True))


def non_loopback_address() -> str | None:
    """An address of this host other than loopback, if it has one (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: only picks the outgoing interface
            address = probe.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") or address == "0.0.0.0" else address


def test_metrics_endpoint_reports_a_campaign(settings, service, audience):  # noqa: F811
    secret = uuid.uuid4().hex
    providers = settings.providers.model_copy(update={
        "whatsapp_token": SecretStr(f"wa-{secret}"), "sms_auth_token": SecretStr(f"sms-{secret}"),
        "smtp_password": SecretStr(f"smtp-{secret}"),
    })
    settings = settings.model_copy(update={"metrics_port": 0, "providers": providers})
    started = datetime.now(UTC)
    plan, segments = audience(300, invalid_every=0)
    transport = FakeTransport("email")
    # Two customers expansion sends to (not inactive or opted out: which ids are depends on the block of ids the
    # session gave this test).
    first, second = sorted(eligible(plan, plan.ids(), "email")[0])[:2]
    bad, flaky = f"user{first}@example.com", f"user{second}@example.com"
    transport.fail_address(bad, PermanentDeliveryError("invalid_address"))
    transport.fail_address(flaky, TransientDeliveryError("timeout"), times=2)
    campaign_id = service.create_campaign("marketer-1", {
        "name": "metrics", "channel": "email", "content": {"subject": "Hi", "body": "<p>Hello</p>"},
        "segments": segments, "batch_size": 100,
        "retry_policy": {"max_retries": 3, "backoff_base_s": 0.1, "backoff_max_s": 0.3, "jitter": 0.1},
    })
    service.schedule_campaign("marketer-1", campaign_id)

    worker = Worker(settings, stages=("scheduler", "expander", "senders", "tally", "completion"), channels=("email",),
                    transports={"email": transport})
    with worker:
        assert worker.metrics is not None
        port = worker.metrics.port
        assert port and port != 9108
        assert worker.metrics.address == ("127.0.0.1", port)
        other = non_loopback_address()
        if other is not None:  # the endpoint is not reachable from outside this host
            with socket.socket() as s:
                s.settimeout(2)
                assert s.connect_ex((other, port)) != 0

        status = wait_for(
            lambda: (s := service.campaign_status("marketer-1", campaign_id)).campaign.status == "completed"
            and s,
            timeout=120, what="campaign completed",
        )
        assert status.campaign.total_recipients > 0

        last: dict[str, object] = {}

        def settled() -> tuple[str, Samples, dict[str, int]] | None:
            """Every row terminal, every topic consumed, and the counters agree with the log."""
            counts = log_counts(settings.database.dsn(), started)
            body, samples = scrape(port)
            lag = [v for (name, _), v in samples.items() if name == "campaigns_consumer_lag"]
            last.update(counts=counts, analytics=analytics_since(settings.database.dsn(), started),
                        lag={labels: v for (name, labels), v in samples.items() if name == "campaigns_consumer_lag"},
                        sent=get(samples, "campaigns_messages_sent_total", channel="email"),
                        dlq=get(samples, "campaigns_dlq_messages"))
            sent = counts.get("sent")
            done = (
                not set(counts) & {"claimed", "retrying"}
                and get(samples, "campaigns_messages_sent_total", channel="email") == sent
                and analytics_since(settings.database.dsn(), started)["sent"] == sent
                and get(samples, "campaigns_campaign_transitions_total", to="completed") >= 1
                and get(samples, "campaigns_dlq_messages") == 1
                and lag and not any(lag)
            )
            return (body, samples, counts) if done else None

        try:
            body, samples, counts = wait_for(settled, timeout=90, interval=0.5,
                                             what="metrics to match the recipient log")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; last seen: {last}") from None
    produced = sum(counts.values()) - counts.get("cancelled", 0)  # a message per member; the claim skips some

    assert worker.errors == []
    assert counts["failed"] == 1 and counts.get("skipped", 0) > 0

    # Senders: counters equal the recipient log; every provider call is in the latency histogram.
    email = {"channel": "email"}
    assert get(samples, "campaigns_messages_sent_total", **email) == counts["sent"]
    assert get(samples, "campaigns_messages_failed_total", **email) == counts["failed"] == 1
    assert get(samples, "campaigns_messages_retried_total", **email) == 2
    assert get(samples, "campaigns_messages_cancelled_total", **email) == counts.get("cancelled", 0)
    assert get(samples, "campaigns_messages_duplicates_dropped_total", **email) == 0
    assert get(samples, "campaigns_messages_dead_lettered_total", reason="permanent_failure", **email) == 1
    assert get(samples, "campaigns_messages_dead_lettered_total", reason="undecodable", **email) == 0
    assert get(samples, "campaigns_send_latency_seconds_count", outcome="sent", **email) == counts["sent"]
    assert get(samples, "campaigns_send_latency_seconds_count", outcome="retry", **email) == 2
    assert get(samples, "campaigns_send_latency_seconds_count", outcome="failed", **email) == 1
    sent_inf = get(samples, "campaigns_send_latency_seconds_bucket", outcome="sent", le="+Inf", **email)
    assert sent_inf == counts["sent"]

    # Expansion and analytics.
    assert get(samples, "campaigns_expansion_messages_total", **email) == produced
    assert get(samples, "campaigns_expansion_pages_total", **email) >= produced / 100
    # The Faust analytics (a child process, no endpoint of its own) show as their consumer group's lag, above.
    assert analytics_since(settings.database.dsn(), started) == {
        "sent": counts["sent"], "failed": 1, "retried": 2, "skipped": counts["skipped"],
        "cancelled": counts.get("cancelled", 0)}
    active = get(samples, "campaigns_campaign_transitions_total", to="active")
    assert active >= 1  # this campaign, and any other one due in the session's database
    assert 1 <= get(samples, "campaigns_campaign_transitions_total", to="completed") <= active

    # Scrape-time gauges: consumer lag (logical names), DLQ size, this worker's rate limiter (email: 1000/s,
    # burst 100; the only worker owns every partition, so its share is the whole limit, less the sender's
    # small safety margin).
    assert get(samples, "campaigns_kafka_offsets_up") == 1
    assert get(samples, "campaigns_consumer_lag", group="sender-email", topic="campaign.messages.email") == 0
    retry_1 = "campaign.messages.email.retry.1"
    assert get(samples, "campaigns_consumer_lag", group="sender-email", topic=retry_1) == 0
    assert get(samples, "campaigns_consumer_lag", group="campaigns-analytics-forwarder", topic="delivery.outcomes") == 0
    assert get(samples, "campaigns_consumer_lag", group="campaigns-analytics", topic="delivery.outcomes.batched") == 0
    assert get(samples, "campaigns_consumer_lag", group="campaigns-analytics", topic="campaign.analytics_parts") == 0
    assert get(samples, "campaigns_dlq_messages") == 1
    assert get(samples, "campaigns_rate_limit_channel_rate", **email) == 1000
    share = get(samples, "campaigns_rate_limit_share", **email)
    assert 900 <= share <= 1000
    assert 0 < get(samples, "campaigns_rate_limit_rate", **email) <= share
    assert 0 <= get(samples, "campaigns_rate_limit_tokens", **email) <= 100

    # Nothing secret, nothing per campaign, no deployment prefix.
    for value in (f"wa-{secret}", f"sms-{secret}", f"smtp-{secret}", secret, settings.database.dsn(),
                  settings.database.url(), "password"):
        assert value not in body
    labels = {v for (_, pairs) in samples for _, v in pairs}
    assert settings.database.password.get_secret_value() not in labels
    assert str(campaign_id) not in body
    assert settings.kafka.topic_prefix not in body

    # The worker stopped: so did its endpoint.
    assert worker.metrics.port is None
    with socket.socket() as s:
        s.settimeout(2)
        assert s.connect_ex(("127.0.0.1", port)) != 0
