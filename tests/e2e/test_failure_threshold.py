"""Failure threshold: when failures exceed the campaign's threshold (after the minimum sample) the campaign
becomes failed, sending stops, and every recipient still ends with one terminal row."""

from __future__ import annotations

from campaigns.errors import PermanentDeliveryError
from campaigns.transports.fake import FakeTransport
from streams.worker import Worker
from tests.e2e.test_pipeline import analytics_totals, log_counts
from tests.helpers import wait_for

TERMINAL = ("sent", "failed", "skipped", "cancelled")


def test_threshold_exceeded_fails_the_campaign_and_stops_sending(settings, service, audience):
    _, segments = audience(3000)
    transport = FakeTransport("email")
    transport.fail_next(300, PermanentDeliveryError("rejected: 550"))
    campaign_id = service.create_campaign("marketer-1", {
        "name": "doomed", "channel": "email", "content": {"subject": "s", "body": "b"}, "segments": segments,
        "batch_size": 100, "failure_threshold": 0.2, "failure_min_sample": 50,
    })
    service.schedule_campaign("marketer-1", campaign_id)
    dsn = settings.database.dsn()

    def all_terminal():
        view = service.get_campaign("marketer-1", campaign_id)
        counts = log_counts(dsn, campaign_id)
        return view.expansion_done and view.total_recipients == sum(counts.get(s, 0) for s in TERMINAL) and view

    # Senders take small batches so the failure is seen long before the audience is exhausted.
    small = settings.model_copy(update={"sender": settings.sender.model_copy(update={"batch_size": 50})})
    with Worker(small, stages=("scheduler", "expander", "senders", "analytics"), channels=("email",),
                transports={"email": transport}, rate_limits=False):
        wait_for(lambda: service.get_campaign("marketer-1", campaign_id).status == "failed", timeout=60,
                 what="campaign failed")
        view = wait_for(all_terminal, timeout=60, what="every recipient terminal")

    counts = log_counts(dsn, campaign_id)
    assert view.status == "failed"
    assert counts["cancelled"] > view.total_recipients / 2, "most of the audience was never sent to"
    assert len(transport.attempts) < view.total_recipients / 2
    totals = analytics_totals(dsn, campaign_id)
    wait_for(lambda: analytics_totals(dsn, campaign_id)["cancelled"] == counts["cancelled"], timeout=30,
             what="analytics caught up with the sweep")
    totals = analytics_totals(dsn, campaign_id)
    assert {s: totals[s] for s in TERMINAL} == {s: counts.get(s, 0) for s in TERMINAL}
