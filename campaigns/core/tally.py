"""Counting delivery outcomes into per-partition window parts: the pure arithmetic of the Faust analytics.

The Faust analytics (``streams/tally.py``) counts ``delivery.outcomes`` (keyed by recipient) on the worker that
owns each source partition, into *parts*: absolute counts of one (campaign, window, source partition), where
the window is a tumbling window start in epoch ms or :data:`TOTALS` for the running totals. A campaign's window
is the sum of its parts over the source partitions (:func:`sum_parts`).

Guarantees:

* **Once per outcome id.** :func:`classify` counts an outcome the first time its id is seen (``counted_at`` is
  then its own ``(partition, offset)``) and treats any later record of the same id - a sender's re-emission or
  an operator's replay, at another offset - as a duplicate.
* **Once per record.** A part carries ``src``: the highest source offset folded into it. :func:`fold` adds a
  record only if its offset is above ``src``. Records of a partition arrive in offset order, so a record
  re-delivered after a crash (its effect already in the recovered part) is skipped, and one whose effect was
  lost is counted. Together: a part counts each outcome id exactly once, whatever is re-delivered or replayed,
  and whichever of the two tables' changelog writes survived a crash.
* **Absolute, monotonic.** A part only grows, and ``src`` with it; so writing a part is idempotent and a
  writer keeps the one with the higher ``src`` (:func:`newer`).
* **Bounded memory: allowed lateness.** An outcome whose record reached ``delivery.outcomes`` more than the
  allowed lateness after it occurred (record timestamp minus ``occurred_at``) is *late* and not counted
  (:func:`late`: both values travel with the record, so every read of it judges it the same). The copies of an
  outcome occur within :data:`COPY_SPREAD_MS` of each other (the first is stamped right after its row commits; a
  sender re-emitting it for a terminal row gives the row's ``updated_at``), and a partition's record timestamps
  are in order within :data:`DISORDER_MS`. So once a partition has a record stamped more than the allowed
  lateness plus both slacks after the ids of a batch occurred, any copy of them still to come is late
  (:func:`dedup_expired`), and the dedup forgets them: it holds about an allowed lateness of ids, not every id
  ever counted. What "once a partition has" must mean for that to hold across crashes - records whose batches
  were committed, and a duplicate moving its parts' ``src`` (:func:`fold`) - is the analytics' (streams/tally.py).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from campaigns.core.vocabulary import COUNTERS, RECEIPT_OUTCOMES, STATUS_TO_COUNTER

__all__ = [
    "COPY_SPREAD_MS", "COUNTERS", "DISORDER_MS", "RECEIPTS", "STATUS_TO_COUNTER", "TOTALS", "Outcome", "backed",
    "classify", "dedup_expired", "empty_part", "fold", "late", "log_key", "newer", "part_key", "sum_parts",
]

RECEIPTS = RECEIPT_OUTCOMES  # external receipts: ``attempt`` is the count
TOTALS = -1  # the window "start" of a campaign's running totals (no real window starts there: epoch-aligned >= 0)
LATENCY = ("latency_count", "latency_sum_ms", "latency_max_ms")
# How far out of timestamp order a partition's records may be: a producer stamps a record when it is produced and
# appends it up to its delivery timeout later (30 s, producers.kafka), and hosts' clocks differ (by far less than
# the other 30 s).
DISORDER_MS = 60_000
# How far apart the occurred_at of an outcome's copies may be: the first is stamped right after its row committed,
# a re-emission carries the row's updated_at (the commit's time, on the database's clock).
COPY_SPREAD_MS = 60_000


@dataclass(frozen=True, slots=True)
class Outcome:
    """One decoded, validated ``DeliveryOutcome`` and where it was read."""

    outcome_id: str
    campaign_id: str
    status: str
    attempt: int
    latency_ms: float | None
    window_start_ms: int
    partition: int
    offset: int
    recipient_id: str = ""
    occurred_ms: int = 0  # occurred_at, ms since the epoch
    timestamp_ms: int = -1  # its record's timestamp in delivery.outcomes (ms; -1: none known)

    def log_key(self) -> tuple[str, int] | None:
        """The recipient-log row that must back this outcome, or None if no row does (a campaign-level receipt,
        or a recipient id no row can have)."""
        return log_key(self.campaign_id, self.status, self.recipient_id)


_BIGINT_MAX = 2**63 - 1


def log_key(campaign_id: str, status: str, recipient_id: str) -> tuple[str, int] | None:
    """(campaign, recipient) of the recipient-log row that backs an outcome of ``status``; None for a receipt
    (campaign-level, no row) and for a recipient id that is no bigint (no row can back it)."""
    if status in RECEIPTS:
        return None
    if not (recipient_id.isascii() and recipient_id.isdigit() and len(recipient_id) <= 19):
        return None
    recipient = int(recipient_id)
    return (campaign_id, recipient) if recipient <= _BIGINT_MAX else None


def backed(status: str, attempt: int, row: tuple[str, int] | None) -> bool:
    """Whether the recipient-log row ``(status, attempts)`` (None: no row) vouches for an outcome: the senders
    produce an outcome only after its row committed, so a terminal outcome finds its row in that status (with that
    attempt count for sent and failed), and a retry a row that reached that attempt. Rows only move forward, so
    the verdict on a record never changes when it is read again. Receipts (campaign-level) are always backed; an
    outcome no row backs - forged, or of another cluster - is not."""
    if status in RECEIPTS:
        return True
    if row is None:
        return False
    lowered = status.lower()
    if lowered == "retrying":
        return row[1] >= attempt
    return row[0] == lowered and (lowered not in ("sent", "failed") or row[1] == attempt)


def late(outcome: Outcome, allowed_lateness_ms: int) -> bool:
    """Whether ``outcome`` reached ``delivery.outcomes`` more than ``allowed_lateness_ms`` after it occurred (its
    record's timestamp minus its ``occurred_at``); never for a record without a timestamp."""
    return outcome.timestamp_ms >= 0 and outcome.timestamp_ms - outcome.occurred_ms > allowed_lateness_ms


def dedup_expired(occurred_ms: int, stream_ms: int, allowed_lateness_ms: int) -> bool:
    """Whether the ids of outcomes that occurred at or before ``occurred_ms`` can be forgotten once every record
    still to be read of their partition comes after one stamped ``stream_ms``: a copy of them among those is
    stamped after ``stream_ms - DISORDER_MS``, i.e. more than the allowed lateness after it occurred (late)."""
    return stream_ms > occurred_ms + allowed_lateness_ms + DISORDER_MS + COPY_SPREAD_MS


def part_key(campaign_id: str, window_start_ms: int, partition: int) -> str:
    """The partition table's key of a part (a string: Faust's json key serializer keeps it as is)."""
    return f"{campaign_id}|{window_start_ms}|{partition}"


def empty_part() -> dict[str, Any]:
    part: dict[str, Any] = dict.fromkeys(COUNTERS, 0)
    part.update(latency_count=0, latency_sum_ms=0.0, latency_max_ms=0.0, src=-1)
    return part


def classify(counted_at: Any, outcome: Outcome) -> bool:
    """Whether ``outcome`` is the record that counts its id: ``counted_at`` is the dedup table's
    ``[partition, offset]`` for the id (None if unseen). False means a duplicate."""
    return counted_at is None or tuple(counted_at) == (outcome.partition, outcome.offset)


def fold(part: Mapping[str, Any] | None, outcomes: Iterable[Outcome],
         duplicates: Collection[int] = ()) -> dict[str, Any] | None:
    """``part`` plus the ``outcomes`` (of its key, in offset order) above its ``src``; None if none was. An outcome
    whose offset is in ``duplicates`` (a copy of one counted before) counts nothing but still moves ``src`` past
    itself: read again, it is skipped here, whatever the dedup remembers by then."""
    out = dict(part) if part else empty_part()
    changed = False
    for o in outcomes:
        if o.offset <= out["src"]:
            continue
        out["src"] = o.offset
        changed = True
        if o.offset in duplicates:
            continue
        out[STATUS_TO_COUNTER[o.status]] += o.attempt if o.status in RECEIPTS else 1
        if o.latency_ms is not None:
            out["latency_count"] += 1
            out["latency_sum_ms"] += o.latency_ms
            out["latency_max_ms"] = max(out["latency_max_ms"], o.latency_ms)
    return out if changed else None


def newer(stored: Mapping[str, Any] | None, incoming: Mapping[str, Any]) -> bool:
    """Whether ``incoming`` (a part of the same key) replaces ``stored``: it has folded in more records."""
    return stored is None or int(incoming["src"]) > int(stored["src"])


def sum_parts(parts: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """A window's values: the sum of its parts (the maximum for ``latency_max_ms``), without ``src``."""
    out: dict[str, Any] = dict.fromkeys(COUNTERS, 0)
    out.update(latency_count=0, latency_sum_ms=0.0, latency_max_ms=0.0)
    for part in parts:
        for name in (*COUNTERS, "latency_count", "latency_sum_ms"):
            out[name] += part[name]
        out["latency_max_ms"] = max(out["latency_max_ms"], part["latency_max_ms"])
    return out
