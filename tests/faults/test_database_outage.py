"""Scenario 4: PostgreSQL is unavailable for 30 s mid-campaign (``postgres.sh stop``, then ``start``).

The cluster is a private one made by the project's own ``ops/postgres/postgres.sh`` (own state directory
and port): stopping the shared one would pull the database from under every other test. Kafka is the
shared broker.

What the pipeline does: every stage that touches the database fails and is rebuilt (the worker restarts a
crashed stage after 1 s, the expander reconnects) until the database is back. A sender batch caught
between its provider calls and the UPDATE that records them is exactly the documented window: those
messages were delivered and not recorded, so after the lease they are sent again. The checker therefore
allows duplicates only for messages the provider first accepted during the outage (from just before the
stop to the restart), and reports how many there were.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from campaigns.db.engine import upgrade
from campaigns.settings import DatabaseSettings, KafkaSettings, Settings
from tests.faults.conftest import create_campaign, set_channel, wait_finished
from tests.faults.history import check, settle
from tests.faults.services import PrivatePostgres
from tests.helpers import wait_for

OUTAGE_S = 30.0


@pytest.fixture(scope="module")
def private_postgres() -> Iterator[PrivatePostgres]:
    postgres = PrivatePostgres()
    try:
        postgres.start()
        yield postgres
    finally:
        postgres.close()


@pytest.fixture
def settings(private_postgres: PrivatePostgres, kafka_settings: KafkaSettings, topic_prefix: str) -> Settings:
    database = DatabaseSettings(host="127.0.0.1", port=private_postgres.port, user="campaigns", name="campaigns")
    upgrade(database)
    return Settings(kafka=kafka_settings.model_copy(update={"topic_prefix": topic_prefix, "partitions": 3}),
                    database=database, metrics_port=0)


def test_database_unavailable_for_30s_mid_campaign(settings, service, sessions, audience, cluster, private_postgres):
    channel = "whatsapp"
    set_channel(sessions, channel, 150, 30)
    _plan, segments = audience(3000)
    simulator = cluster.start_simulator("--seed", "4")
    workers = [cluster.start_worker("scheduler,expander,tally,completion", channel),
               cluster.start_worker("senders", channel)]
    campaign_id = create_campaign(service, channel, segments[:2], batch_size=200)
    sessions.kw["bind"].dispose()  # the test's own pool must not hand out connections the outage killed
    wait_for(lambda: simulator.accepted_count(channel) >= 300, timeout=60, what="campaign under way")

    down_wall = time.time()
    private_postgres.stop()
    down = time.monotonic()
    while time.monotonic() - down < OUTAGE_S:  # the outage itself: the workers must ride it out
        assert all(w.alive for w in workers), [w.log_text()[-2000:] for w in workers if not w.alive]
        time.sleep(0.5)
    private_postgres.start()
    up_wall = time.time()
    at = simulator.accepted_count(channel)
    resumed = time.monotonic()
    wait_for(lambda: simulator.accepted_count(channel) > at, timeout=60, interval=0.1, what="sending resumed")
    resume_s = time.monotonic() - resumed
    wait_finished(settings, campaign_id, timeout=120, cluster=cluster)

    messages = simulator.messages(channel)
    first_accepted: dict[str, float] = {}
    for m in messages:
        first_accepted.setdefault(m["message_id"], m["accepted_at"])
    in_window = {mid for mid, at in first_accepted.items() if down_wall - 2.0 <= at <= up_wall}
    history = settle(settings, campaign_id, channel, simulator)
    report = check(history, allowed_duplicates=in_window, in_flight=len(in_window))
    report.extra.update(outage_s=OUTAGE_S, resume_after_restart_s=round(resume_s, 1),
                        stage_restarts=len(cluster.crashed_stages()))
    print(f"\nscenario 4: {report}")
    assert report.duplicate_sends <= 200, "more duplicates than one batch in flight"
