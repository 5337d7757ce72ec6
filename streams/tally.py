"""Faust analytics: ``delivery.outcomes`` -> windowed Faust tables -> ``campaign_analytics`` (+ ``campaign.analytics``).

Two agents and four tables (``python -m streams.tally worker -l info``; settings from ``CAMPAIGNS_*``), and the
forwarder (``streams.outcome_batches``, a thread of the same process started by ``main``), which writes
``delivery.outcomes`` in batches to ``delivery.outcomes.batched``: one Faust event per batch of a source partition,
not one per outcome. Every outcome keeps its source position (partition, offset in ``delivery.outcomes``), and
everything below is said of those positions, as when this app read ``delivery.outcomes`` itself.

1. ``count_outcomes`` reads ``delivery.outcomes`` (keyed by recipient), forwarded, in micro-batches. On the worker
   that owns source partition P, ``batch_to_counted`` (per batch: the outcome ids it counted, their offsets and when
   the latest occurred; indexed on disk by outcome id, the index rebuilt after every assignment) drops duplicates
   (re-emitted outcomes, replays), and ``part_to_counts`` keeps the absolute counts of P's share of each (campaign,
   window) and of each campaign's totals: a *part* (``campaigns.core.tally``). Both tables write to changelog
   partition P, so recovery rebuilds exactly P's state on P's new owner. One table write per touched part per batch,
   plus one per source partition for the ids it counted. After each batch every part the batch counted in - changed
   or not - is sent, absolute, keyed by campaign, to ``campaign.analytics_parts``.
2. ``merge_parts`` reads ``campaign.analytics_parts`` (keyed by campaign) into ``campaign_to_window_parts``, a
   tumbling windowed table (``analytics.window_s``, epoch-aligned like ``campaigns.core.windows``) of campaign
   -> {partition: part}, and ``campaign_to_total_parts`` (plain). A part replaces the stored one only if its
   ``src`` is higher. A timer (``analytics.flush_interval_s``) writes the changed parts, and every
   ``full_flush_every`` ticks all of them, to PostgreSQL (``sinks.analytics.write_parts``): absolute values,
   kept only if newer, rows re-summed from their parts; the rows that changed go to ``campaign.analytics``.

Exactly-once, step by step (what each relies on):

* Source offsets are committed only after Faust flushed its producer (changelogs and the parts topic): Faust's
  ``Consumer._commit_offsets``; ``take_events`` acks a batch's events only after the agent's body ran.
  So a crash re-delivers every record whose effects may be missing, from the committed offset on.
* A re-delivered record is counted again only where its effect is missing: per part, ``src`` is a watermark
  (records of a partition come in offset order); per outcome id, the record that counted it is the one at
  ``counted_at``. Which of the two tables' changelog writes survived a crash does not matter.
* Parts are absolute and carry ``src``: a lost send is repaired by the re-delivered batch re-sending every part
  it touches; a duplicate or stale send changes nothing.
* The database keeps a part only if its ``src_offset`` is higher, and the row is the sum of its parts: a crash
  between the database write and the changelog, a rebalance (two owners writing), a replay or a full flush
  writes the same values. Recovered state that never reached the database is written by the next full flush.
* An old outcome changes its partition's part; its window reopens in the windowed table if it had expired there
  (holding only the parts that changed since), which is harmless: the database re-sums from all stored parts.
* **Allowed lateness** (``analytics.allowed_lateness_s``): an outcome whose record was stamped more than that
  after it occurred is not counted (``campaigns.core.tally.late``), and in exchange ``batch_to_counted`` forgets
  a batch once the records of its partition that the app *committed* are stamped past its outcomes' lateness
  plus two slacks (``Counter._forget``): every copy still to come is then late, or is a record of those
  committed batches read again, whose effects are stored (a duplicate moves its parts' ``src`` for this).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import ctypes
import heapq
import itertools
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Generator, Iterable, Iterator, Mapping, Sequence, Set
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import faust
import psycopg2
from aiokafka.errors import KafkaError
from faust.tables.wrappers import WindowWrapper
from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers.aiokafka import Consumer as AIOKafkaConsumer
from faust.types import TP, EventT
from mode import want_seconds
from pydantic import BaseModel, SecretStr

from campaigns.codec import Codec, get_codec
from campaigns.collector import tune_collector
from campaigns.core.tally import (
    STATUS_TO_COUNTER,
    TOTALS,
    Outcome,
    backed,
    classify,
    dedup_expired,
    fold,
    late,
    newer,
    part_key,
    sum_parts,
)
from campaigns.core.windows import EPOCH, window_start_ms
from campaigns.errors import SchemaError
from campaigns.settings import Settings, load_settings
from campaigns.topics import ANALYTICS, ANALYTICS_PARTS, OUTCOME_BATCHES, OUTCOMES, TALLY_GROUP
from producers.topics import TopicSpec, ensure_topics
from producers.topics import topic_specs as pipeline_topic_specs
from sinks import analytics as sink
from sinks.analytics import PostgresAnalyticsStore
from sinks.connection import StoreConnection
from streams.dedup import DedupIndex, outcome_digest, pack_batch, unpack_batch
from streams.live import SourcePartitionedTable, _writing_to
from streams.outcome_batches import start_forwarder

log = logging.getLogger(__name__)

APP_NAME = TALLY_GROUP  # the Faust app id: its consumer group
DEDUP_TABLE = "batch_to_counted"
PARTS_TABLE = "part_to_counts"
WINDOWS_TABLE = "campaign_to_window_parts"
TOTALS_TABLE = "campaign_to_total_parts"
OUTCOME_ID_MAX = 128
REINDEX_STEP = 10_000  # outcome ids indexed between two yields of a rebuild to the event loop (~50 ms)
BATCHES_PER_STEP = 20  # OutcomeBatch events per count_outcomes step: a few hundred outcomes each, at most 5,000
YIELD_EVERY = 64  # records handed to the streams between two yields of the read loop to the event loop
# The fields of a DeliveryOutcome the analytics count by (Counter.decode), occurred_at in epoch milliseconds.
_OUTCOME_FIELDS = ("outcome_id", "campaign_id", "recipient_id", "status", "attempt", "latency_ms", "occurred_at")
LogKey = tuple[str, int]  # (campaign, recipient) of a recipient-log row


@dataclass
class TallyStats:
    records: int = 0
    counted: int = 0  # outcomes counted for the first time
    duplicates: int = 0  # outcome ids counted before (re-emitted, replayed)
    skipped: int = 0  # undecodable or invalid
    unbacked: int = 0  # no recipient-log row vouches for them (forged, or of another cluster)
    late: int = 0  # reached delivery.outcomes more than analytics.allowed_lateness_s after they occurred
    forgotten: int = 0  # outcome ids dropped from the dedup (their partition's records are past the lateness)
    revoked: int = 0  # left to the new owner of their partition
    jumps: int = 0  # records Faust delivered beyond the next offset of their partition (held back, re-read)
    unstuck: int = 0  # partitions sought back because they stalled with records left to count (InOrder.unstick)
    batches: int = 0
    parts_sent: int = 0
    flushes: int = 0
    rows_written: int = 0
    flush_errors: int = 0
    started_at: float = field(default_factory=time.time)


def withhold_ack(consumer: Any, message: Any) -> None:
    """Faust will not acknowledge ``message``: its offset never enters the consumer's acknowledged offsets, so no
    commit covers it until a re-delivered copy of the record is acknowledged. Marked before ``take_events``
    acknowledges the batch (``Consumer.ack`` skips a message already marked ``acked``), so no commit - periodic,
    or the one Faust makes while partitions are revoked - can come in between."""
    message.acked = True
    consumer._unacked_messages.discard(message)  # nothing to wait for at a revocation (Consumer.wait_empty)


class GaplessConsumer(AIOKafkaConsumer):
    """Faust's aiokafka consumer without its gap bookkeeping (``Consumer._add_gap``), which is wrong for every topic
    this app acknowledges (``delivery.outcomes``, ``campaign.analytics_parts``: contiguous offsets, never compacted;
    the changelogs are not acknowledged). When its read loop sees a record beyond the last one it read, Faust takes
    the records in between for a gap in the topic and counts them as acknowledged at the next commit. They are
    not: they were dropped (faust-streaming/faust#216, records fetched before a seek), or already read when
    ``perform_seek`` set the read offset back (a rebalance racing the read loop); the first let a commit pass
    records never counted, the second appends offsets acknowledged already, whose duplicates split Faust's runs
    of consecutive offsets so that the partition's commits advance by one offset per commit interval (seen: 667,
    669, 670, ... every 2.8 s). Records really skipped are :class:`InOrder`'s to read again."""

    async def _add_gap(self, tp: Any, offset_from: int, offset_to: int) -> None:
        return None

    async def _drain_messages(self, fetcher: Any) -> None:
        """Faust's read loop (faust-streaming 0.15.3 ``Consumer._drain_messages``) without four tasks per record.

        Faust hands each record to its streams with ``wait_first(callback(message), suspend_flow.wait())``:
        four tasks and an ``asyncio.wait`` per record, a quarter of this process's CPU in the benchmark. Here the
        loop yields to the event loop once per ``YIELD_EVERY`` records, not once per record (an event-loop pass
        per record; the streams' queues bound what a slice can pile up, and a full one suspends the callback, which
        yields), and runs the callback inline (:func:`run_until_suspended`); it almost always finishes there
        (the record is decoded and put on a stream's queue that has room). Only a callback that has to wait - a
        full queue, flow suspended for a rebalance, a full producer buffer - goes on, as a task, under Faust's own
        ``wait_first``, so a suspension still abandons it exactly as before. No gap bookkeeping (above).

        Faust drops a record below the partition's read offset as already read. That is wrong for the topics
        :class:`InOrder` guards (those whose records are acknowledged): a seek back from aiokafka's thread
        (``seek_wait``) can be overwritten by the loop setting the read offset to the record it just handed over,
        and the records the seek went back to are then dropped for good - the last records of a partition have no
        later record to reveal the gap. So every record of those topics is handed over (``InOrder.admit`` passes
        them in offset order; a re-delivery is absorbed by the tables). The changelogs keep Faust's rule, their
        read offset advanced only if no seek moved it meanwhile."""
        callback = self.callback
        consumer_should_stop = cast(Any, self)._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        read_offsets = self._read_offset
        guarded = self.app.topics.acks_enabled_for
        commit_every = self._commit_every
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                self.diag.set_flag(CONSUMER_FETCHING)
                records = self.getmany(timeout=1.0)
                await self.sleep(0)  # getmany may return at once, again and again: let the loop run
                if not self.should_stop:
                    handed = 0
                    async for tp, message in records:
                        handed += 1
                        if handed % YIELD_EVERY == 0:
                            await asyncio.sleep(0)  # let the streams and timers run between slices of records
                        offset = message.offset
                        changelog = not guarded(message.topic)
                        read = read_offsets[tp] if changelog else None
                        if read is not None and offset < read:
                            continue  # a changelog record already read
                        if commit_every is not None and self._n_acked >= commit_every:
                            self._n_acked = 0
                            await self.commit()
                        rest = run_until_suspended(cast(Coroutine[Any, Any, Any], callback(message)))
                        if rest is not None:
                            await self.wait_first(rest, self.suspend_flow.wait())
                        if changelog and read_offsets[tp] == read:  # else a seek moved it meanwhile: keep that
                            read_offsets[tp] = offset
                    self.diag.unset_flag(CONSUMER_FETCHING)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                return
            raise
        except Exception as exc:  # as Faust: a crashed read loop crashes the app (the worker restarts it)
            self.log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            self.diag.unset_flag(CONSUMER_FETCHING)


