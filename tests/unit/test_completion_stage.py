"""Completion and the failure threshold (``streams/completion.py``) on ``MemoryAnalyticsStore`` against a fake
service. The same stage on the real services: tests/e2e (pipeline, failure threshold) and tests/faults."""

from __future__ import annotations

import threading
import uuid

from campaigns.core.states import CampaignAction
from campaigns.settings import Settings
from sinks.memory import MemoryAnalyticsStore, MemoryCampaign
from streams.completion import CompletionStage
from tests.helpers import RecordingFinisher, wait_for


def _stage(**campaign: object) -> tuple[CompletionStage, MemoryAnalyticsStore, RecordingFinisher, str]:
    cid = str(uuid.uuid4())
    store = MemoryAnalyticsStore(campaigns={cid: MemoryCampaign(**campaign)})  # type: ignore[arg-type]
    service = RecordingFinisher()
    return CompletionStage(Settings(), service, store=store, clock=lambda: 0.0), store, service, cid


def _totals(store: MemoryAnalyticsStore, cid: str, **counts: int) -> None:
    store.rows[(cid, None)] = {"sent": 0, "failed": 0, "skipped": 0, "cancelled": 0, **counts}


def test_a_campaign_completes_once_its_log_is_terminal_and_not_before() -> None:
    stage, store, service, cid = _stage(expansion_done=True, total_recipients=3)
    store.log.update({(cid, 1): ("sent", 1), (cid, 2): ("sent", 1), (cid, 3): ("claimed", 0)})  # 3 in flight
    _totals(store, cid, sent=2)
    stage.sweep()
    assert service.finished == []
    _totals(store, cid, sent=2, skipped=1)  # the totals say done, the log does not yet: not completed
    stage.sweep()
    assert service.finished == []
    store.log[(cid, 3)] = ("skipped", 0)
    stage.sweep()
    assert service.finished == [(cid, CampaignAction.COMPLETE)]


def test_a_campaign_still_expanding_is_not_completed() -> None:
    stage, store, service, cid = _stage(expansion_done=False, total_recipients=1)
    store.log[(cid, 1)] = ("sent", 1)
    _totals(store, cid, sent=1)
    stage.sweep()
    assert service.finished == []


def test_the_failure_threshold_fails_the_campaign_once_the_sample_is_reached() -> None:
    stage, store, service, cid = _stage(expansion_done=True, total_recipients=10, failure_threshold=0.5,
                                        failure_min_sample=4)
    _totals(store, cid, failed=3)
    stage.sweep()
    assert service.finished == []  # 3 of 3 failed, but the sample is 4
    _totals(store, cid, sent=1, failed=3)
    stage.sweep()
    assert service.finished == [(cid, CampaignAction.FAIL)]


def test_completion_on_its_own_wakes_when_the_totals_change_not_at_its_next_sweep() -> None:
    """Next to the Faust analytics, completion sweeps every ``sweep_every_s`` and at once when the flush notifies
    that totals changed: a campaign whose last outcome was counted completes without waiting for a sweep."""
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
