"""The analytics stage's logic on fakes: ``MemoryConsumer`` (``delivery.outcomes``), ``MemoryProducer`` and
``MemoryAnalyticsStore``; completion and the failure threshold against a fake service. The same stage on the
real services: tests/e2e (pipeline, failure threshold, forged messages) and tests/faults (replay, crash)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest

from campaigns.codec import get_codec
from campaigns.core.states import CampaignAction
from campaigns.settings import Settings
from campaigns.topics import ANALYTICS, OUTCOMES
from producers.kafka import MemoryProducer
from sinks.memory import MemoryAnalyticsStore, MemoryCampaign
from streams.analytics import AnalyticsStage
from streams.memory import MemoryConsumer
from tests.helpers import RecordingFinisher

T0 = datetime(2026, 11, 30, 12, 0, 7, tzinfo=UTC)
CODEC = get_codec()


@dataclass
class Harness:
    stage: AnalyticsStage
    consumer: MemoryConsumer
    producer: MemoryProducer
    store: MemoryAnalyticsStore
    service: RecordingFinisher
    topic: str
    campaign: str

    def outcome(self, recipient: int, status: str = "SENT", attempt: int = 1, *, campaign: str | None = None,
                partition: int = 0, at: datetime = T0) -> dict[str, Any]:
        record = {
            "outcome_id": f"m{recipient}:{attempt}:{status}", "message_id": f"m{recipient}",
            "campaign_id": campaign or self.campaign, "recipient_id": str(recipient), "channel": "sms",
            "status": status, "attempt": attempt, "latency_ms": 10.0, "failure_reason": None,
            "provider_message_id": None, "occurred_at": at,
        }
        self.consumer.add(self.topic, CODEC.encode("DeliveryOutcome", record), key=str(recipient).encode(),
                          partition=partition)
        return record

    def totals(self) -> dict[str, Any]:
        return self.store.rows[(self.campaign, None)]

    def published(self) -> list[dict[str, Any]]:
        topic = Settings().kafka.topic(ANALYTICS)
        return [CODEC.decode(v, "CampaignAnalytics") for t, _, v, _ in self.producer.records if t == topic]


@pytest.fixture
def h() -> Harness:
    settings = Settings()
    campaign = str(uuid.uuid4())
    store = MemoryAnalyticsStore(campaigns={campaign: MemoryCampaign()})
    consumer, producer, service = MemoryConsumer(), MemoryProducer(), RecordingFinisher()
    stage = AnalyticsStage(settings, producer, service, consumer=consumer, store=store, clock=lambda: 0.0)
    topic = settings.kafka.topic(OUTCOMES)
    consumer.add(topic, b"", partition=0)  # an empty record first: skipped as undecodable, nothing stops
    consumer.subscribe([topic])
    return Harness(stage, consumer, producer, store, service, topic, campaign)


def _logged(h: Harness, recipients: range, status: str = "sent", attempts: int = 1) -> None:
    for r in recipients:
        h.store.log[(h.campaign, r)] = (status, attempts)


def test_outcomes_are_counted_once_per_id_across_batches_and_partitions(h: Harness) -> None:
    _logged(h, range(1, 6))
    for r in range(1, 6):
        h.outcome(r, partition=r % 2)
    h.stage.run_once()
    for r in (1, 2, 3):  # re-emitted after a crash, replayed by an operator: same ids
        h.outcome(r, partition=r % 2)
    h.stage.run_once()
    assert h.totals()["sent"] == 5 and h.stage.counted == 5 and h.stage.undecodable == 1
    window = h.store.rows[(h.campaign, datetime(2026, 11, 30, 12, 0, 0, tzinfo=UTC))]
    assert window["sent"] == 5 and window["latency_count"] == 5
    assert h.published()[-1]["sent"] == 5  # the rows as they are after the batch
    assert h.consumer.committed == {(h.topic, 0): 4, (h.topic, 1): 5}  # one past each partition's last


def test_outcomes_the_log_does_not_back_are_not_counted(h: Harness) -> None:
    _logged(h, range(1, 3))
    _logged(h, range(3, 4), status="failed", attempts=2)
    h.outcome(1)
    h.outcome(2, "FAILED")  # the row says sent
    h.outcome(3, "FAILED", attempt=1)  # the row says failed after 2 attempts
    h.outcome(4)  # no row at all (forged)
    h.outcome(5, campaign=str(uuid.uuid4()))  # not a campaign
    h.outcome(6, campaign="not-a-uuid")
    h.stage.run_once()
    assert h.totals()["sent"] == 1 and h.totals()["failed"] == 0
    assert h.stage.unbacked == 3 and h.stage.undecodable == 3  # the empty record and the two unknown campaigns


def test_a_failed_count_commits_nothing_and_the_redelivered_batch_counts_once(h: Harness) -> None:
    _logged(h, range(1, 4))
    for r in range(1, 4):
        h.outcome(r)
    h.store.fail_next = ConnectionError("PostgreSQL went away")
    with pytest.raises(ConnectionError):
        h.stage.run_once()
    assert h.consumer.committed == {} and h.store.seen == set()
    h.stage.run_once()  # the runtime rewound the batch
    assert h.totals()["sent"] == 3 and h.consumer.committed == {(h.topic, 0): 4}


def test_a_campaign_completes_once_its_log_is_terminal_and_not_before(h: Harness) -> None:
    campaign = h.store.campaigns[h.campaign]
    campaign.expansion_done, campaign.total_recipients = True, 3
    _logged(h, range(1, 3))
    h.store.log[(h.campaign, 3)] = ("claimed", 0)  # in flight
    h.outcome(1)
    h.outcome(2)
    h.stage.run_once()
    assert h.service.finished == []
    h.store.log[(h.campaign, 3)] = ("skipped", 0)
    h.outcome(3, "SKIPPED", attempt=0)
    h.stage.run_once()
    assert h.service.finished == [(h.campaign, CampaignAction.COMPLETE)]


def test_the_failure_threshold_fails_the_campaign_once_the_sample_is_reached(h: Harness) -> None:
    campaign = h.store.campaigns[h.campaign]
    campaign.failure_threshold, campaign.failure_min_sample = 0.5, 4
    _logged(h, range(1, 4), status="failed")
    for r in range(1, 4):
        h.outcome(r, "FAILED")
    h.stage.run_once()
    assert h.service.finished == []  # 3 of 3 failed, but the sample is 4
    _logged(h, range(4, 5))
    h.outcome(4)
    h.stage.run_once()
    assert h.service.finished == [(h.campaign, CampaignAction.FAIL)]


def test_completion_on_its_own_wakes_when_the_totals_change_not_at_its_next_sweep() -> None:
    """Next to the Faust analytics, completion sweeps every ``sweep_every_s`` and at once when the flush notifies
    that totals changed: a campaign whose last outcome was counted completes without waiting for a sweep."""
    import threading

    from streams.analytics import CompletionStage
    from tests.helpers import wait_for

    campaign = str(uuid.uuid4())
    store = MemoryAnalyticsStore(campaigns={campaign: MemoryCampaign(expansion_done=True, total_recipients=2)})
    store.log[(campaign, 1)] = ("sent", 1)
    store.log[(campaign, 2)] = ("claimed", 0)
    service = RecordingFinisher()
    stage = CompletionStage(Settings(), service, store=store)
    stop = threading.Event()
    thread = threading.Thread(target=stage.run_forever, args=(stop,), kwargs={"sweep_every_s": 3600.0})
    thread.start()
    try:
        wait_for(lambda: stage._last_sweep > 0, timeout=10, what="the first sweep")
        assert service.finished == []
        store.log[(campaign, 2)] = ("sent", 1)
        store.rows[(campaign, None)] = {"sent": 2, "failed": 0, "skipped": 0, "cancelled": 0}
        store.totals_changed()
        wait_for(lambda: service.finished == [(campaign, CampaignAction.COMPLETE)], timeout=10,
                 what="completion after the notification (the next sweep is an hour away)")
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive() and store.closed
