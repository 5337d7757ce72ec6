"""Scenario 7: consumer-group rebalances under load.

* A second sender worker joins mid-campaign, then the first is stopped (SIGTERM, a graceful leave): two
  rebalances with batches in flight. Exactly once must hold, with no exception at all (nothing crashed).
* A sender worker is frozen with SIGSTOP (a GC pause, a VM stall) long enough for the group to evict it.
  The group evicts it after ``session.timeout.ms`` (librdkafka's 45 s default): a stopped process sends no
  heartbeats, so ``max.poll.interval.ms`` (300 s in the sender, not configurable by environment) is not
  what fires. The other worker takes its partitions over and, the claims' 2 s leases being long expired,
  sends what the frozen one had claimed. Then the frozen worker is thawed (SIGCONT), a zombie that still
  believes it owns those claims. Duplicates may only come from the claims it had in flight.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

from tests.faults.conftest import create_campaign, set_channel, wait_finished, wait_stable
from tests.faults.history import check, in_flight_claims, settle
from tests.helpers import wait_for


def _owns_partitions(proc, channel: str) -> bool:
    """The worker logged an assignment with at least one partition of the channel's topics."""
    return any(str(r.get("msg")).startswith(f"{channel} sender: ") and "partitions" in str(r.get("msg"))
               and not str(r.get("msg")).startswith(f"{channel} sender: 0/") for r in proc.log_records())


def test_worker_joins_then_leaves_mid_campaign(settings, service, sessions, audience, cluster):
    channel = "whatsapp"
    set_channel(sessions, channel, 100, 20)  # ~19 s of sending: both rebalances land mid-campaign
    _plan, segments = audience(3000)
    simulator = cluster.start_simulator("--seed", "7", "--latency-ms", "5-30")
    cluster.start_worker("scheduler,expander,tally,completion", channel)
    first = cluster.start_worker("senders", channel)
    campaign_id = create_campaign(service, channel, segments[:2], batch_size=200)
    wait_for(lambda: simulator.accepted_count(channel) >= 100, timeout=60, what="campaign under way")

    second = cluster.start_worker("senders", channel)
    # Joined: the second worker logged its share of the partitions.
    wait_for(lambda: _owns_partitions(second, channel), timeout=60, what="second worker assigned partitions")
    joined_at = simulator.accepted_count(channel)
    wait_for(lambda: simulator.accepted_count(channel) >= joined_at + 150, timeout=60, what="both sending")
    assert first.terminate() == 0  # graceful: finishes its batch, commits, leaves the group
    left_at = simulator.accepted_count(channel)
    wait_finished(settings, campaign_id, timeout=120, cluster=cluster)

    history = settle(settings, campaign_id, channel, simulator)
    report = check(history)
    report.extra.update(accepted_when_joined=joined_at, accepted_when_left=left_at)
    print(f"\nscenario 7 (join/leave): {report}")
    assert left_at < report.log_counts["sent"], "the campaign was over before the first worker left"
    assert report.duplicates == {}
    assert not cluster.crashed_stages()


def test_sigstopped_worker_is_evicted_and_thawed(settings, service, sessions, audience, cluster):
    channel = "whatsapp"
    set_channel(sessions, channel, 300, 100)
    _plan, segments = audience(3000)
    simulator = cluster.start_simulator("--seed", "8", "--latency-ms", "5-20")
    cluster.start_worker("scheduler,expander,tally,completion", channel)
    # A 10 s lease (a batch never outlives it here); the frozen worker makes 5 calls at a time, so when
    # it freezes most of its claimed batch is still queued in the worker, not yet sent.
    frozen = cluster.start_worker("senders", channel, CAMPAIGNS_PROVIDERS__TIMEOUT_S="120",
                                  CAMPAIGNS_SENDER__CLAIM_LEASE_S="10", CAMPAIGNS_SENDER__MAX_IN_FLIGHT="5")
    other = cluster.start_worker("senders", channel, CAMPAIGNS_PROVIDERS__TIMEOUT_S="120",
                                 CAMPAIGNS_SENDER__CLAIM_LEASE_S="10")
    for proc in (frozen, other):
        wait_for(lambda proc=proc: _owns_partitions(proc, channel), timeout=60, what=f"{proc.name} owns partitions")
    campaign_id = create_campaign(service, channel, segments[:2], batch_size=200)
    wait_for(lambda: simulator.accepted_count(channel) >= 300, timeout=60, what="campaign under way")

    dsn = settings.database.dsn()
    simulator.configure(latency_ms=200)  # the freeze lands inside a batch: some calls made, most queued

    def queued() -> bool:
        # The other worker makes all its calls at once and the provider accepts each on arrival, so claims
        # the provider has not seen are the frozen worker's, queued behind its 5 calls in flight.
        return len(set(in_flight_claims(dsn, campaign_id).values()) - set(simulator.accepted_ids(channel))) >= 10

    wait_for(queued, timeout=30, interval=0.05, what="claims queued in the worker about to freeze")
    frozen.pause()
    stopped_at, stopped_wall = time.monotonic(), datetime.now(UTC)
    simulator.configure(latency_ms=0)
    # Claims taken before the freeze: the other worker's resolve within a call, the frozen worker's stay.
    in_flight = wait_stable(lambda: in_flight_claims(dsn, campaign_id, claimed_before=stopped_wall),
                            quiet_s=2.0, timeout=30, what="claims taken before the freeze")
    assert in_flight, "the freeze did not catch the worker with claims in flight"
    accepted_at_stop = simulator.accepted_ids(channel)

    # Evicted after the session timeout; the other worker re-sends the frozen claims (leases expired).
    wait_for(lambda: not set(in_flight) & set(in_flight_claims(dsn, campaign_id)), timeout=120, interval=0.5,
             what="the frozen worker's claims taken over")
    taken_over_s = time.monotonic() - stopped_at
    logged = len(frozen.log_records())
    frozen.resume()
    # The thawed zombie finishes its old batch (its commit then fails: the group evicted it) and rejoins.
    wait_for(lambda: len(frozen.log_records()) > logged, timeout=60, what="the thawed worker acting again")
    wait_finished(settings, campaign_id, timeout=120, cluster=cluster)
    wait_stable(lambda: simulator.accepted_count(channel), quiet_s=1.5, timeout=30, what="provider log")

    history = settle(settings, campaign_id, channel, simulator)
    in_flight_ids = set(in_flight.values())
    report = check(history, allowed_duplicates=in_flight_ids, in_flight=len(in_flight))
    delivered_before_stop = {m for m in in_flight_ids if accepted_at_stop.get(m)}
    report.extra.update(delivered_before_freeze=len(delivered_before_stop), taken_over_after_s=round(taken_over_s, 1))
    # Only what the frozen worker had already delivered is delivered again (by the worker that took its
    # claims over); the thawed zombie sends nothing whose lease has run out: it hands those back.
    zombie = [r for r in frozen.log_records() if "outlived their" in str(r.get("msg"))]
    report.extra["zombie_handed_back"] = sum(int(r["msg"].split()[2]) for r in zombie)
    print(f"\nscenario 7 (SIGSTOP): {report}")
    assert set(report.duplicates) == delivered_before_stop
    assert report.extra["zombie_handed_back"] > 0
    assert not cluster.crashed_stages()
