"""In-memory fakes of the sink ports, for unit tests of stage logic (the real sinks are tested on PostgreSQL).

:class:`MemoryReceiptsStore` is :class:`sinks.receipts.ReceiptsStore` on dictionaries.
:class:`MemorySenderStore` is :class:`sinks.sender_store.SenderStore` on dictionaries (see its docstring).
:class:`MemoryAnalyticsStore` is :class:`sinks.analytics.AnalyticsStore` on dictionaries: the recipient log's
statuses, the ``campaign_analytics`` rows as a test sets them, and the same completion reads.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from campaigns.core.vocabulary import TERMINAL_RECIPIENT_STATUSES
from sinks.analytics import Key
from sinks.audience import Recipient
from sinks.campaign_progress import CompletionRow
from sinks.receipts import ANALYTICS_FIELDS, ReceiptWrites, RowState
from sinks.sender_store import Claimed, Prepare


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
    rows: dict[tuple[str, datetime | None], dict[str, Any]] = field(default_factory=dict)  # ROW_FIELDS by name
    closed: bool = False
    totals_notified: bool = False  # what the Faust analytics' flush NOTIFY would say

    def known_campaigns(self, campaign_ids: Iterable[str]) -> set[str]:
        return {c for c in campaign_ids if c in self.campaigns}

    def log_rows(self, keys: Sequence[Key]) -> dict[Key, tuple[str, int]]:
        return {k: self.log[k] for k in keys if k in self.log}

    def active_expanded(self) -> set[str]:
        return {cid for cid, c in self.campaigns.items() if c.status == "active" and c.expansion_done}

    def wait_for_totals(self, timeout_s: float) -> bool:
        """True once after :meth:`totals_changed`, else after sleeping ``timeout_s`` (tests pass a small one)."""
        if self.totals_notified:
            self.totals_notified = False
            return True
        time.sleep(timeout_s)
        return False

    def totals_changed(self) -> None:
        self.totals_notified = True

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


@dataclass
class MemorySenderCampaign:
    """A campaign as the sender reads it: state, retry policy, breaker, content (one locale by default)."""

    status: str = "active"
    max_retries: int = 3
    backoff_base_s: float = 1.0
    backoff_max_s: float = 60.0
    jitter: float = 0.0
    failure_threshold: float = 1.0
    failure_min_sample: int = 1
    locale: str = "en"
    max_sms_segments: int | None = None
    # (locale, subject, body, template, body parameters, header parameters)
    content: list[tuple[str, str | None, str, str | None, list[str], list[str]]] = field(
        default_factory=lambda: [("en", None, "Hello {{ first_name }}", None, [], [])])


@dataclass
class MemoryLogRow:
    message_id: str
    status: str
    attempts: int = 0
    reason: str | None = None
    provider_id: str | None = None
    claimed_at: datetime | None = None
    lease_until: datetime | None = None
    updated_at: datetime = field(default_factory=lambda: datetime.now(UTC))


@dataclass
class MemoryChannel:
    paused_reason: str | None = None
    probe_at: datetime | None = None
    probes: int = 0


@dataclass
class MemorySenderStore:
    """:class:`sinks.sender_store.SenderStore` on dictionaries: one claim per pair, take-over of retrying rows and
    expired claims, results only for claims still held, cancels that never overwrite a terminal row, the channel
    breaker's probe. ``calls`` counts the calls by name (a test can check what reached the database)."""

    campaigns: dict[str, MemorySenderCampaign] = field(default_factory=dict)
    audience: dict[Key, Recipient] = field(default_factory=dict)
    log: dict[Key, MemoryLogRow] = field(default_factory=dict)
    channels: dict[str, MemoryChannel] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)
    closed: bool = False

    def _call(self, name: str) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1

    def campaign_states(self, campaign_ids: Sequence[str]) -> list[tuple[Any, ...]]:
        self._call("campaign_states")
        return [(cid, c.status, c.max_retries, c.backoff_base_s, c.backoff_max_s, c.jitter, c.failure_threshold,
                 c.failure_min_sample) for cid, c in self.campaigns.items() if cid in campaign_ids]

    def content(self, campaign_id: str) -> tuple[str, int | None, list[tuple[Any, ...]]]:
        self._call("content")
        c = self.campaigns.get(campaign_id)
        return ("en", None, []) if c is None else (c.locale, c.max_sms_segments, list(c.content))

    def claim(self, channel: str, keys: Sequence[Key], prepare: Prepare, now: datetime, lease: datetime) -> Claimed:
        self._call("claim")
        active = {c for c, _ in keys if c in self.campaigns and self.campaigns[c].status == "active"}
        members = {k: self.audience[k] for k in keys if k[0] in active and k in self.audience}
        skipped, claims = prepare(active, members)
        for c, r, message_id, _, _, reason, _, updated_at in skipped:
            self.log.setdefault((c, r), MemoryLogRow(message_id, "skipped", reason=reason, updated_at=updated_at))
        claimed, taken, existing = [], [], []
        for c, r, message_id in claims:
            row = self.log.get((c, r))
            if row is None:
                self.log[(c, r)] = MemoryLogRow(message_id, "claimed", claimed_at=now, lease_until=lease,
                                                updated_at=now)
                claimed.append((c, r))
            elif row.status == "retrying" or (row.status == "claimed" and row.lease_until is not None
                                              and row.lease_until < now):
                row.status, row.claimed_at, row.lease_until, row.updated_at = "claimed", now, lease, now
                taken.append((c, r, row.attempts))
            else:
                existing.append((c, r, row.status, row.attempts, row.reason, row.provider_id, row.lease_until,
                                 row.updated_at))
        return Claimed(active, members, claimed, taken, existing)

    def terminal_rows(self, campaign_id: str, recipients: Sequence[int], status: str) -> list[tuple[Any, ...]]:
        self._call("terminal_rows")
        return [(r, row.message_id, row.reason, row.updated_at) for r in recipients
                if (row := self.log.get((campaign_id, r))) is not None and row.status == status]

    def cancel(self, channel: str, messages: Sequence[tuple[str, int, str]], now: datetime,
               ) -> tuple[int, list[tuple[str, int, str | None, datetime]]]:
        self._call("cancel")
        cancelled = 0
        for c, r, message_id in messages:
            reason = f"campaign_{self.campaigns[c].status}" if c in self.campaigns else None
            row = self.log.get((c, r))
            if row is None:
                self.log[(c, r)] = MemoryLogRow(message_id, "cancelled", reason=reason, updated_at=now)
                cancelled += 1
            elif row.status == "retrying":
                row.status, row.reason, row.updated_at = "cancelled", reason, now
                cancelled += 1
        rows = [(c, r, row.reason, row.updated_at) for c, r, _ in messages
                if (row := self.log[(c, r)]).status == "cancelled"]
        return cancelled, rows

    def record_results(self, results: Sequence[tuple[Any, ...]], claimed_at: datetime, sent_at: datetime,
                       ) -> list[Key]:
        self._call("record_results")
        recorded = []
        for c, r, status, attempts, reason, provider_id in results:
            row = self.log.get((c, r))
            if row is not None and row.status == "claimed" and row.claimed_at == claimed_at:
                row.status, row.attempts, row.reason, row.provider_id = status, attempts, reason, provider_id
                row.lease_until, row.updated_at = None, datetime.now(UTC)  # PostgreSQL's now() at the commit
                recorded.append((c, r))
        return recorded

    def channel_gate(self, channel: str, now: datetime, next_probe_at: Callable[[int], datetime],
                     ) -> tuple[str | None, bool]:
        self._call("channel_gate")
        state = self.channels.setdefault(channel, MemoryChannel())
        if state.paused_reason is None:
            return None, False
        if state.probe_at is None or state.probe_at > now:
            return state.paused_reason, False
        state.probes += 1
        state.probe_at = next_probe_at(state.probes)
        return state.paused_reason, True

    def give_back_probe(self, channel: str, now: datetime) -> None:
        self._call("give_back_probe")
        state = self.channels.setdefault(channel, MemoryChannel())
        if state.paused_reason is not None:
            state.probe_at, state.probes = now, max(0, state.probes - 1)

    def open_channel(self, channel: str, reason: str, now: datetime, first_probe_at: datetime) -> bool:
        self._call("open_channel")
        state = self.channels.setdefault(channel, MemoryChannel())
        if state.paused_reason is not None:
            return False
        state.paused_reason, state.probe_at, state.probes = reason, first_probe_at, 0
        return True

    def close_channel(self, channel: str) -> bool:
        self._call("close_channel")
        state = self.channels.setdefault(channel, MemoryChannel())
        if state.paused_reason is None:
            return False
        self.channels[channel] = MemoryChannel()
        return True

    def close(self) -> None:
        self.closed = True


