"""In-memory fakes of the sink ports, for unit tests of stage logic (the real sinks are tested on PostgreSQL).

:class:`MemoryAnalyticsStore` is :class:`sinks.analytics.AnalyticsStore` on dictionaries: the same dedupe rule (an
outcome id counts once), the same row arithmetic (counters and latency added, the maximum kept) and the same
completion reads. ``fail_next`` makes the next :meth:`~MemoryAnalyticsStore.count` raise and change nothing, as a
rolled-back transaction does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from campaigns.core.vocabulary import COUNTERS, TERMINAL_RECIPIENT_STATUSES
from sinks.analytics import ROW_FIELDS, Key, Row
from sinks.campaign_progress import CompletionRow


@dataclass
class MemoryCampaign:
    status: str = "active"
    expansion_done: bool = False
    total_recipients: int | None = None
    failure_threshold: float = 1.0
    failure_min_sample: int = 1


@dataclass
class MemoryAnalyticsStore:
    campaigns: dict[str, MemoryCampaign] = field(default_factory=dict)
    log: dict[Key, tuple[str, int]] = field(default_factory=dict)  # (campaign, recipient) -> (status, attempts)
    seen: set[str] = field(default_factory=set)  # outcome ids counted
    rows: dict[tuple[str, datetime | None], dict[str, Any]] = field(default_factory=dict)  # ROW_FIELDS by name
    fail_next: Exception | None = None
    closed: bool = False

    def known_campaigns(self, campaign_ids: Iterable[str]) -> set[str]:
        return {c for c in campaign_ids if c in self.campaigns}

    def log_rows(self, keys: Sequence[Key]) -> dict[Key, tuple[str, int]]:
        return {k: self.log[k] for k in keys if k in self.log}

    def count(self, outcomes: Mapping[str, str], rows_for: Callable[[list[str]], list[Row]],
              ) -> tuple[list[str], list[Row]]:
        if self.fail_next is not None:
            failure, self.fail_next = self.fail_next, None
            raise failure
        new_ids = [oid for oid in outcomes if oid not in self.seen]
        additions = rows_for(new_ids)
        self.seen.update(new_ids)
        updated = []
        for cid, start, end, *values in additions:
            *counters, latency_count, latency_sum, latency_max, updated_at = values
            row = self.rows.setdefault((cid, start), {
                "campaign_id": cid, "window_start": start, "window_end": end, **dict.fromkeys(COUNTERS, 0),
                "latency_count": 0, "latency_sum_ms": 0.0, "latency_max_ms": 0.0, "complained": 0,
            })
            for name, n in zip(COUNTERS, counters, strict=True):
                row[name] += n
            row["latency_count"] += latency_count
            row["latency_sum_ms"] += latency_sum
            row["latency_max_ms"] = max(row["latency_max_ms"], latency_max)
            row["updated_at"] = updated_at
            updated.append(tuple(row[name] for name in ROW_FIELDS))
        return new_ids, updated

    def active_expanded(self) -> set[str]:
        return {cid for cid, c in self.campaigns.items() if c.status == "active" and c.expansion_done}

    def completion_rows(self, campaign_ids: Iterable[str]) -> list[CompletionRow]:
        found = []
        for cid in sorted(set(campaign_ids)):
            c = self.campaigns.get(cid)
            if c is None:
                continue
            totals = self.rows.get((cid, None), {})
            sent, failed = totals.get("sent", 0), totals.get("failed", 0)
            terminal = sent + failed + totals.get("skipped", 0) + totals.get("cancelled", 0)
            found.append(CompletionRow(cid, c.status, c.expansion_done, c.total_recipients, c.failure_threshold,
                                       c.failure_min_sample, sent, failed, terminal))
        return found

    def terminal_count(self, campaign_id: str) -> int:
        return sum(1 for (cid, _), (status, _) in self.log.items()
                   if cid == campaign_id and status in TERMINAL_RECIPIENT_STATUSES)

    def close(self) -> None:
        self.closed = True
