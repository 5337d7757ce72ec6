"""The Jepsen-style checker: after a fault scenario, compare three independent histories of one campaign.

1. What the provider received: the simulator's log of accepted messages (message id -> times accepted).
2. What the pipeline says happened: ``campaign_recipient_log`` (one row per recipient).
3. What analytics counted: the running-total row of ``campaign_analytics``.

and the campaign's expected audience, computed from the seeded segment tables (not by the pipeline's own
audience code). :func:`check` asserts the guarantees of docs/architecture.md and returns the figures for the report:

* every recipient of the audience has exactly one row, and it is terminal (sent/failed/skipped/cancelled);
  no row for anyone outside the audience (unless the scenario forged it on purpose);
* a ``sent`` row has provider evidence (its message id was accepted), nothing the provider accepted is
  unknown to the log, and a message accepted by the provider but not logged ``sent`` is a "phantom";
* duplicates at the provider (a message id accepted 2+ times) and phantoms happen only for messages whose
  claim was in flight at a crash (the documented window); they are counted and reported either way;
* analytics totals equal the log counts (waiting, bounded, for analytics to catch up: see :func:`settle`);
  the campaign reached the expected terminal state.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg2
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from campaigns.codec import get_codec
from campaigns.settings import Settings
from campaigns.topics import ANALYTICS_PARTS, OUTCOME_BATCHES, OUTCOMES, TALLY_FORWARDER_GROUP, TALLY_GROUP

TERMINAL = ("sent", "failed", "skipped", "cancelled")
COUNTED = ("sent", "failed", "skipped", "cancelled", "retried")


@dataclass(frozen=True)
class LogRow:
    recipient_id: int
    message_id: str
    status: str
    attempts: int
    failure_reason: str | None


@dataclass
class History:
    campaign_id: str
    channel: str
    campaign_status: str
    total_recipients: int | None
    audience: set[int]
    log: dict[int, LogRow]
    provider: Counter[str]  # message id -> times accepted by the provider
    analytics: dict[str, int]
    provider_stats: dict[str, int] = field(default_factory=dict)
    analytics_lag_s: float = 0.0  # how long after the campaign ended analytics still differed from the log

    def log_counts(self) -> dict[str, int]:
        return dict(Counter(row.status for row in self.log.values()))

    def analytics_match(self) -> bool:
        counts = self.log_counts()
        return all(self.analytics.get(s, 0) == counts.get(s, 0) for s in TERMINAL)


@dataclass
class Report:
    """What the checker saw; ``str()`` is one line for the test output and docs/reliability.md."""

    recipients: int
    log_counts: dict[str, int]
    analytics: dict[str, int]
    provider_accepted: int
    duplicates: dict[str, int]  # message id -> times accepted (only ids accepted 2+ times)
    phantoms: list[str]  # accepted by the provider but not logged as sent
    in_flight: int  # claims in flight at the fault(s)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def duplicate_sends(self) -> int:
        """Extra deliveries: sum of (times accepted - 1) over duplicated ids."""
        return sum(n - 1 for n in self.duplicates.values())

    def __str__(self) -> str:
        extra = " ".join(f"{k}={v}" for k, v in self.extra.items())
        return (f"recipients={self.recipients} log={self.log_counts} analytics={self.analytics} "
                f"provider_accepted={self.provider_accepted} duplicates={len(self.duplicates)} "
                f"(extra sends {self.duplicate_sends}) phantoms={len(self.phantoms)} in_flight={self.in_flight} "
                f"{extra}").strip()


# --- collecting ----------------------------------------------------------------------------------------


def expected_audience(dsn: str, campaign_id: str) -> set[int]:
    """Customers in the campaign's segments or manual list, from the seeded tables (de-duplicated)."""
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT m.customer_id FROM segment_members AS m JOIN campaign_segments AS s "
            "ON s.segment_id = m.segment_id WHERE s.campaign_id = %s "
            "UNION SELECT customer_id FROM campaign_manual_recipients WHERE campaign_id = %s",
            (campaign_id, campaign_id),
        )
        rows = {int(r[0]) for r in cur.fetchall()}
    conn.close()
    return rows


