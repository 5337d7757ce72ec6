"""Failure threshold: when failures exceed the campaign's threshold (after the minimum sample) the campaign
becomes failed, sending stops, and every recipient still ends with one terminal row.

The bound asserted is the one the code guarantees, whatever the machine's speed: the worker's breaker
(campaigns.core.breaker, shared by its sender consumers of the channel) trips in the batch in which the threshold
is crossed, and the claim is atomic with the campaign being active, so the provider sees at most the crossing, the
rest of its batch, and one batch per other sender consumer (claimed before the campaign failed).
"""

from __future__ import annotations

import pytest

from campaigns.errors import PermanentDeliveryError
from campaigns.transports.fake import FakeTransport
from streams.worker import Worker
from tests.e2e.test_pipeline import analytics_totals, log_counts
from tests.helpers import wait_for

TERMINAL = ("sent", "failed", "skipped", "cancelled")
SENDER_BATCH = 50
MIN_SAMPLE = 50


@pytest.mark.parametrize(
    ("threshold", "consumers"),
    [
        (0.2, 1),
        # Dilution: a cumulative ratio first checked over ~1,000 outcomes sees 300/1,000 = 0.3, not above
        # 0.3, and the campaign used to end completed. The sliding window sees 50 failures out of 50.
        (0.3, 1),
        # Two sender consumers, one set of breakers: the breaker trips at the MIN_SAMPLE-th attempt of the worker.
        (0.2, 2),
    ],
)
def test_threshold_exceeded_fails_the_campaign_and_stops_sending(settings, service, audience, threshold, consumers):
    _, segments = audience(3000)
    transport = FakeTransport("email")
    transport.fail_next(300, PermanentDeliveryError("rejected: 550"))
    campaign_id = service.create_campaign("marketer-1", {
        "name": "doomed", "channel": "email", "content": {"subject": "s", "body": "b"}, "segments": segments,
        "batch_size": 100, "failure_threshold": threshold, "failure_min_sample": MIN_SAMPLE,
    })
    service.schedule_campaign("marketer-1", campaign_id)
    dsn = settings.database.dsn()

    def all_terminal():
        view = service.get_campaign("marketer-1", campaign_id)
        counts = log_counts(dsn, campaign_id)
        return view.expansion_done and view.total_recipients == sum(counts.get(s, 0) for s in TERMINAL) and view

    sender = settings.sender.model_copy(update={"batch_size": SENDER_BATCH, "consumers": consumers})
    small = settings.model_copy(update={"sender": sender})
    with Worker(small, stages=("scheduler", "expander", "senders", "tally", "completion"), channels=("email",),
                transports={"email": transport}, rate_limits=False) as worker:
        wait_for(lambda: service.get_campaign("marketer-1", campaign_id).status == "failed", timeout=60,
                 what="campaign failed")
        view = wait_for(all_terminal, timeout=60, what="every recipient terminal")
        counts = log_counts(dsn, campaign_id)
        wait_for(lambda: analytics_totals(dsn, campaign_id)["cancelled"] == counts["cancelled"], timeout=30,
                 what="analytics caught up with the sweep")
        assert worker.restarts == {}

    counts = log_counts(dsn, campaign_id)
    assert view.status == "failed"
    # Every provider call failed up to the crossing (the MIN_SAMPLE-th attempt); the batch that held it is the
    # last one its consumer sent, and each other consumer sent at most the one batch it had claimed.
    bound = MIN_SAMPLE + SENDER_BATCH - 1 + (consumers - 1) * SENDER_BATCH
    assert MIN_SAMPLE <= len(transport.attempts) <= bound, len(transport.attempts)
    assert counts.get("sent", 0) == 0
    assert counts["failed"] == len(transport.attempts)
    assert counts["cancelled"] == view.total_recipients - len(transport.attempts) - counts.get("skipped", 0)
    totals = analytics_totals(dsn, campaign_id)
    assert {s: totals[s] for s in TERMINAL} == {s: counts.get(s, 0) for s in TERMINAL}