def run_until_suspended(coro: Coroutine[Any, Any, Any]) -> Awaitable[Any] | None:
    """Run ``coro`` in the calling task until it first has to wait: None if it finished (its exception, if
    any, raised here), else an awaitable that drives the rest of it (in whichever task awaits that)."""
    try:
        waiting_on = coro.send(None)
    except StopIteration:
        return None
    return _Rest(coro, waiting_on)


class _Rest:
    """The rest of a coroutine that :func:`run_until_suspended` started: the future it waits on is passed up to
    the awaiting task (as ``await`` would have), then what the task sends or throws is passed down."""

    __slots__ = ("_coro", "_waiting_on")

    def __init__(self, coro: Coroutine[Any, Any, Any], waiting_on: Any) -> None:
        self._coro = coro
        self._waiting_on = waiting_on

    def __await__(self) -> Generator[Any, Any, Any]:
        waiting_on = self._waiting_on
        while True:
            try:
                sent = yield waiting_on
            except GeneratorExit:
                self._coro.close()
                raise
            except BaseException as exc:  # cancellation included: handed to the coroutine
                try:
                    waiting_on = self._coro.throw(exc)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    waiting_on = self._coro.send(sent)
                except StopIteration as stop:
                    return stop.value


class UnmonitoredApp(faust.App):
    """Faust's app without its ``Monitor`` sensor: the monitor records every message and stream event (timings,
    per-topic counts) for Faust's web view, which this app does not serve (``--without-web``), and its hooks were
    a twentieth of this process's CPU in the benchmark. ``app.monitor`` itself stays (Faust calls it directly for
    end offsets and commits); only the per-event hooks are gone. This app's figures are ``TallyStats``."""

    def on_init_dependencies(self) -> Iterable[Any]:
        dependencies = super().on_init_dependencies()
        self.sensors.remove(self.monitor)  # added by super(), at start
        return dependencies


class RawSchema(faust.Schema):
    """Key and value as the bytes on the wire, what ``key_serializer="raw"`` gives, without a pass through Faust's
    serializer registry per record (a tenth of this process's CPU in the benchmark). The agent decodes the value
    itself (``Counter.decode``: Avro, every failure counted and skipped)."""

    def loads_key(self, app: Any, message: Any, *, loads: Any = None, serializer: Any = None) -> Any:
        return message.key

    def loads_value(self, app: Any, message: Any, *, loads: Any = None, serializer: Any = None) -> Any:
        return message.value