def in_flight_claims(dsn: str, campaign_id: str, claimed_before: datetime | None = None) -> dict[int, str]:
    """Recipient -> message id of every row still ``claimed`` (taken before a provider call, unrecorded),
    optionally only those claimed before a moment."""
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT recipient_id, message_id::text FROM campaign_recipient_log "
                    "WHERE campaign_id = %s AND status = 'claimed' AND claimed_at <= %s",
                    (campaign_id, claimed_before or datetime(9999, 1, 1, tzinfo=UTC)))
        rows = {int(r): m for r, m in cur.fetchall()}
    conn.close()
    return rows


def log_status_counts(dsn: str, campaign_id: str) -> dict[str, int]:
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT status, count(*) FROM campaign_recipient_log WHERE campaign_id = %s GROUP BY status",
                    (campaign_id,))
        rows = {s: int(n) for s, n in cur.fetchall()}
    conn.close()
    return rows


def campaign_status(dsn: str, campaign_id: str) -> str:
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT status FROM campaigns WHERE id = %s", (campaign_id,))
        row = cur.fetchone()
    conn.close()
    return str(row[0]) if row else "missing"


def analytics_sent(dsn: str, campaign_id: str) -> int:
    """The campaign's ``sent`` in ``campaign_analytics`` (its totals row): what the Faust analytics counted so far."""
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT sent FROM campaign_analytics WHERE campaign_id = %s AND window_start IS NULL",
                    (campaign_id,))
        row = cur.fetchone()
    conn.close()
    return int(row[0]) if row else 0


def collect(settings: Settings, campaign_id: str, channel: str, provider: Counter[str],
            provider_stats: dict[str, int] | None = None) -> History:
    dsn = settings.database.dsn()
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT status, total_recipients FROM campaigns WHERE id = %s", (campaign_id,))
        status, total = cur.fetchone()
        cur.execute("SELECT recipient_id, message_id::text, status, attempts, failure_reason "
                    "FROM campaign_recipient_log WHERE campaign_id = %s", (campaign_id,))
        rows = cur.fetchall()
        cur.execute("SELECT sent, failed, skipped, cancelled, retried FROM campaign_analytics "
                    "WHERE campaign_id = %s AND window_start IS NULL", (campaign_id,))
        totals = cur.fetchone() or (0, 0, 0, 0, 0)
    conn.close()
    log: dict[int, LogRow] = {}
    for r, m, s, a, f in rows:
        assert int(r) not in log, f"two log rows for recipient {r}: the UNIQUE constraint is gone"
        log[int(r)] = LogRow(int(r), m, s, int(a), f)
    return History(
        campaign_id=campaign_id, channel=channel, campaign_status=status, total_recipients=total,
        audience=expected_audience(dsn, campaign_id), log=log, provider=provider,
        analytics=dict(zip(COUNTED, (int(v) for v in totals), strict=True)), provider_stats=provider_stats or {},
    )


def settle(settings: Settings, campaign_id: str, channel: str, simulator: Any, *, timeout: float = 20.0) -> History:
    """:func:`collect` once analytics have caught up with the recipient log (bounded by ``timeout``).

    A campaign is completed when its recipient log is complete; the analytics stage may still be counting
    the last outcomes then (its sweep completes campaigns from the log), so the comparison waits for it
    and records the lag in ``History.analytics_lag_s``; :func:`check` fails if they never converge."""
    started = time.monotonic()
    while True:
        history = collect(settings, campaign_id, channel, simulator.accepted_ids(channel), simulator.stats(channel))
        history.analytics_lag_s = round(time.monotonic() - started, 1)
        if history.analytics_match() or time.monotonic() - started > timeout:
            return history
        time.sleep(0.25)