@dataclass
class MemoryReceiptsStore:
    """:class:`sinks.receipts.ReceiptsStore` on dictionaries: ``sent`` rows by (provider message id, channel) as
    :data:`~sinks.receipts.RowState` lists, analytics rows by (campaign, window start), suppressions by (channel,
    address), first reason kept. ``fail_next`` makes the next apply raise and change nothing."""

    rows: dict[tuple[str, str], list[Any]] = field(default_factory=dict)
    analytics: dict[tuple[str, datetime | None], dict[str, Any]] = field(default_factory=dict)
    suppressions: dict[tuple[str, str], str] = field(default_factory=dict)
    fail_next: Exception | None = None
    closed: bool = False

    def apply(self, ids: Sequence[tuple[str, str]], plan: Callable[[list[RowState]], ReceiptWrites], now: datetime,
              ) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
        if self.fail_next is not None:
            failure, self.fail_next = self.fail_next, None
            raise failure
        locked = sorted((tuple(self.rows[k]) for k in set(ids) if k in self.rows), key=lambda r: (r[0], r[1]))
        writes = plan(locked)  # type: ignore[arg-type]
        by_pair = {(row[0], row[1]): row for row in self.rows.values()}
        for cid, rid, delivered, read, bounced, complained, status in writes.updates:
            by_pair[(cid, rid)][4:9] = [delivered, read, bounced, complained, status]
        published = []
        for cid, start, end, counts in writes.counts:
            row = self.analytics.setdefault((cid, start), {
                **dict.fromkeys(ANALYTICS_FIELDS, 0), "campaign_id": cid, "window_start": start, "window_end": end,
                "latency_sum_ms": 0.0, "latency_max_ms": 0.0})
            for counter, n in counts.items():
                row[counter] += n
            row["updated_at"] = now
            published.append(dict(row))
        suppressed = []
        for channel, address, reason, _source in writes.suppress:
            if (channel, address) not in self.suppressions:
                self.suppressions[(channel, address)] = reason
                suppressed.append((channel, address))
        return published, suppressed

    def close(self) -> None:
        self.closed = True
