"""What a channel sender (``streams/sender.py``) needs of PostgreSQL, as one port: :class:`SenderStore`.

:class:`PostgresSenderStore` is it on one psycopg2 connection: every method is one transaction of its own (the
sink functions beneath it never commit), committed before it returns, so the sender produces the records derived
from rows only once those rows are durable. A method of one statement runs it on its own
(``StoreConnection.statement``: one round trip, no ``BEGIN``/``COMMIT``), the others in an explicit transaction.
:class:`sinks.memory.MemorySenderStore` is the in-memory fake the sender's unit tests use; the guarantees below are
what both keep.

* :meth:`~SenderStore.claim` is atomic with the campaigns being ``active``: it share-locks the rows of the active
  ones among them (``campaign_progress.lock_active``), resolves the pairs against the audience
  (``sinks.audience.resolve``), lets the caller decide from that what to skip and what to claim (``prepare``, pure:
  it must not call the store), records the skipped rows, claims the rest (exactly one claim wins a pair), takes over
  those whose row is ``retrying`` or whose claim's lease ran out, and reads the rows of the pairs it could not claim.
* :meth:`~SenderStore.record_results` writes results only for claims still held (same ``claimed_at``).
* :meth:`~SenderStore.cancel` never overwrites a terminal row (a ``retrying`` one becomes ``cancelled``) and returns
  every ``cancelled`` row of the pairs, old ones included, so their outcomes can be emitted again with the same ids.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from sinks import audience, campaign_progress, channels, recipient_log
from sinks.audience import Recipient
from sinks.connection import KEY_LOOKUPS, StoreConnection

Key = tuple[str, int]  # (campaign, recipient)
# (campaign, recipient, message id, channel, status, reason, created at, updated at): a terminal row to insert
TerminalRow = tuple[str, int, str, str, str, str | None, datetime, datetime]
# (campaign, recipient, message id): a claim to make (on the store call's channel, at its now, until its lease)
ClaimRow = tuple[str, int, str]
# (campaign, recipient, status, attempts, failure reason, provider message id, lease until, updated at)
LogRow = tuple[str, int, str, int, str | None, str | None, datetime | None, datetime]
Prepare = Callable[[set[str], dict[Key, Recipient]], tuple[list[TerminalRow], list[ClaimRow]]]


@dataclass(frozen=True)
class Claimed:
    """What one claim transaction did."""

    active: set[str]  # the campaigns that were active (share-locked) during it
    members: dict[Key, Recipient]  # the pairs of active campaigns that are in their audience, as they are now
    claimed: list[Key]  # new claims
    taken_over: list[tuple[str, int, int]]  # (campaign, recipient, attempts so far): retries and expired claims
    existing: list[LogRow]  # the rows of the pairs it could neither claim nor take over


class SenderStore(Protocol):
    def campaign_states(self, campaign_ids: Sequence[str]) -> list[tuple[Any, ...]]:
        """``(id, status, max_retries, backoff_base_s, backoff_max_s, jitter, failure_threshold, min_sample)``."""
        ...

    def content(self, campaign_id: str) -> tuple[str, int | None, list[tuple[Any, ...]]]:
        """The campaign's default locale, SMS segment cap and content rows (``campaign_progress.content``)."""
        ...

    def claim(self, channel: str, keys: Sequence[Key], prepare: Prepare, now: datetime, lease: datetime) -> Claimed:
        """See the module docstring. ``keys`` are canonical (campaign, recipient) pairs, each once."""
        ...

    def terminal_rows(self, campaign_id: str, recipients: Sequence[int], status: str) -> list[tuple[Any, ...]]:
        """``(recipient, message id, reason, updated at)`` of the campaign's rows among ``recipients`` in
        ``status``."""
        ...

    def cancel(self, channel: str, messages: Sequence[tuple[str, int, str]], now: datetime,
               ) -> tuple[int, list[tuple[str, int, str | None, datetime]]]:
        """Cancel (campaign, recipient, message id) unless terminal; (rows it cancelled now, every ``cancelled`` row
        of those pairs as (campaign, recipient, reason, updated at))."""
        ...

    def record_results(self, results: Sequence[tuple[Any, ...]], claimed_at: datetime, sent_at: datetime,
                       ) -> list[Key]:
        """Write ``(campaign, recipient, status, attempts, reason, provider id)`` of the claims made at
        ``claimed_at`` (a ``sent`` one sent at ``sent_at``); the pairs whose claim was still held (the others were
        taken over meanwhile)."""
        ...

    def channel_gate(self, channel: str, now: datetime, next_probe_at: Callable[[int], datetime],
                     ) -> tuple[str | None, bool]:
        """(why the channel is paused or None, whether this worker took the half-open probe); taking the probe
        sets the next one's time to ``next_probe_at(probes taken so far)``."""
        ...

    def give_back_probe(self, channel: str, now: datetime) -> None: ...

    def open_channel(self, channel: str, reason: str, now: datetime, first_probe_at: datetime) -> bool:
        """Open the channel's breaker if closed; True if this call opened it."""
        ...

    def close_channel(self, channel: str) -> bool:
        """Close the channel's breaker if open; True if this call closed it."""
        ...

    def close(self) -> None: ...