# --- checking ------------------------------------------------------------------------------------------


def check(
    history: History,
    *,
    allowed_duplicates: Iterable[str] = (),
    forged_recipients: Iterable[int] = (),
    expect_status: str = "completed",
    in_flight: int = 0,
    other_campaign_ids: Iterable[str] = (),
) -> Report:
    """Assert the guarantees (see the module docstring); returns the figures.

    ``allowed_duplicates`` are message ids whose claims were in flight at a crash: only they may be
    accepted twice or be phantoms. ``forged_recipients`` are recipients a scenario injected on purpose
    (poison records), allowed to have a row though they are not in the audience. ``other_campaign_ids``
    lists message ids the provider may have accepted for other campaigns sharing the simulator.
    """
    allowed = set(allowed_duplicates)
    problems: list[str] = []
    log = history.log
    counts = history.log_counts()

    if history.campaign_status != expect_status:
        problems.append(f"campaign is {history.campaign_status!r}, expected {expect_status!r}")

    missing = history.audience - set(log)
    stray = set(log) - history.audience - set(forged_recipients)
    if missing:
        problems.append(f"{len(missing)} recipients have no log row (lost), e.g. {sorted(missing)[:5]}")
    if stray:
        problems.append(f"{len(stray)} log rows for recipients outside the audience, e.g. {sorted(stray)[:5]}")
    not_terminal = {r: row.status for r, row in log.items() if row.status not in TERMINAL}
    if not_terminal:
        problems.append(f"{len(not_terminal)} rows not terminal: {Counter(not_terminal.values())}, "
                        f"e.g. {sorted(not_terminal)[:5]}")
    if history.total_recipients is not None and history.total_recipients != len(history.audience):
        problems.append(f"campaign.total_recipients={history.total_recipients} but the audience has "
                        f"{len(history.audience)}")
    failed_without_reason = [r for r, row in log.items()
                             if row.status in ("failed", "skipped") and not row.failure_reason]
    if failed_without_reason:
        problems.append(f"{len(failed_without_reason)} failed/skipped rows without a reason")

    # Provider vs log.
    by_message = {row.message_id: row for row in log.values()}
    sent_ids = {row.message_id for row in log.values() if row.status == "sent"}
    unproven = sorted(sent_ids - set(history.provider))
    if unproven:
        problems.append(f"{len(unproven)} rows logged sent but never accepted by the provider, e.g. {unproven[:3]}")
    unknown = sorted(set(history.provider) - set(by_message) - set(other_campaign_ids))
    if unknown:
        problems.append(f"{len(unknown)} message ids accepted by the provider but unknown to the log, "
                        f"e.g. {unknown[:3]}")
    phantoms = sorted(m for m in history.provider if m in by_message and by_message[m].status != "sent")
    duplicates = {m: n for m, n in history.provider.items() if n > 1}
    bad_dups = sorted(set(duplicates) - allowed)
    if bad_dups:
        problems.append(f"{len(bad_dups)} messages delivered twice outside the crash window, e.g. "
                        f"{[(m, duplicates[m]) for m in bad_dups[:5]]}")
    bad_phantoms = sorted(set(phantoms) - allowed)
    if bad_phantoms:
        problems.append(f"{len(bad_phantoms)} messages accepted by the provider but logged "
                        f"{Counter(by_message[m].status for m in bad_phantoms)}, e.g. {bad_phantoms[:3]}")

    # Analytics vs log.
    for status in TERMINAL:
        if history.analytics.get(status, 0) != counts.get(status, 0):
            problems.append(f"analytics {status}={history.analytics.get(status, 0)} but the log has "
                            f"{counts.get(status, 0)}")

    report = Report(
        recipients=len(history.audience), log_counts=counts, analytics=history.analytics,
        provider_accepted=sum(history.provider.values()), duplicates=duplicates, phantoms=phantoms,
        in_flight=in_flight,
    )
    if history.analytics_lag_s >= 1.0:
        report.extra["analytics_lag_s"] = history.analytics_lag_s
    if problems:
        raise AssertionError("history check failed:\n  " + "\n  ".join(problems) + f"\nfigures: {report}")
    return report


