"""Scenario 3: the Kafka broker restarts mid-campaign, once cleanly (``kafka.sh stop`` / ``start``) and once
killed with SIGKILL (the pid in its ``.state/kafka/kafka.pid``) and started again.

The broker is a private one started by the project's own ``ops/kafka/kafka.sh`` with its own state
directory and ports: restarting the broker every other test shares would break whatever else is running
against it, so this scenario owns one. The workers and the provider simulator point at it; the database is
the session's. No process of the pipeline crashes here, so there is no window: exactly once must hold.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from campaigns.settings import DatabaseSettings, KafkaSettings, Settings
from tests.faults.conftest import FINISHED, create_campaign, set_channel, wait_finished
from tests.faults.history import analytics_sent, campaign_status, check, settle
from tests.faults.services import PrivateKafka
from tests.helpers import wait_for


@pytest.fixture(scope="module")
def private_kafka() -> Iterator[PrivateKafka]:
    kafka = PrivateKafka()
    try:
        kafka.start()
        yield kafka
    finally:
        kafka.close()


@pytest.fixture
def settings(private_kafka: PrivateKafka, kafka_settings: KafkaSettings, database_settings: DatabaseSettings,
             topic_prefix: str) -> Settings:
    return Settings(
        kafka=kafka_settings.model_copy(update={"bootstrap_servers": private_kafka.bootstrap,
                                                "topic_prefix": topic_prefix, "partitions": 3}),
        database=database_settings, metrics_port=0,
    )


def _resumed(simulator, channel: str, after: int, timeout: float = 120.0) -> float:
    """Seconds until the provider accepts messages again (more than ``after``)."""
    started = time.monotonic()
    wait_for(lambda: simulator.accepted_count(channel) > after, timeout=timeout, interval=0.1,
             what="sending resumed after the broker restart")
    return time.monotonic() - started


def test_broker_restarts_mid_campaign(settings, service, sessions, audience, cluster, private_kafka):
    channel = "whatsapp"
    set_channel(sessions, channel, 100, 20)
    _plan, segments = audience(3000)
    simulator = cluster.start_simulator("--seed", "3")
    cluster.start_worker("scheduler,expander,tally,completion", channel)
    cluster.start_worker("senders", channel)
    campaign_id = create_campaign(service, channel, segments[:2], batch_size=200)
    figures: dict[str, float] = {}

    # 1. A clean stop and start, once every stage runs: the senders have sent 300 and the Faust analytics (a
    # process of their own, which takes a few seconds to start) have counted some. A stage still starting when
    # the broker goes away fails and is restarted: that is no stage riding out a restart, checked at the end.
    dsn = settings.database.dsn()
    wait_for(lambda: simulator.accepted_count(channel) >= 300 and analytics_sent(dsn, campaign_id) > 0,
             timeout=60, what="campaign under way, the analytics counting")
    started = time.monotonic()
    private_kafka.stop()
    figures["clean_down_s"] = round(time.monotonic() - started, 1)
    figures["clean_start_s"] = round(private_kafka.start(), 1)
    figures["clean_resume_s"] = round(_resumed(simulator, channel, simulator.accepted_count(channel)), 1)

    # 2. SIGKILL and start, once 300 more were sent - or once the campaign is done, if fewer than 300 were left
    # (how many were left after the first restart depends on how fast this machine is; the guarantees checked
    # below hold either way, and the figures say whether the kill came mid-campaign).
    at = simulator.accepted_count(channel)

    def under_way_again() -> bool:
        return (simulator.accepted_count(channel) >= at + 300
                or campaign_status(dsn, campaign_id) in FINISHED)

    wait_for(under_way_again, timeout=60, what="campaign under way again (or done)")
    figures["kill9_mid_campaign"] = campaign_status(dsn, campaign_id) == "active"
    private_kafka.kill9()
    figures["kill9_start_s"] = round(private_kafka.start(), 1)
    figures["kill9_resume_s"] = round(_resumed(simulator, channel, simulator.accepted_count(channel)), 1)

    wait_finished(settings, campaign_id, timeout=180, cluster=cluster)
    total = time.monotonic() - started
    history = settle(settings, campaign_id, channel, simulator)
    report = check(history)
    report.extra.update(figures, first_fault_to_completed_s=round(total, 1))
    print(f"\nscenario 3: {report}")
    assert report.duplicates == {}
    assert not cluster.crashed_stages(), "a stage crashed on a broker restart instead of riding it out"
