"""Completion and the failure threshold backstop: the worker's ``completion`` stage, next to the Faust analytics.

The analytics (``streams/tally.py``) count outcomes into ``campaign_analytics``; this stage reads the totals. When a
campaign's expansion is done and its terminal outcomes reach its recipient count, the recipient log itself is
counted (the authority) before the campaign is completed through the service (so the event goes through the
outbox). The sweep re-checks every active campaign every 2 s (and at once when the analytics' flush notifies that
totals changed), so a crash at any point cannot leave one "active" forever; and a campaign is never completed
while a recipient lacks a terminal row. A campaign whose failed share of attempted sends is over its threshold
(with at least ``failure_min_sample`` attempted) is failed: the backstop behind the senders' own breaker.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, Protocol

from campaigns.core.states import CampaignAction
from campaigns.settings import Settings
from sinks.analytics import AnalyticsStore, PostgresAnalyticsStore

log = logging.getLogger(__name__)

LOG_RECOUNT_EVERY_S = 30.0  # the completion backstop: campaigns' logs counted whatever their totals say


class CampaignFinisher(Protocol):
    """What completion needs of the service: end a campaign (True if this call did)."""

    def finish_campaign(self, campaign_id: uuid.UUID, action: CampaignAction, detail: Any) -> bool: ...


class CompletionStage:
    """Completion and the backstop failure threshold, on their own: a sweep of the active, expanded campaigns
    every ``sweep_every_s`` (default 2 s) against the recipient log (completion) and the ``campaign_analytics``
    totals (threshold), and at once when the Faust analytics (``streams/tally.py``) notify that totals changed.
    The worker's ``completion`` stage."""

    def __init__(self, settings: Settings, service: CampaignFinisher, clock: Callable[[], float] = time.time,
                 metrics: Any = None, store: AnalyticsStore | None = None) -> None:
        self._metrics = metrics  # campaigns.metrics.PipelineMetrics, optional
        self._service = service
        self._clock = clock
        self._store = store or PostgresAnalyticsStore(settings.database.dsn())
        self._last_sweep = 0.0
        self._last_log_count = 0.0

    def run_forever(self, stop: threading.Event, sweep_every_s: float = 2.0) -> None:
        """Sweep every ``sweep_every_s``, and at once when the analytics totals change (``wait_for_totals``:
        the Faust analytics' flush notifies), checking ``stop`` at least every 0.5 s."""
        try:
            while not stop.is_set():
                self.sweep()
                deadline = self._clock() + sweep_every_s
                while not stop.is_set() and (left := deadline - self._clock()) > 0:
                    if self._store.wait_for_totals(min(left, 0.5)):
                        break
        finally:
            self._store.close()

    # --- completion and failure threshold ----------------------------------------------------------

    def sweep(self) -> None:
        """Re-check every active campaign (catches anything a crash or a race left behind).

        A campaign whose totals say every recipient is terminal is checked against the log at every sweep;
        the others only every ``LOG_RECOUNT_EVERY_S``: counting the log of a campaign of a million recipients
        every 2 s was the largest read of PostgreSQL, for a backstop (the totals are exact: the analytics count
        each outcome once, and an outcome whose row committed is re-emitted until counted)."""
        self._last_sweep = now = self._clock()
        ids = self._store.active_expanded()
        recount = now - self._last_log_count >= LOG_RECOUNT_EVERY_S
        if recount:
            self._last_log_count = now
        if ids:
            self.check_campaigns(ids, count_log=recount)

    def check_campaigns(self, campaign_ids: set[str], *, count_log: bool = False) -> None:
        """Fail campaigns over their failure threshold; complete those whose every recipient is terminal.

        ``count_log`` checks the recipient log even when the analytics totals say it is not done yet."""
        for row in self._store.completion_rows(campaign_ids):
            if row.status != "active":
                continue
            cid, sent, failed, threshold, total = row.campaign_id, row.sent, row.failed, row.failure_threshold, \
                row.total_recipients
            attempted = sent + failed
            if attempted >= max(row.failure_min_sample, 1) and failed / attempted > threshold:
                if self._service.finish_campaign(uuid.UUID(cid), CampaignAction.FAIL,
                                                 {"failed": failed, "sent": sent, "threshold": threshold}):
                    if self._metrics is not None:
                        self._metrics.campaign_transition("failed")
                    log.warning("campaign %s failed: %d of %d sends failed", cid, failed, attempted)
                continue
            if (row.expansion_done and total is not None and (row.terminal >= total or count_log)
                    and self._store.terminal_count(cid) >= total):
                if self._service.finish_campaign(uuid.UUID(cid), CampaignAction.COMPLETE, {"recipients": total}):
                    if self._metrics is not None:
                        self._metrics.campaign_transition("completed")
                    log.info("campaign %s completed: %d recipients", cid, total)