def analytics_consumed(settings: Settings) -> bool:
    """Whether the Faust analytics counted every record of ``delivery.outcomes`` there is: its forwarder committed
    that topic to its end, and then (asked in this order) the analytics the batches it forwarded and the parts
    those made."""
    kafka = settings.kafka
    return (committed_to_end(settings, kafka.topic(TALLY_FORWARDER_GROUP), kafka.topic(OUTCOMES))
            and committed_to_end(settings, kafka.topic(TALLY_GROUP), kafka.topic(OUTCOME_BATCHES))
            and committed_to_end(settings, kafka.topic(TALLY_GROUP), kafka.topic(ANALYTICS_PARTS)))


def committed_to_end(settings: Settings, group: str, topic: str) -> bool:
    """Whether consumer group ``group`` has committed every partition of ``topic`` up to its end."""
    consumer = Consumer(settings.kafka.as_librdkafka(**{"group.id": group, "enable.auto.commit": False}))
    try:
        partitions = [TopicPartition(topic, p) for p in range(settings.kafka.partitions)]
        committed = {tp.partition: tp.offset for tp in consumer.committed(partitions, timeout=10)}
        for tp in partitions:
            low, high = consumer.get_watermark_offsets(tp, timeout=10)
            if high > low and committed.get(tp.partition, -1) < high:
                return False
        return True
    except KafkaException:  # e.g. a leader not elected yet for a new topic: ask again
        return False
    finally:
        consumer.close()


# --- dead letters --------------------------------------------------------------------------------------


def read_topic(settings: Settings, logical: str, record: str | None, *, timeout: float = 30.0) -> list[dict[str, Any]]:
    """Every record of a topic from the beginning to its end offsets now (decoded when ``record`` is
    given, else raw ``{"key", "value"}``), each with ``_partition`` and ``_offset``."""
    topic = settings.kafka.topic(logical)
    consumer = Consumer(settings.kafka.as_librdkafka(**{
        "group.id": f"history-{time.monotonic_ns()}", "enable.auto.commit": False,
        "auto.offset.reset": "earliest", "enable.partition.eof": True,
    }))
    try:
        metadata = consumer.list_topics(topic, timeout=10)
        partitions = list(metadata.topics[topic].partitions)
        ends = {}
        for p in partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            if high > low:
                ends[p] = high
        if not ends:
            return []
        consumer.assign([TopicPartition(topic, p, 0) for p in ends])
        out: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        done: set[int] = set()
        codec = get_codec()
        while len(done) < len(ends):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out reading {topic}: {len(out)} records, partitions done {done}")
            for msg in consumer.consume(1000, timeout=0.5):
                if msg.error():
                    if msg.error().code() == KafkaError._PARTITION_EOF:
                        if msg.offset() >= ends.get(msg.partition(), 0):
                            done.add(msg.partition())
                        continue
                    raise AssertionError(f"consume error on {topic}: {msg.error()}")
                if msg.offset() >= ends[msg.partition()]:
                    done.add(msg.partition())
                    continue
                value: dict[str, Any] = (codec.decode(msg.value(), record) if record
                                         else {"key": msg.key(), "value": msg.value()})
                value["_partition"], value["_offset"] = msg.partition(), msg.offset()
                out.append(value)
                if msg.offset() + 1 >= ends[msg.partition()]:
                    done.add(msg.partition())
        return out
    finally:
        consumer.close()


def dead_letters(settings: Settings) -> list[dict[str, Any]]:
    return read_topic(settings, "campaign.messages.dlq", "DeadLetter")
