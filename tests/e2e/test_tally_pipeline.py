"""The pipeline with the Faust analytics: ``Worker(stages=(..., "tally", "completion"))`` runs
``python -m streams.tally`` as a supervised child; the campaign completes (the completion stage, from the
recipient log), ``campaign_analytics`` equals the log and its windows sum to its totals, and stopping the worker
stops the child."""

from __future__ import annotations

import psycopg2

from campaigns.errors import PermanentDeliveryError, TransientDeliveryError
from campaigns.topics import ANALYTICS_PARTS, OUTCOME_BATCHES, OUTCOMES, TALLY_FORWARDER_GROUP, TALLY_GROUP
from campaigns.transports.fake import FakeTransport
from streams.tally import TallyProcess
from streams.worker import Worker
from tests.e2e.test_pipeline import log_counts
from tests.helpers import wait_for
from tests.integration.test_metrics_endpoint import scrape

COLUMNS = ("sent", "failed", "skipped", "cancelled", "retried")


def analytics_rows(dsn: str, campaign_id: object) -> tuple[dict[str, int], dict[str, int], int]:
    """(totals, the windows' sums, number of windows)."""
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(f"SELECT window_start IS NULL, {', '.join(COLUMNS)} FROM campaign_analytics "
                    "WHERE campaign_id = %s", (str(campaign_id),))
        rows = cur.fetchall()
    conn.close()
    totals, sums = dict.fromkeys(COLUMNS, 0), dict.fromkeys(COLUMNS, 0)
    for is_totals, *values in rows:
        target = totals if is_totals else sums
        for name, value in zip(COLUMNS, values, strict=True):
            target[name] += value
    return totals, sums, len(rows) - 1


def test_faust_analytics_in_the_worker(settings, service, audience):
    plan, segments = audience(1500, invalid_every=0)
    transport = FakeTransport("email")
    eligible = [cid for cid in plan.ids() if plan.segment_of(cid)[0] in (0, 1)
                and cid % plan.opted_out_every and cid % plan.inactive_every]
    bad, flaky = (f"user{cid}@example.com" for cid in eligible[:2])
    transport.fail_address(bad, PermanentDeliveryError("invalid_address"))
    transport.fail_address(flaky, TransientDeliveryError("timeout"), times=2)
    campaign_id = service.create_campaign("marketer-1", {
        "name": "e2e-tally", "channel": "email", "content": {"subject": "Hi", "body": "<p>Hello</p>"},
        "segments": segments[:2], "batch_size": 500,
        "retry_policy": {"max_retries": 3, "backoff_base_s": 0.1, "backoff_max_s": 0.5, "jitter": 0.1},
    })
    service.schedule_campaign("marketer-1", campaign_id)
    dsn = settings.database.dsn()
    settings = settings.model_copy(update={"metrics_enabled": True, "metrics_port": 0})
    worker = Worker(settings, stages=("scheduler", "expander", "senders", "tally", "completion"), channels=("email",),
                    transports={"email": transport}, rate_limits=False)
    with worker:
        wait_for(lambda: service.campaign_status("marketer-1", campaign_id).campaign.status == "completed",
                 timeout=120, what="campaign completed")
        counts = log_counts(dsn, campaign_id)

        def equal() -> bool:
            totals, sums, _ = analytics_rows(dsn, campaign_id)
            return totals == sums and all(totals[s] == counts.get(s, 0) for s in ("sent", "failed", "skipped"))

        wait_for(equal, timeout=90, interval=0.5, what=f"campaign_analytics equal to the log {counts}")
        # /metrics reports the Faust analytics' consumer groups, by logical names.
        port = worker.metrics.address[1]

        def lag() -> dict[tuple[str, str], float]:
            _body, samples = scrape(port)
            return {(dict(labels)["group"], dict(labels)["topic"]): value for (name, labels), value in samples.items()
                    if name == "campaigns_consumer_lag"
                    and dict(labels).get("group") in (TALLY_GROUP, TALLY_FORWARDER_GROUP)}

        wait_for(lambda: lag() == {(TALLY_FORWARDER_GROUP, OUTCOMES): 0, (TALLY_GROUP, OUTCOME_BATCHES): 0,
                                   (TALLY_GROUP, ANALYTICS_PARTS): 0},
                 timeout=60, interval=0.5, what="the Faust analytics' and its forwarder's lag reported, and zero")
        children = [t for t in worker.threads if t.name == "tally"]
        assert children and children[0].is_alive()
    assert worker.errors == [], worker.errors
    assert not any(t.is_alive() for t in worker.threads)
    totals, _sums, windows = analytics_rows(dsn, campaign_id)
    assert totals["failed"] == 1 and totals["retried"] == 2 and windows >= 1
    assert TallyProcess  # the stage's class (see streams/worker.py)