class PostgresSenderStore:
    """:class:`SenderStore` on one psycopg2 connection; each method one transaction, rolled back if it raises."""

    def __init__(self, dsn: str) -> None:
        self._conn = StoreConnection(dsn, options=KEY_LOOKUPS)  # every statement a batch of key lookups

    def campaign_states(self, campaign_ids: Sequence[str]) -> list[tuple[Any, ...]]:
        with self._conn.statement() as cur:
            return campaign_progress.states(cur, campaign_ids)

    def content(self, campaign_id: str) -> tuple[str, int | None, list[tuple[Any, ...]]]:
        with self._conn.transaction() as cur:
            return campaign_progress.content(cur, campaign_id)  # type: ignore[no-any-return]

    def claim(self, channel: str, keys: Sequence[Key], prepare: Prepare, now: datetime, lease: datetime) -> Claimed:
        with self._conn.transaction() as cur:
            active = campaign_progress.lock_active(cur, {c for c, _ in keys})
            members = audience.resolve(cur, channel, [k for k in keys if k[0] in active])
            skipped, claims = prepare(active, members)
            recipient_log.record_terminal(cur, "skipped", skipped)
            claimed = recipient_log.claim(cur, claims, channel, now, lease)
            won = set(claimed)
            rest = [(c, r) for c, r, _ in claims if (c, r) not in won]
            taken = recipient_log.take_over(cur, rest, now, lease) if rest else []
            taken_keys = {(c, r) for c, r, _ in taken}
            rest = [k for k in rest if k not in taken_keys]
            existing = recipient_log.rows(cur, rest) if rest else []
        return Claimed(active, members, claimed, taken, existing)

    def terminal_rows(self, campaign_id: str, recipients: Sequence[int], status: str) -> list[tuple[Any, ...]]:
        with self._conn.statement() as cur:
            return recipient_log.terminal_rows(cur, campaign_id, recipients, status)

    def cancel(self, channel: str, messages: Sequence[tuple[str, int, str]], now: datetime,
               ) -> tuple[int, list[tuple[str, int, str | None, datetime]]]:
        with self._conn.transaction() as cur:
            cancelled = recipient_log.cancel_messages(cur, messages, channel, now)
        with self._conn.statement() as cur:  # read after the commit: the rows other writers cancelled count too
            rows = recipient_log.cancelled_rows(cur, [(c, r) for c, r, _ in messages])
        return cancelled, rows

    def record_results(self, results: Sequence[tuple[Any, ...]], claimed_at: datetime, sent_at: datetime,
                       ) -> list[Key]:
        with self._conn.statement() as cur:  # one UPDATE: the rows it returns are committed
            return recipient_log.record_results(cur, results, claimed_at, sent_at)

    def channel_gate(self, channel: str, now: datetime, next_probe_at: Callable[[int], datetime],
                     ) -> tuple[str | None, bool]:
        with self._conn.transaction() as cur:
            reason = channels.paused_reason(cur, channel)
            if reason is None:
                return None, False
            taken = channels.take_probe(cur, channel, now)
            if taken is not None:  # this worker sends the probe; the next one waits longer if it fails
                channels.set_next_probe(cur, channel, next_probe_at(taken))
            return reason, taken is not None

    def give_back_probe(self, channel: str, now: datetime) -> None:
        with self._conn.transaction() as cur:
            channels.give_back_probe(cur, channel, now)

    def open_channel(self, channel: str, reason: str, now: datetime, first_probe_at: datetime) -> bool:
        with self._conn.transaction() as cur:
            return channels.open_(cur, channel, reason, now, first_probe_at)

    def close_channel(self, channel: str) -> bool:
        with self._conn.transaction() as cur:
            return channels.close(cur, channel)

    def close(self) -> None:
        self._conn.close()
