"""Retries by delay on the real services: one campaign's long backoff never holds up another's short retries;
a cancel ends pending retries at once; a pause with retries due loses none of them.

Every bound here is what the code guarantees, not how fast the machine is: a retry waits in the largest tier
not longer than its backoff (tiers 1, 5, 30, 300, 3600 s), so a 1 s retry is held by tier 1 only, whatever
else waits in the 300 s or 3600 s tiers; a cancel's sweep ends ``retrying`` rows on its next pass.
"""

from __future__ import annotations

from collections import Counter

from campaigns.errors import TransientDeliveryError
from campaigns.transports.fake import FakeTransport
from streams.worker import Worker
from tests.e2e.test_pipeline import analytics_totals, log_counts
from tests.helpers import wait_for

TERMINAL = ("sent", "failed", "skipped", "cancelled")
STAGES = ("scheduler", "expander", "senders", "tally", "completion")


def create(service, segments, name: str, backoff_s: float) -> object:
    campaign_id = service.create_campaign("marketer-1", {
        "name": name, "channel": "email", "content": {"subject": "s", "body": "b"}, "segments": segments,
        "batch_size": 100,
        "retry_policy": {"max_retries": 3, "backoff_base_s": backoff_s, "backoff_max_s": backoff_s, "jitter": 0},
    })
    service.schedule_campaign("marketer-1", campaign_id)
    return campaign_id


def terminal(dsn, service, campaign_id) -> bool:
    view = service.get_campaign("marketer-1", campaign_id)
    counts = log_counts(dsn, campaign_id)
    return bool(view.expansion_done and view.total_recipients == sum(counts.get(s, 0) for s in TERMINAL))


def analytics_match_log(dsn, campaign_id) -> bool:
    totals, counts = analytics_totals(dsn, campaign_id), log_counts(dsn, campaign_id)
    return {s: totals[s] for s in TERMINAL} == {s: counts.get(s, 0) for s in TERMINAL}


def test_a_long_backoff_never_delays_another_campaigns_short_retries_and_cancel_ends_them(
    settings, service, audience
):
    transport = FakeTransport("email")
    transport.fail_each_message(1, TransientDeliveryError("busy"))  # every first attempt; the retry works
    dsn = settings.database.dsn()
    slow = create(service, audience(150)[1], "hour-backoff", 3600)
    with Worker(settings, stages=STAGES, channels=("email",), transports={"email": transport},
                rate_limits=False) as worker:
        wait_for(lambda: log_counts(dsn, slow).get("retrying", 0) + log_counts(dsn, slow).get("skipped", 0)
                 == service.get_campaign("marketer-1", slow).total_recipients, timeout=60,
                 what="the slow campaign's recipients all waiting an hour")
        fast = create(service, audience(150)[1], "second-backoff", 1)
        # Its retries are due 1 s after their first attempts; tier 1 holds them 1 s. Nothing else waits.
        wait_for(lambda: service.get_campaign("marketer-1", fast).status == "completed", timeout=60,
                 what="the fast campaign completed while the slow one waits")
        counts = log_counts(dsn, fast)
        assert counts.get("retrying", 0) == 0 and counts["sent"] > 0

        service.cancel_campaign("marketer-1", slow)
        # The sweep's next pass ends every retrying row: no waiting for the hour.
        wait_for(lambda: terminal(dsn, service, slow), timeout=5, what="the cancelled campaign all terminal")
        wait_for(lambda: analytics_match_log(dsn, slow) and analytics_match_log(dsn, fast), timeout=30,
                 what="analytics equal the log")
        assert worker.restarts == {}

    assert log_counts(dsn, slow).get("sent", 0) == 0
    sent = Counter(m.message_id for m in transport.sent)
    assert all(n == 1 for n in sent.values())  # nobody got the message twice


def test_a_pause_with_retries_due_loses_none_and_sends_each_once(settings, service, audience):
    transport = FakeTransport("email")
    transport.fail_each_message(1, TransientDeliveryError("busy"))
    dsn = settings.database.dsn()
    with Worker(settings, stages=STAGES, channels=("email",), transports={"email": transport},
                rate_limits=False) as worker:
        campaign_id = create(service, audience(200)[1], "paused-with-retries", 1)
        wait_for(lambda: log_counts(dsn, campaign_id).get("retrying", 0) > 0, timeout=60, what="retries pending")
        service.pause_campaign("marketer-1", campaign_id)
        paused_sent = len(transport.sent)
        # While paused, no call starts and the retries come due (1 s backoff); nothing is lost.
        wait_for(lambda: service.get_campaign("marketer-1", campaign_id).status == "paused", timeout=5,
                 what="paused")
        service.resume_campaign("marketer-1", campaign_id)
        wait_for(lambda: service.get_campaign("marketer-1", campaign_id).status == "completed", timeout=60,
                 what="completed after resume")
        wait_for(lambda: analytics_match_log(dsn, campaign_id), timeout=30, what="analytics equal the log")
        assert worker.restarts == {}

    counts = log_counts(dsn, campaign_id)
    view = service.get_campaign("marketer-1", campaign_id)
    assert counts["sent"] + counts.get("skipped", 0) == view.total_recipients
    sent = Counter(m.message_id for m in transport.sent)
    assert len(sent) == counts["sent"] and all(n == 1 for n in sent.values())
    assert len(transport.sent) >= paused_sent
