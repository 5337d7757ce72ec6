"""The channel breaker on the real services: a provider that refuses our account (HTTP 401) pauses the channel
instead of failing recipients, and once the credential works again a half-open probe closes it and the
campaign completes, every recipient exactly once."""

from __future__ import annotations

from collections import Counter

import psycopg2

from campaigns.errors import ProviderAccountError
from campaigns.transports.fake import FakeTransport
from streams.worker import Worker
from tests.e2e.test_pipeline import log_counts
from tests.helpers import wait_for

SENDER_BATCH = 50


def channel_row(dsn: str, kind: str) -> tuple:
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT paused_reason, failed_probes FROM channels WHERE kind = %s AND enabled", (kind,))
        return cur.fetchone()


def test_an_unauthorized_account_pauses_the_channel_fails_nobody_and_a_probe_resumes_it(
    settings, service, audience
):
    transport = FakeTransport("email")
    transport.fail_next(10**6, ProviderAccountError("unauthorized"))  # a wrong credential: every call refused
    dsn = settings.database.dsn()
    small = settings.model_copy(update={"sender": settings.sender.model_copy(update={"batch_size": SENDER_BATCH})})
    _, segments = audience(400)
    campaign_id = service.create_campaign("marketer-1", {
        "name": "bad-credential", "channel": "email", "content": {"subject": "s", "body": "b"},
        "segments": segments, "batch_size": 100, "failure_threshold": 0.1, "failure_min_sample": 10,
    })
    service.schedule_campaign("marketer-1", campaign_id)
    with Worker(small, stages=("scheduler", "expander", "senders", "tally", "completion"), channels=("email",),
                transports={"email": transport}, rate_limits=False) as worker:
        wait_for(lambda: channel_row(dsn, "email")[0] == "unauthorized", timeout=60, what="channel paused")
        refused = len(transport.attempts)
        # Nobody is failed for our account's problem, and the campaign's failure threshold is not touched.
        assert log_counts(dsn, campaign_id).get("failed", 0) == 0
        assert service.get_campaign("marketer-1", campaign_id).status == "active"
        # The batch that met the 401 is the last one each sender consumer sent before the breaker opened: the
        # channel's consumers (sender.consumers) may each have had one in flight at that moment.
        assert refused <= SENDER_BATCH * small.sender.consumers

        transport.clear_failures()  # the operator fixed the credential
        wait_for(lambda: channel_row(dsn, "email")[0] is None, timeout=60, what="a probe closed the channel")
        wait_for(lambda: service.get_campaign("marketer-1", campaign_id).status == "completed", timeout=60,
                 what="campaign completed")
        assert worker.restarts == {}

    counts = log_counts(dsn, campaign_id)
    assert counts.get("failed", 0) == 0
    sent = Counter(m.message_id for m in transport.sent)
    assert len(sent) == counts["sent"] and set(sent.values()) == {1}