class ChildWorker(faust.Worker):
    """Faust's worker without its terminal spinner. This app runs as a child of ``campaigns worker`` and shares its
    output; at log level ``warn`` Faust's spinner writes cursor escapes and backspaces to stdout even when that is a
    pipe (``make demo | tee``, CI logs)."""

    def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
        self.spinner = None
        super().on_setup_root_logger(logger, level)


class InOrder:
    """Every record of a source partition this worker owns reaches the agent's body once, in offset order, from
    the partition's committed offset (or its start), or not at all; a record that does not reach it is never
    acknowledged (:func:`withhold_ack`), so Faust commits only offsets whose records were counted. The body
    awaits :meth:`resolve`, then counts what :meth:`admit` passes, then awaits :meth:`rewind`.

    Why each rule (faust-streaming 0.15.3 with aiokafka, seen in the fault tests):

    * *A jump after a seek* (faust-streaming/faust#216, robinhood/faust#559): after a rebalance Faust seeks each
      partition back to its committed offset C; a record fetched before the seek (offset D > C) can still arrive,
      and Faust's read loop would drop the re-fetched C..D-1 as already read (and count them as acknowledged:
      :class:`GaplessConsumer` does neither). A record beyond the next expected offset is held, and the partition
      sought back.
    * *The start is the committed offset, asked of the broker* (:meth:`resolve`): Faust drops records it fetched
      around a rebalance (a stream skips events of an older generation or while flow control is suspended, flow
      control clears the queues) and relies on seeking every partition back to its committed offset; aiokafka's
      ``seek_to_committed`` does not move a partition that has none, so the first record seen is no start (seen:
      a new owner's first record at offset 549 of a partition nobody had committed; 327..548 never counted). The
      first record can also come before Faust's own seek has learnt the committed offset. So when the consumer
      does not know a partition's committed offset at its first record, the committed offsets are fetched
      (``Consumer.perform_seek``, what Faust does after a rebalance); a partition without one starts at its
      first offset.
    * *Revoked partitions*: a record of a partition no longer in the assignment (it waited in a buffer across the
      rebalance) is left to the new owner: a changelog write from here could land after the new owner recovered
      and be read back by a later recovery as the newest value (Faust does not fence a revoked owner). Its
      acknowledgement is withheld: once the partition comes back, a stale acknowledgement could otherwise join a
      run of offsets that Faust commits before the record is counted again.

    The topic must have contiguous offsets (not compacted, no transactions): ``delivery.outcomes`` and
    ``campaign.analytics_parts``. :meth:`admit` passes a partition's records up to the next expected offset
    (those below it are re-deliveries, which the tables absorb); a record beyond it is held back, and
    :meth:`rewind` seeks the partition back to the next expected offset (``Consumer.seek_wait``: in aiokafka's
    thread; ``Consumer.seek`` touches aiokafka from this one and raced its fetcher, a worker crashed with a
    ``KeyError`` in ``fetched_records``), so the held records are read again in order; records of the partition
    that come in order after a held one are still passed (holding them too made a partition seek back over and
    over while new records kept coming). (Faust's ``_unacked_messages``, ``_committed_offset`` and
    ``Message.acked`` are private: faust-streaming is pinned, and ``tests/unit/test_tally.py`` checks they are
    still there.) If the partition's records before the next expected offset no longer exist (deleted by
    retention), it resumes at the earliest there is, with an error logged: they were never counted."""

    def __init__(self, consumer: Callable[[], Any], stats: TallyStats,
                 assigned: Callable[[], Set[Any]] | None = None) -> None:
        self._consumer = consumer
        self._stats = stats
        self._assigned = assigned  # the consumer's current assignment (None: everything, for tests)
        self.expected: dict[Any, int] = {}  # TP -> the next offset to count
        self.rewinds: set[Any] = set()  # TPs with records held back: sought back to their next expected offset
        self._epoch = 0  # bumped by reset(): what an await outlived is not written back
        self._progress: dict[Any, tuple[int, float]] = {}  # TP -> (next expected offset, since when)

    def reset(self) -> None:
        """Partitions moved: the next expected offsets are the committed ones again."""
        self._epoch += 1
        self.expected.clear()
        self.rewinds.clear()
        self._progress.clear()

    async def unstick(self, now: float, stall_s: float) -> None:
        """Seek back every owned partition that has records past its next expected offset (the broker's high
        watermark says so) but has not moved for ``stall_s`` seconds: the records it still needs will not come by
        themselves. A net: Faust's read loop dropped a record below its read offset as already read, and a read
        offset set after a seek (a record fetched before the seek, handed over after it) made it skip the re-read
        records; a later record of the partition would show the gap (:meth:`admit`), but the last records of a
        partition have none after them (seen: a partition's last 62 outcomes never counted, its commit stuck at 738
        of 800). :class:`GaplessConsumer`'s loop no longer drops records of these topics; anything else that leaves
        a partition stalled is caught here. A seek that was not needed re-reads records the tables absorb."""
        consumer, owned = self._consumer(), self._owned()
        for tp, expected in list(self.expected.items()):
            if owned is not None and tp not in owned:
                continue
            seen = self._progress.get(tp)
            if seen is None or seen[0] != expected:
                self._progress[tp] = (expected, now)
                continue
            high = consumer.highwater(tp)
            if high is not None and high > expected and now - seen[1] >= stall_s:
                log.warning("analytics: %s[%d] has records from offset %d to %d but has not moved for %.0f s; "
                            "seeking back to %d", tp.topic, tp.partition, expected, high - 1, now - seen[1], expected)
                self._stats.unstuck += 1
                self._progress[tp] = (expected, now)
                self.rewinds.add(tp)
        await self.rewind()

    def _owned(self) -> Set[Any] | None:
        return self._assigned() if self._assigned is not None else None

    async def resolve(self, events: Sequence[EventT[Any]]) -> None:
        """The next expected offset of each owned partition the batch shows for the first time since the
        assignment: its committed offset, or its first offset if it has none. A partition left unresolved (a
        rebalance started meanwhile) has its records held by :meth:`admit`."""
        owned = self._owned()
        await self._resolve({tp for tp in (e.message.tp for e in events)
                             if tp not in self.expected and (owned is None or tp in owned)})

    async def _resolve(self, new: set[Any]) -> None:
        if not new:
            return
        consumer, epoch = self._consumer(), self._epoch
        try:
            if any(consumer._committed_offset.get(tp) is None for tp in new):
                await consumer.perform_seek()  # every assigned partition's committed offset, from the broker
            starts = {}
            for tp in new:
                start = consumer._committed_offset.get(tp)
                if start is None:  # nothing ever committed: the partition's first record is the start
                    start = (await consumer.earliest_offsets(tp)).get(tp) or 0
                    log.info("analytics: %s[%d] has no committed offset; starting at %d", tp.topic, tp.partition,
                             start)
                starts[tp] = start
        except (KafkaError, AssertionError) as exc:  # a rebalance started (aiokafka: partition not assigned)
            log.warning("analytics: the committed offsets of %s are unknown (%r); holding their records",
                        sorted(new), exc)
            return
        if epoch == self._epoch:
            for tp, start in starts.items():
                self.expected.setdefault(tp, start)

    def admit(self, events: Sequence[EventT[Any]]) -> list[EventT[Any]]:
        """The events to count; every other event's acknowledgement withheld. No await: the assignment cannot
        change between this and the counting that follows it in the same step."""
        consumer = self._consumer()
        owned = self._owned()
        admitted = []
        for event in events:
            message = event.message
            tp, offset = message.tp, message.offset
            if owned is not None and tp not in owned:
                self._stats.revoked += 1
                withhold_ack(consumer, message)
                continue
            expected = self.expected.get(tp)
            if expected is None or offset > expected:
                if expected is not None and tp not in self.rewinds:
                    self._stats.jumps += 1
                    log.warning("analytics: %s[%d] jumped from offset %d to %d (faust-streaming#216, or records "
                                "dropped before any commit); seeking back to %d", message.topic, message.partition,
                                expected, offset, expected)
                self.rewinds.add(tp)
                withhold_ack(consumer, message)
                continue
            admitted.append(event)  # the next record, or a re-delivery (also after a held one: it came in order)
            if offset == expected:
                self.expected[tp] = expected + 1
        return admitted

    async def rewind(self) -> None:
        """Seek the partitions with held records back to their next expected offset (resolved first if unknown)."""
        if not self.rewinds:
            return
        rewinds, self.rewinds = self.rewinds, set()
        consumer, epoch = self._consumer(), self._epoch
        try:
            await self._resolve({tp for tp in rewinds if tp not in self.expected})
            owned = self._owned()
            for tp in rewinds:
                offset = self.expected.get(tp)
                if (owned is not None and tp not in owned) or offset is None or epoch != self._epoch:
                    continue  # revoked (its new owner starts at its commit), or still unknown: its next records
                earliest = (await consumer.earliest_offsets(tp)).get(tp) or 0
                if epoch != self._epoch:
                    return
                if earliest > offset:
                    log.error("analytics: %s[%d] offsets %d..%d were deleted before they were counted (retention); "
                              "resuming at %d", tp.topic, tp.partition, offset, earliest - 1, earliest)
                    offset = self.expected[tp] = earliest
                await consumer.seek_wait({tp: offset})
        except (KafkaError, AssertionError) as exc:  # a rebalance started (aiokafka: partition not assigned)
            # Nothing lost: the held records were not acknowledged, and the next record of each partition is
            # beyond its next expected offset (or its first since the assignment): it triggers a rewind again.
            log.warning("analytics: seeking back %s failed (%r); retrying on their next records", sorted(rewinds), exc)


