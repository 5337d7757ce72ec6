"""Scenario 6: a flaky, throttling provider. 30 % of calls answer 5xx throughout, and for a while the
provider's rate limit drops far below the worker's, so 429 answers come in bursts.

Everything must end terminal with no duplicate at the provider (no crash here, so no window), and the
retry accounting must add up: every error answer the provider gave is one RETRYING outcome, or the
FAILED outcome of a message whose retries ran out.
"""

from __future__ import annotations

import time

from tests.faults.conftest import create_campaign, set_channel, wait_finished
from tests.faults.history import check, settle
from tests.helpers import wait_for


def test_5xx_and_429_bursts_end_terminal_without_duplicates(settings, service, sessions, audience, cluster):
    channel = "whatsapp"
    set_channel(sessions, channel, 500, 50)
    _plan, segments = audience(3000)
    simulator = cluster.start_simulator("--seed", "6", "--transient-error-rate", "0.3")
    cluster.start_worker("scheduler,expander,tally,completion", channel)
    cluster.start_worker("senders", channel)
    started = time.monotonic()
    campaign_id = create_campaign(service, channel, segments[:2], batch_size=200, max_retries=10,
                                  backoff_base_s=0.05, backoff_max_s=1.0)

    wait_for(lambda: simulator.accepted_count(channel) >= 300, timeout=60, what="campaign under way")
    simulator.configure(rate_limit_per_s={channel: 40}, transient_status=500)  # 429 burst (and 500s)
    wait_for(lambda: simulator.stats(channel)["throttled"] >= 200, timeout=30, what="a burst of 429s")
    simulator.configure(rate_limit_per_s=None, transient_status=503)
    wait_finished(settings, campaign_id, timeout=150, cluster=cluster)
    elapsed = time.monotonic() - started

    history = settle(settings, campaign_id, channel, simulator)
    stats = history.provider_stats
    report = check(history)
    exhausted = sum(1 for row in history.log.values()
                    if row.status == "failed" and (row.failure_reason or "").startswith("retries_exhausted"))
    errors = stats["transient_errors"] + stats["throttled"]
    report.extra.update(provider_5xx=stats["transient_errors"], provider_429=stats["throttled"],
                        exhausted=exhausted, campaign_s=round(elapsed, 1))
    print(f"\nscenario 6: {report}")
    assert report.duplicates == {}
    assert stats["transient_errors"] > 100 and stats["throttled"] >= 200
    assert history.analytics["retried"] + exhausted == errors, (history.analytics, exhausted, stats)
    assert not cluster.crashed_stages()
