"""The whole pipeline on real Kafka and PostgreSQL: create -> schedule -> activate -> expand -> send ->
log -> analytics -> completed, with a fake transport recording what a provider would have received."""

from __future__ import annotations

import psycopg2

from campaigns.errors import PermanentDeliveryError, TransientDeliveryError
from campaigns.transports.fake import FakeTransport
from streams.worker import Worker
from tests.helpers import wait_for


def log_counts(dsn: str, campaign_id) -> dict[str, int]:
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT status, count(*) FROM campaign_recipient_log WHERE campaign_id = %s GROUP BY status",
                    (str(campaign_id),))
        return dict(cur.fetchall())


def analytics_totals(dsn: str, campaign_id) -> dict[str, int]:
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT sent, failed, skipped, cancelled, retried FROM campaign_analytics "
                    "WHERE campaign_id = %s AND window_start IS NULL", (str(campaign_id),))
        row = cur.fetchone()
    return dict(zip(("sent", "failed", "skipped", "cancelled", "retried"), row or (0, 0, 0, 0, 0), strict=True))


def test_campaign_runs_end_to_end(settings, service, audience):
    plan, segments = audience(3000, invalid_every=0)
    transport = FakeTransport("email")
    # Two recipients of the first two segments fail: one permanently, one transiently twice then succeeds.
    eligible = [cid for cid in plan.ids() if plan.segment_of(cid)[0] in (0, 1)
                and cid % plan.opted_out_every and cid % plan.inactive_every]
    bad, flaky = (f"user{cid}@example.com" for cid in eligible[:2])
    transport.fail_address(bad, PermanentDeliveryError("invalid_address"))
    transport.fail_address(flaky, TransientDeliveryError("timeout"), times=2)
    campaign_id = service.create_campaign("marketer-1", {
        "name": "e2e", "channel": "email", "content": {"subject": "Hi", "body": "<p>Hello</p>"},
        "segments": segments[:2], "manual_recipients": [str(eligible[1])], "batch_size": 500,
        "retry_policy": {"max_retries": 3, "backoff_base_s": 0.1, "backoff_max_s": 0.5, "jitter": 0.1},
    })
    service.schedule_campaign("marketer-1", campaign_id)

    worker = Worker(settings, stages=("scheduler", "expander", "senders", "tally", "completion"), channels=("email",),
                    transports={"email": transport}, rate_limits=False)
    with worker:
        status = wait_for(
            lambda: (s := service.campaign_status("marketer-1", campaign_id)).campaign.status == "completed" and s,
            timeout=120, what="campaign completed",
        )
    assert worker.errors == []

    # The manual recipient is in the segments already: the union counts them once.
    assert status.campaign.total_recipients == sum(1 for cid in plan.ids() if set(plan.segment_of(cid)) & {0, 1})
    counts = log_counts(settings.database.dsn(), campaign_id)
    assert sum(counts.values()) == status.campaign.total_recipients
    assert set(counts) <= {"sent", "failed", "skipped"}
    assert counts["failed"] == 1
    assert transport.duplicate_message_ids() == {}
    assert len({m.message_id for m in transport.sent}) == counts["sent"]
    totals = analytics_totals(settings.database.dsn(), campaign_id)
    assert {k: totals[k] for k in ("sent", "failed", "skipped")} == {
        k: counts.get(k, 0) for k in ("sent", "failed", "skipped")}
    assert totals["retried"] == 2