class Counter:
    """``count_outcomes``' body: dedup, fold into the partition-local parts, return the parts to send."""

    def __init__(self, counted: faust.Table[str, Any], parts: faust.Table[str, Any], window_s: int,
                 codec: Codec, stats: TallyStats, assigned: Callable[[], Set[Any]] | None = None,
                 source_topic: str = OUTCOMES, allowed_lateness_s: float = 3600.0,
                 committed: Callable[[int], int | None] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.assigned = assigned  # the consumer's current assignment (None: everything, for tests)
        self.source_topic = source_topic  # where the outcomes were read from, for logs (physical name)
        # "partition|first offset" -> the digests of the outcome ids that batch counted, their offsets and when the
        # latest occurred (streams.dedup.pack_batch; earlier versions wrote JSON, still read).
        self.counted = counted
        self.index = DedupIndex()  # outcome digest -> (partition, offset) that counted it: on disk
        self.allowed_lateness_ms = round(allowed_lateness_s * 1000)
        self.committed = committed  # partition -> the app's committed offset there (None: unknown; or no callback)
        self.clock = clock  # for dedup values without a time (written before allowed lateness)
        self.expiring: dict[int, list[tuple[int, str]]] = {}  # partition -> heap of (latest occurred_ms, dedup key)
        self.unsettled: dict[int, list[tuple[int, int]]] = {}  # partition -> (offset, latest record ts) not committed
        self.safe_ms: dict[int, int] = {}  # partition -> the latest record timestamp of its committed events
        self.generation = 0  # bumped on every partition assignment: the index is rebuilt before the next batch
        self.indexed = -1  # the generation the index was last rebuilt for
        self.announce = False  # log where the first batch after a rebuild starts
        self.parts = parts
        self.window_s = window_s
        self.codec = codec
        self._read = codec.projection("DeliveryOutcome", _OUTCOME_FIELDS)  # what decode keeps of an outcome
        self.stats = stats
        self._campaign_ids: dict[str, str] = {}  # as written -> canonical
        self._last_window: int | None = None  # the last window start checked to be representable

    def decode(self, value: bytes, topic: str, partition: int, offset: int, timestamp_ms: int = -1) -> Outcome | None:
        """One outcome, read at ``offset`` of ``topic[partition]`` (its source position) with its record's
        timestamp; None if undecodable or invalid (counted as skipped, with a warning)."""
        try:
            outcome_id, written_campaign_id, recipient_id, status, attempt, latency_ms, occurred_ms = (
                self._read(value))
            campaign_id = self._campaign_ids.get(written_campaign_id)
            if campaign_id is None:  # a few campaigns, many outcomes each: parse each id once
                if len(self._campaign_ids) >= 10_000:
                    self._campaign_ids.clear()
                campaign_id = self._campaign_ids[written_campaign_id] = str(uuid.UUID(written_campaign_id))
            start_ms = window_start_ms(occurred_ms, self.window_s)
            if start_ms != self._last_window:
                # Representable as a timestamptz window (not past year 9999).
                datetime.fromtimestamp((start_ms + self.window_s * 1000) / 1000, UTC)
                self._last_window = start_ms
            # A known status, a sane id and attempt.
            if status not in STATUS_TO_COUNTER or attempt < 0 or len(outcome_id) > OUTCOME_ID_MAX:
                raise ValueError("invalid status, attempt or outcome id")
        except (SchemaError, ValueError, OverflowError, OSError, TypeError, KeyError) as exc:
            self.stats.skipped += 1
            log.warning("analytics: skipping outcome at %s[%d]@%d: %s", topic, partition, offset, exc)
            return None
        return Outcome(outcome_id, campaign_id, status, attempt, latency_ms, start_ms, partition, offset, recipient_id,
                       occurred_ms, timestamp_ms)

    def decode_event(self, event: EventT[Any]) -> list[Outcome | None]:
        """The outcomes an OutcomeBatch event forwards, in source-offset order (None: skipped). Positions are the
        source's: (the event's partition, which is the source partition, and each record's source offset). A batch
        that is not a valid OutcomeBatch of its own partition is skipped whole (counted once, with a warning)."""
        message = event.message
        try:
            batch = self.codec.decode(event.value, "OutcomeBatch")
            offsets, values, timestamps = batch["offsets"], batch["values"], batch["timestamps"]
            if not timestamps:  # a forwarder older than the field: nothing is judged late
                timestamps = [-1] * len(offsets)
            if batch["source_partition"] != message.partition or not len(offsets) == len(values) == len(timestamps):
                raise ValueError(f"a batch of partition {batch['source_partition']} with {len(offsets)} offsets, "
                                 f"{len(values)} values and {len(timestamps)} timestamps")
            if any(b <= a for a, b in itertools.pairwise(offsets)):
                raise ValueError("offsets not ascending")
        except (SchemaError, ValueError, OverflowError, TypeError, KeyError) as exc:
            self.stats.skipped += 1
            log.warning("analytics: skipping outcome batch at %s[%d]@%d: %s", message.topic, message.partition,
                        message.offset, exc)
            return []
        source, partition = self.source_topic, message.partition
        return [self.decode(value, source, partition, offset, timestamp)
                for offset, value, timestamp in zip(offsets, values, timestamps, strict=True)]

    def decode_batch(self, events: Sequence[EventT[Any]]) -> dict[tuple[int, int], list[Outcome | None]]:
        """Each event's outcomes (:meth:`decode_event`), by the event's (partition, offset)."""
        return {(e.message.partition, e.message.offset): self.decode_event(e) for e in events}

    @staticmethod
    def log_keys(batches: Iterable[list[Outcome | None]]) -> set[LogKey]:
        """The recipient-log rows that must back those outcomes (:func:`campaigns.core.tally.backed`)."""
        return {key for outcomes in batches for o in outcomes if o is not None and (key := o.log_key()) is not None}

    def _reindex(self, owned: Set[Any] | None, topic: str) -> Iterator[None]:
        """The outcome-id index of the partitions this worker owns and their dedup keys in expiry order, from the
        dedup table (recovered from its changelog by now: Faust resumes the streams only after recovery). What
        it knew of the partitions' committed timestamps starts over (it only delays forgetting).

        A generator: it yields every ``REINDEX_STEP`` outcome ids, so that :meth:`reindex` can hand the event
        loop back in between, and marks the index current only if run to the end."""
        generation = self.generation
        partitions = None if owned is None else {tp.partition for tp in owned if tp.topic == topic}
        self.expiring, self.safe_ms, self.unsettled = {}, {}, {}
        self.index.clear()
        now_ms = round(self.clock() * 1000)
        since_yield = 0
        # The keys first, the values one by one: no iteration of the store stays open across a yield, while
        # Faust may apply standby partitions' changelogs to it.
        for key in list(self.counted.data.keys()):
            partition = int(str(key).split("|", 1)[0])
            value = self.counted.data.get(key) if partitions is None or partition in partitions else None
            if value is not None:
                occurred_ms, digests, offsets = unpack_batch(value, now_ms)
                self.index.add(zip(digests, itertools.repeat(partition), offsets))
                self.expiring.setdefault(partition, []).append((occurred_ms, str(key)))
                since_yield += len(digests)
            if since_yield >= REINDEX_STEP:
                since_yield = 0
                yield
        for heap in self.expiring.values():
            heapq.heapify(heap)
        self.indexed = generation
        self.announce = True

    async def reindex(self, topic: str) -> None:
        """Rebuild the index after an assignment (:meth:`_reindex`) without holding the event loop for long: an
        hour of outcomes is millions of ids, and the loop also runs the consumer's heartbeats. Started again from
        the top if the partitions are assigned again meanwhile. The agent awaits it last before :meth:`apply`."""
        while self.indexed != self.generation:
            generation = self.generation
            for _ in self._reindex(self.assigned() if self.assigned is not None else None, topic):
                await asyncio.sleep(0)
                if self.generation != generation:
                    break

    def apply(self, events: Sequence[EventT[Any]], outcomes: Mapping[tuple[int, int], list[Outcome | None]],
              log_rows: Mapping[LogKey, tuple[str, int]]) -> list[dict[str, Any]]:
        """Count the batch; the parts it touched (absolute, with ``src``) for ``campaign.analytics_parts``.

        ``outcomes`` is :meth:`decode_batch` of (at least) ``events``; ``log_rows`` the recipient-log rows
        ``(status, attempts)`` of their :meth:`log_keys` that exist: an outcome no row backs is skipped (forged,
        or of another cluster), before the dedup, so it cannot take the id of a real one. A late outcome
        (``campaigns.core.tally.late``) is skipped too. A duplicate counts nothing but moves its parts' ``src``.
        Then the dedup forgets the batches whose outcomes no copy still to come can count (:meth:`_forget`).

        Table writes: one per source partition for the outcome ids counted (``batch_to_counted``), one per
        touched part, one deletion per batch forgotten; never one per outcome."""
        by_key: dict[tuple[str, int, int], list[Outcome]] = {}
        new_ids: dict[int, tuple[list[bytes], list[int]]] = {}  # partition -> digests and offsets counted now
        latest: dict[int, int] = {}  # partition -> the latest occurred_at among the ids counted now
        duplicates: dict[int, set[int]] = {}  # partition -> offsets of this batch's duplicates
        # Only events of owned partitions come here (InOrder.admit, in the same step: no await in between).
        if events and self.indexed != self.generation:  # not rebuilt by reindex(): at once
            for _ in self._reindex(self.assigned() if self.assigned is not None else None, events[0].message.topic):
                pass
        if events and self.announce:
            self.announce = False
            firsts: dict[int, int] = {}
            for event in events:
                firsts.setdefault(event.message.partition, event.message.offset)
            srcs: dict[int, int] = {}
            for key, part in list(self.parts.data.items()):
                partition = int(str(key).rsplit("|", 1)[1])
                srcs[partition] = max(srcs.get(partition, -1), int(part["src"]))
            log.info("analytics: first batch after an assignment starts at %s; parts folded up to %s",
                     sorted(firsts.items()), sorted(srcs.items()))
        digests = {o.outcome_id: outcome_digest(o.outcome_id)
                   for event in events for o in outcomes[(event.message.partition, event.message.offset)]
                   if o is not None}
        counted_at = self.index.positions(digests.values())  # one query; this batch's own are added below
        for event in events:
            stamped = -1  # the latest record timestamp of the event
            for o in outcomes[(event.message.partition, event.message.offset)]:
                self.stats.records += 1
                if o is None:
                    continue
                stamped = max(stamped, o.timestamp_ms)
                key = o.log_key()
                if not backed(o.status, o.attempt, log_rows.get(key) if key is not None else None):
                    self.stats.unbacked += 1
                    if self.stats.unbacked % 1000 == 1:  # a forger may send many: warn now and then, count all
                        log.warning("analytics: skipping outcomes no recipient-log row backs (%d so far; this one "
                                    "at %s[%d]@%d)", self.stats.unbacked, self.source_topic, o.partition, o.offset)
                    continue
                if late(o, self.allowed_lateness_ms):
                    self.stats.late += 1
                    if self.stats.late % 1000 == 1:
                        log.warning("analytics: skipping outcomes that reached %s more than the allowed lateness "
                                    "(%d s) after they occurred (%d so far; this one at [%d]@%d, %d s late)",
                                    self.source_topic, self.allowed_lateness_ms // 1000, self.stats.late,
                                    o.partition, o.offset, (o.timestamp_ms - o.occurred_ms) // 1000)
                    continue
                digest = digests[o.outcome_id]
                position = counted_at.get(digest)
                if not classify(position, o):
                    self.stats.duplicates += 1
                    duplicates.setdefault(o.partition, set()).add(o.offset)
                elif position is None:
                    counted_at[digest] = (o.partition, o.offset)
                    batch_digests, offsets = new_ids.setdefault(o.partition, ([], []))
                    batch_digests.append(digest)
                    offsets.append(o.offset)
                    latest[o.partition] = max(latest.get(o.partition, o.occurred_ms), o.occurred_ms)
                    self.stats.counted += 1
                for window in (o.window_start_ms, TOTALS):
                    by_key.setdefault((o.campaign_id, window, o.partition), []).append(o)
            if self.committed is not None:
                self.unsettled.setdefault(event.message.partition, []).append((event.message.offset, stamped))
        for partition, (batch_digests, offsets) in new_ids.items():
            key = f"{partition}|{offsets[0]}"
            with _writing_to(partition):
                self.counted[key] = pack_batch(latest[partition], batch_digests, offsets)
            self.index.add(zip(batch_digests, itertools.repeat(partition), offsets))
            heapq.heappush(self.expiring.setdefault(partition, []), (latest[partition], key))
        out = []
        for (campaign_id, window, partition), outcomes_ in by_key.items():
            key = part_key(campaign_id, window, partition)
            dups = duplicates.get(partition, ())
            with _writing_to(partition):
                stored = self.parts.get(key)
                state = fold(stored, outcomes_, dups)
                if state is not None:
                    self.parts[key] = state
                else:
                    state = stored  # already counted: send it again (a crash may have lost the last send)
            # A part only duplicates touched counts what it counted: its new src stays in the table (all it is
            # for), and nothing goes downstream, as before duplicates moved it.
            if state is not None and not all(o.offset in dups for o in outcomes_):
                out.append({"campaign_id": campaign_id, "window_start_ms": window, "partition": partition, **state})
        for partition in {event.message.partition for event in events}:
            self._forget(partition)
        self.stats.batches += 1
        return out

    def _forget(self, partition: int) -> None:
        """Drop from the dedup the batches of ``partition`` whose outcome ids no copy still to come can count.

        "Still to come" is judged from the batches the app has *committed* (``committed``: the next offset to read,
        as Faust last committed it after flushing their table writes): every record read from now on, or read
        again after a crash, is one of theirs - whose effects are stored, a duplicate's included, so it changes
        nothing (``fold``) - or comes after them on the partition. So the latest timestamp among the committed
        batches' records bounds what can still be counted (``campaigns.core.tally.dedup_expired``)."""
        committed = self.committed(partition) if self.committed is not None else None
        unsettled = self.unsettled.get(partition)
        if committed is not None and unsettled:
            settled = 0
            for offset, stamped in unsettled:
                if offset >= committed:
                    break
                self.safe_ms[partition] = max(self.safe_ms.get(partition, -1), stamped)
                settled += 1
            del unsettled[:settled]
        safe_ms, heap = self.safe_ms.get(partition), self.expiring.get(partition)
        while heap and safe_ms is not None and dedup_expired(heap[0][0], safe_ms, self.allowed_lateness_ms):
            occurred_ms, key = heapq.heappop(heap)
            value = self.counted.get(key)
            if value is None:
                continue
            stored_ms, digests, offsets = unpack_batch(value, occurred_ms)
            if stored_ms > occurred_ms:  # written again since with later outcomes: not yet
                heapq.heappush(heap, (stored_ms, key))
                continue
            self.index.remove(zip(digests, itertools.repeat(partition), offsets))
            with _writing_to(partition):
                del self.counted[key]
            self.stats.forgotten += len(digests)


class Merger:
    """``merge_parts``' body and the flush: per-campaign tables of parts, written to PostgreSQL."""

    def __init__(self, windows: WindowWrapper, totals: faust.Table[str, Any], window_s: int, stats: TallyStats) -> None:
        self.windows = windows
        self.totals = totals
        self.window_s = window_s
        self.stats = stats
        self.dirty: dict[tuple[str, int, int], dict[str, Any]] = {}
        self.unknown: set[str] = set()  # campaign ids that are no campaign (warned once)

    def apply(self, events: Sequence[EventT[Any]]) -> None:
        for event in events:
            part = event.value
            campaign_id, window, partition = part["campaign_id"], int(part["window_start_ms"]), int(part["partition"])
            with _writing_to(event.message.partition):
                if window == TOTALS:
                    value = self.totals[campaign_id]
                    if newer(value.get(str(partition)), part):
                        self.totals[campaign_id] = {**value, str(partition): part}
                        self.dirty[(campaign_id, window, partition)] = part
                else:
                    windowed = self.windows.relative_to(window / 1000)
                    value = windowed[campaign_id].value()
                    if newer(value.get(str(partition)), part):
                        windowed[campaign_id] = {**value, str(partition): part}
                        self.dirty[(campaign_id, window, partition)] = part

    def all_parts(self) -> dict[tuple[str, int, int], dict[str, Any]]:
        """Every part this worker holds (its tables' data, standbys included: stale parts are ignored by the
        database's ``src_offset`` rule)."""
        out: dict[tuple[str, int, int], dict[str, Any]] = {}
        for campaign_id, value in list(self.totals.data.items()):
            for partition, part in value.items():
                out[(campaign_id, TOTALS, int(partition))] = part
        for (campaign_id, (start, _end)), value in list(self.windows.table.data.items()):
            for partition, part in value.items():
                out[(campaign_id, round(start * 1000), int(partition))] = part
        return out

    def rows(self, parts: dict[tuple[str, int, int], dict[str, Any]]) -> list[tuple[Any, ...]]:
        rows = []
        for (campaign_id, window, partition), part in parts.items():
            if window == TOTALS:
                start = end = None
            else:
                start = EPOCH + timedelta(milliseconds=window)
                end = start + timedelta(seconds=self.window_s)
            rows.append((campaign_id, start, end, partition, part))
        return rows

    def window_values(self, campaign_id: str, window: int) -> dict[str, Any]:
        """A window's (or the totals', ``TOTALS``) values as this worker's table holds them."""
        if window == TOTALS:
            return sum_parts(self.totals[campaign_id].values())
        return sum_parts(self.windows.relative_to(window / 1000)[campaign_id].value().values())


class LogReader:
    """The recipient-log rows that back a batch's outcomes, read in the default executor on one connection
    (opened on first use, reopened after a failure). PostgreSQL unreachable: retried with a backoff (0.5 s
    doubling to 5 s) while the batch waits unacknowledged - nothing is counted without its check."""

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._store: PostgresAnalyticsStore | None = None

    def _read(self, keys: list[LogKey]) -> dict[LogKey, tuple[str, int]]:
        if self._store is None:
            self._store = PostgresAnalyticsStore(self._dsn)
        try:
            return self._store.log_rows(keys)
        except psycopg2.Error:
            self._store.close()
            self._store = None
            raise

    async def rows_of(self, keys: Set[LogKey]) -> dict[LogKey, tuple[str, int]]:
        if not keys:
            return {}
        backoff = 0.5
        while True:
            try:
                return await asyncio.get_running_loop().run_in_executor(None, self._read, sorted(keys))
            except psycopg2.Error as exc:
                log.warning("analytics: cannot read the recipient log (%s); retrying in %.1f s", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)


class PartsWriter:
    """Writes the flushed parts in the default executor on one connection, opened on first use and reopened after a
    failure (a connection per flush cost PostgreSQL a backend start twice a second). Flushes never overlap: the
    flush timer awaits each one."""

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._conn: StoreConnection | None = None

    def write(self, rows: list[tuple[Any, ...]], unknown: set[str]) -> list[dict[str, Any]]:
        """One transaction: drop parts of campaigns that do not exist (logged once each), write the rest."""
        if self._conn is None:
            self._conn = StoreConnection(self._dsn)
        try:
            with self._conn.transaction() as cur:
                known = sink.known_campaigns(cur, {r[0] for r in rows})
                missing = {r[0] for r in rows} - known - unknown
                if missing:
                    unknown.update(missing)
                    log.warning("analytics: skipping outcomes of %d unknown campaigns: %s", len(missing),
                                sorted(missing))
                return sink.write_parts(cur, [r for r in rows if r[0] in known], datetime.now(UTC))
        except psycopg2.Error:
            self.close()
            raise

    def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            with contextlib.suppress(psycopg2.Error):
                conn.close()


@dataclass
class TallyApp:
    app: faust.App
    settings: Settings
    counter: Counter
    merger: Merger
    stats: TallyStats


def data_dir(settings: Settings) -> Path:
    app_id = settings.kafka.topic(APP_NAME)
    path = Path(tempfile.gettempdir()) / APP_NAME / app_id
    path.mkdir(parents=True, exist_ok=True)
    return path


def build_app(settings: Settings, *, full_flush_every: int = 10) -> TallyApp:
    kafka, analytics, live = settings.kafka, settings.analytics, settings.live
    window_s = analytics.window_s
    app = UnmonitoredApp(
        kafka.topic(APP_NAME),
        broker=kafka.faust_broker,
        broker_credentials=kafka.faust_credentials(),  # the same SASL/TLS as the other clients, or None
        store="memory://",  # tables rebuilt from their changelogs at start
        datadir=data_dir(settings),
        autodiscover=False,
        topic_partitions=kafka.partitions,
        topic_replication_factor=kafka.replication_factor,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=live.session_timeout_s,
        topic_disable_leader=True,
        web_enabled=False,
        Table=SourcePartitionedTable,
        Worker=ChildWorker,
    )
    cast(Any, app.transport).Consumer = GaplessConsumer  # before the app creates its consumer (at start)
    source = app.topic(kafka.topic(OUTCOME_BATCHES), schema=RawSchema(key_serializer="raw", value_serializer="raw"))
    parts_topic = app.topic(kafka.topic(ANALYTICS_PARTS), key_serializer="raw", value_serializer="json",
                            partitions=kafka.partitions)
    results = app.topic(kafka.topic(ANALYTICS), key_serializer="raw", value_serializer="raw")
    counted = app.Table(DEDUP_TABLE, default=None, partitions=kafka.partitions, value_type=bytes,
                        # A host, not just a scheme: Faust ignores a table's store URL that is falsy (yarl's
                        # URL("sqlite://") is) and falls back to the app's.
                        store="sqlite://temporary",
                        help="partition|first offset -> the digests of the outcome ids first counted in that batch, "
                             "their offsets and when the latest occurred, packed (streams.dedup; deleted once no "
                             "copy of them can count)")
    parts = app.Table(PARTS_TABLE, default=None, partitions=kafka.partitions,
                      help="campaign|window|partition -> that source partition's absolute counts")
    windows = app.Table(WINDOWS_TABLE, default=dict, partitions=kafka.partitions,
                        help="campaign -> {source partition: part} per tumbling window").tumbling(
        timedelta(seconds=window_s), expires=timedelta(seconds=window_s * analytics.windows_kept))
    totals = app.Table(TOTALS_TABLE, default=dict, partitions=kafka.partitions,
                       help="campaign -> {source partition: totals part}")
    assert isinstance(windows, WindowWrapper)
    stats = TallyStats()
    batched = kafka.topic(OUTCOME_BATCHES)
    counter = Counter(cast(Any, counted), cast(Any, parts), window_s, get_codec(), stats,
                      assigned=lambda: app.consumer.assignment(), source_topic=kafka.topic(OUTCOMES),
                      allowed_lateness_s=analytics.allowed_lateness_s,
                      # Faust's record of what it committed (after flushing the producer): InOrder reads it too.
                      committed=lambda partition: app.consumer._committed_offset.get(TP(batched, partition)))
    merger = Merger(windows, cast(Any, totals), window_s, stats)

    in_order = InOrder(lambda: app.consumer, stats, assigned=lambda: app.consumer.assignment())
    parts_in_order = InOrder(lambda: app.consumer, stats, assigned=lambda: app.consumer.assignment())

    async def reindex_after_assignment(sender: Any, *args: Any, **kwargs: Any) -> None:
        counter.generation += 1  # partitions moved: their dedup entries may have changed (another owner wrote)
        in_order.reset()
        parts_in_order.reset()

    app.on_partitions_assigned.connect(reindex_after_assignment)
    codec = get_codec()
    dsn = settings.database.dsn()
    recipient_log = LogReader(dsn)
    parts_writer = PartsWriter(dsn)

    @app.agent(source, name="count_outcomes")
    async def count_outcomes(stream: faust.StreamT[Any]) -> None:
        async for events in cast(faust.Stream[Any], stream).take_events(
                BATCHES_PER_STEP, within=analytics.faust_batch_within_s):
            await in_order.resolve(events)
            outcomes = counter.decode_batch(events)
            rows = await recipient_log.rows_of(counter.log_keys(outcomes.values()))
            if events:
                await counter.reindex(events[0].message.topic)  # after an assignment; the last await before apply
            # No await between admit and apply: the assignment cannot change in between (InOrder.admit).
            for part in counter.apply(in_order.admit(events), outcomes, rows):
                await parts_topic.send(key=part["campaign_id"].encode(), value=part)
                stats.parts_sent += 1
            await in_order.rewind()  # before take_events acknowledges the batch

    @app.agent(parts_topic, name="merge_parts")
    async def merge_parts(stream: faust.StreamT[Any]) -> None:
        async for events in cast(faust.Stream[Any], stream).take_events(
                analytics.faust_batch_size, within=analytics.faust_batch_within_s):
            await parts_in_order.resolve(events)  # the same rules for the parts topic's records
            merger.apply(parts_in_order.admit(events))
            await parts_in_order.rewind()

    @app.timer(max(1.0, analytics.faust_stall_s / 4))
    async def unstick_partitions() -> None:
        if app.rebalancing or not app.tables.recovery.completed.is_set():  # type: ignore[attr-defined]
            return
        now = time.monotonic()
        for guard in (in_order, parts_in_order):
            await guard.unstick(now, analytics.faust_stall_s)

    ticks = 0

    @app.timer(analytics.flush_interval_s)
    async def flush_analytics() -> None:
        nonlocal ticks
        if app.rebalancing or not app.tables.recovery.completed.is_set():  # type: ignore[attr-defined]
            return
        full = ticks % full_flush_every == 0
        if full:
            log.info("analytics: %s", stats)
        ticks += 1
        pending, merger.dirty = merger.dirty, {}
        batch = {**merger.all_parts(), **pending} if full else pending
        if not batch:
            return
        try:
            updated = await asyncio.get_running_loop().run_in_executor(
                None, parts_writer.write, merger.rows(batch), merger.unknown)
        except psycopg2.Error as exc:
            stats.flush_errors += 1
            log.warning("analytics: flush failed (%s); retrying on the next tick", exc)
            merger.dirty = {**pending, **merger.dirty}
            return
        stats.flushes += 1
        stats.rows_written += len(updated)
        for row in updated:
            await results.send(key=row["campaign_id"].encode(), value=codec.encode("CampaignAnalytics", row))

    return TallyApp(app=app, settings=settings, counter=counter, merger=merger, stats=stats)


def tally_topic_specs(tally: TallyApp) -> list[TopicSpec]:
    """The parts topic and the changelogs (logical names), with the configs Faust would give them."""
    kafka = tally.settings.kafka
    deleted = {"cleanup.policy": "delete", "retention.ms": str(kafka.retention_ms)}
    specs = [TopicSpec(OUTCOME_BATCHES, kafka.partitions, deleted),
             TopicSpec(ANALYTICS_PARTS, kafka.partitions, deleted)]
    for table in tally.app.tables.values():
        topic = table.changelog_topic
        name = topic.get_topic_name()
        flags = sorted(flag for flag, on in (("compact", topic.compacting), ("delete", topic.deleting)) if on)
        config = {"cleanup.policy": ",".join(flags)} if flags else {}
        if topic.retention:
            config["retention.ms"] = str(int(want_seconds(topic.retention) * 1000))
        specs.append(TopicSpec(name[len(kafka.topic_prefix):], topic.partitions or kafka.partitions, config))
    return specs


def settings_env(settings: Settings, prefix: str = "CAMPAIGNS_") -> dict[str, str]:
    """``settings`` as the environment that :func:`campaigns.settings.load_settings` reads back (secrets
    revealed: the child process needs them; the environment of a process is readable only by its user)."""
    env: dict[str, str] = {}

    def walk(model: BaseModel, name: str) -> None:
        for field_name in type(model).model_fields:
            value = getattr(model, field_name)
            key = f"{name}{field_name.upper()}"
            if isinstance(value, BaseModel):
                walk(value, f"{key}__")
            elif isinstance(value, SecretStr):
                env[key] = value.get_secret_value()
            elif value is None:
                continue
            elif isinstance(value, bool):
                env[key] = "true" if value else "false"
            elif isinstance(value, list | tuple | dict):
                env[key] = json.dumps(value)
            else:
                env[key] = str(value)

    walk(settings, prefix)
    return env


DIE_WITH_PARENT = "--die-with-parent"


def _die_with_parent(parent: int) -> None:
    """This process gets SIGTERM when the thread that started it ends (Linux ``PR_SET_PDEATHSIG``), so a worker
    killed by SIGKILL leaves no Faust process behind. Set in the child itself, not in a ``preexec_fn`` (unsafe
    in a process with threads, as the worker is)."""
    try:
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the worker's stop still ends the child
        return
    if os.getppid() != parent:  # the parent died before the call
        os.kill(os.getpid(), signal.SIGTERM)


class TallyProcess:
    """The Faust analytics as a child of ``campaigns worker`` (its ``tally`` stage).

    A child process, not a thread: a Faust worker owns its process (its own asyncio loop in the main thread,
    signal handlers, logging set-up), and the worker's stages are threads. :meth:`run_forever` starts
    ``python -m streams.tally worker`` with the worker's settings, raises if it exits (the worker restarts the
    stage, at most ``MAX_RESTARTS_PER_MINUTE`` times a minute), and stops it (SIGTERM, then SIGKILL after
    ``stop_timeout_s``) when the worker stops.
    """

    def __init__(self, settings: Settings, *, log_level: str = "warn", stop_timeout_s: float = 30.0) -> None:
        self.settings = settings
        self.log_level = log_level
        self.stop_timeout_s = stop_timeout_s
        self.proc: subprocess.Popen[bytes] | None = None

    def run_forever(self, stop: threading.Event) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CAMPAIGNS_")}
        env.update(settings_env(self.settings))
        self.proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-m", "streams.tally", DIE_WITH_PARENT, str(os.getpid()), "--quiet", "worker", "-l",
             self.log_level],
            env=env, stdin=subprocess.DEVNULL,
        )
        try:
            while not stop.wait(0.5):
                rc = self.proc.poll()
                if rc is not None:
                    raise RuntimeError(f"the Faust analytics (python -m streams.tally) exited with {rc}")
        finally:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(self.stop_timeout_s)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m streams.tally worker -l info``: the topics are created first (Faust would join its group
    before a KRaft broker lists the changelogs it creates, leaving their partitions unassigned)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == [DIE_WITH_PARENT]:
        _die_with_parent(int(args[1]))
        args = args[2:]
    tally = build_app(load_settings())
    command = next((a for a in args if not a.startswith("-")), None)  # after Faust's own flags (--quiet)
    if command == "worker":
        if not any(a.startswith(("--with-web", "--without-web")) for a in args):
            args.append("--without-web")  # no view here; Faust's command line would start one on port 6066
        ensure_topics(tally.settings.kafka, [*pipeline_topic_specs(tally.settings), *tally_topic_specs(tally)])
        atexit.register(start_forwarder(tally.settings))  # delivery.outcomes -> the batches count_outcomes reads
        tune_collector(tally.settings.gc_young_threshold)
    sys.argv = [sys.argv[0], *args]
    tally.app.main()


if __name__ == "__main__":
    main()
