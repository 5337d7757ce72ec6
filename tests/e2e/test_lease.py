"""Lease safety on the real services: a provider call never outlives the claim it was made under.

The sender cuts every call at ``min(providers.timeout_s, lease left - margin)``: here the provider takes 3 s
and the lease is 1.5 s, so every call is cut (a timeout, retried) and none is ever accepted after its lease
could have passed to another worker. The bound is the code's, not the machine's: a slower machine only
leaves less of the lease for the call.
"""

from __future__ import annotations

from campaigns.transports.fake import FakeTransport
from streams.worker import Worker
from tests.e2e.test_pipeline import log_counts
from tests.helpers import wait_for


def test_a_call_slower_than_its_lease_is_cut_and_retried_never_sent_late(settings, service, audience):
    transport = FakeTransport("email", latency_s=3.0)
    short = settings.model_copy(update={"sender": settings.sender.model_copy(update={"claim_lease_s": 1.5})})
    _, segments = audience(20)
    campaign_id = service.create_campaign("marketer-1", {
        "name": "slow provider", "channel": "email", "content": {"subject": "s", "body": "b"},
        "segments": segments[:1], "batch_size": 100, "failure_threshold": 1.0,
        "retry_policy": {"max_retries": 1, "backoff_base_s": 0.2, "backoff_max_s": 0.2, "jitter": 0},
    })
    service.schedule_campaign("marketer-1", campaign_id)
    dsn = settings.database.dsn()
    with Worker(short, stages=("scheduler", "expander", "senders", "tally", "completion"), channels=("email",),
                transports={"email": transport}, rate_limits=False) as worker:
        wait_for(lambda: service.get_campaign("marketer-1", campaign_id).status in ("completed", "failed"),
                 timeout=60, what="campaign finished")
        assert worker.restarts == {}

    counts = log_counts(dsn, campaign_id)
    assert transport.attempts, "calls were made"
    assert transport.sent == [], "no call was let run past its lease"
    assert counts.get("failed", 0) + counts.get("skipped", 0) == service.get_campaign(
        "marketer-1", campaign_id).total_recipients
    assert counts.get("claimed", 0) == 0
