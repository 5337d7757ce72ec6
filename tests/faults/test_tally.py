"""The Faust analytics (``streams/tally.py``) under SIGKILL and a full replay of ``delivery.outcomes``.

A campaign is sent by real worker subprocesses (scheduler, expander, senders; not the batch analytics stage)
while ``python -m streams.tally worker`` counts its outcomes. The Faust worker is SIGKILLed three times
mid-campaign (at growing counts) and restarted each time; it recovers its tables from their changelogs. Once the
recipient log is complete, ``campaign_analytics`` must equal it and every window must sum to the totals. Then
every record of ``delivery.outcomes`` is produced again, and once the Faust worker consumed it all nothing in
``campaign_analytics`` may have moved (not even ``updated_at``).
"""

from __future__ import annotations

import signal
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta

import psycopg2
from confluent_kafka import Producer

from campaigns.codec import get_codec
from campaigns.topics import OUTCOMES
from tests.faults.conftest import create_campaign, set_channel
from tests.faults.history import TERMINAL, analytics_consumed, expected_audience, log_status_counts, read_topic
from tests.faults.procs import Cluster, Proc
from tests.helpers import wait_for

COLUMNS = ("sent", "failed", "skipped", "cancelled", "retried")
TALLY_ENV = {"CAMPAIGNS_ANALYTICS__WINDOW_S": "2", "CAMPAIGNS_ANALYTICS__WINDOWS_KEPT": "5",
             "CAMPAIGNS_LIVE__SESSION_TIMEOUT_S": "6"}


def _start_tally(cluster: Cluster, n: int) -> Proc:
    name = f"tally-{n}"
    proc = Proc(name, [sys.executable, "-m", "streams.tally", "worker", "-l", "info"], cluster.env(**TALLY_ENV),
                cluster.log_dir / f"{name}.log")
    cluster.procs.append(proc)
    return proc


def _analytics(dsn: str, campaign_id: str) -> list[tuple[object, ...]]:
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(f"SELECT window_start, {', '.join(COLUMNS)}, latency_count, updated_at FROM campaign_analytics "
                    "WHERE campaign_id = %s ORDER BY window_start NULLS FIRST", (campaign_id,))
        rows = cur.fetchall()
    conn.close()
    return rows


def _totals_and_window_sums(rows: list[tuple[object, ...]]) -> tuple[dict[str, int], dict[str, int]]:
    names = (*COLUMNS, "latency_count")
    totals = dict.fromkeys(names, 0)
    sums = dict.fromkeys(names, 0)
    for row in rows:
        target = totals if row[0] is None else sums
        for i, name in enumerate(names, start=1):
            target[name] += int(row[i])  # type: ignore[call-overload]
    return totals, sums


def _diagnose(settings: object, dsn: str, campaign_id: str) -> str:
    """On a failure: what each source partition holds (distinct outcome ids by status) against the stored parts."""
    expected: dict[int, dict[str, set[str]]] = {}
    for r in read_topic(settings, OUTCOMES, "DeliveryOutcome"):  # type: ignore[arg-type]
        if r["campaign_id"] == campaign_id:
            expected.setdefault(r["_partition"], {}).setdefault(r["status"], set()).add(r["outcome_id"])
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT source_partition, sent, skipped, failed, retried, src_offset FROM campaign_analytics_parts "
                    "WHERE campaign_id = %s AND window_start IS NULL ORDER BY 1", (campaign_id,))
        parts = cur.fetchall()
    conn.close()
    return (f"topic: { {p: {s: len(ids) for s, ids in v.items()} for p, v in sorted(expected.items())} }; "
            f"parts (partition, sent, skipped, failed, retried, src): {parts}")


def _counted(dsn: str, campaign_id: str) -> int:
    totals, _ = _totals_and_window_sums(_analytics(dsn, campaign_id))
    return sum(totals[c] for c in TERMINAL)


def test_faust_analytics_survive_three_sigkills_and_a_full_replay(settings, service, sessions, audience, cluster):
    channel = "whatsapp"
    set_channel(sessions, channel, 150, 30)
    _plan, segments = audience(3000)
    cluster.start_simulator("--seed", "18")
    cluster.start_worker("scheduler,expander", channel)
    cluster.start_worker("senders", channel)
    started = 0
    tally = _start_tally(cluster, started)
    campaign_id = create_campaign(service, channel, segments, batch_size=200)
    dsn = settings.database.dsn()

    # Three SIGKILLs of the Faust worker, each once it has counted more, each followed by a restart.
    for kill, at in enumerate((300, 1100, 1900), start=1):
        wait_for(lambda at=at, proc=tally: _counted(dsn, campaign_id) >= at or not proc.alive,
                 timeout=120, interval=0.1,                 what=f"the Faust analytics counted {at} outcomes")
        assert tally.alive, f"the Faust worker exited: {tally.log_text()[-3000:]}"
        tally.signal(signal.SIGKILL)
        tally.popen.wait(10)
        started += 1
        tally = _start_tally(cluster, started)
        print(f"kill {kill} at {_counted(dsn, campaign_id)} counted")

    audience_size = len(expected_audience(dsn, campaign_id))

    def log_done() -> dict[str, int] | None:
        counts = log_status_counts(dsn, campaign_id)
        return counts if sum(counts.get(s, 0) for s in TERMINAL) >= audience_size else None

    log_counts = wait_for(log_done, timeout=180, interval=0.5, what="every recipient has a terminal row")

    def matches() -> list[tuple[object, ...]] | None:
        rows = _analytics(dsn, campaign_id)
        totals, sums = _totals_and_window_sums(rows)
        if any(totals[s] != log_counts.get(s, 0) for s in TERMINAL) or totals != sums:
            return None
        return rows

    try:
        wait_for(lambda: matches() or not tally.alive, timeout=120, interval=0.5,
                 what=f"campaign_analytics equal to the log {log_counts}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; {_diagnose(settings, dsn, campaign_id)}") from None
    assert tally.alive, f"the Faust worker exited: {tally.log_text()[-3000:]}"
    topic = settings.kafka.topic(OUTCOMES)
    wait_for(lambda: analytics_consumed(settings), timeout=60, interval=0.25,
             what="the Faust analytics consumed every outcome")
    wait_for(matches, timeout=30, interval=0.5, what="campaign_analytics settled")
    before = matches()

    # The replay: every outcome again, byte for byte, to its own partition.
    raw = Producer(settings.kafka.as_librdkafka())
    records = read_topic(settings, OUTCOMES, None)
    for r in records:
        raw.produce(topic, value=r["value"], key=r["key"], partition=r["_partition"])
    assert raw.flush(30) == 0
    wait_for(lambda: analytics_consumed(settings), timeout=120, interval=0.25,
             what="the Faust analytics consumed the replay")
    # Past a periodic full flush (every 10 flush ticks of 0.5 s), which offers every part it holds again: a
    # deliberate wait for something that must NOT happen, so no condition to poll for.
    time.sleep(12)
    after = _analytics(dsn, campaign_id)
    assert after == before, "the replay changed campaign_analytics"
    totals, sums = _totals_and_window_sums(after)
    assert totals == sums and all(totals[s] == log_counts.get(s, 0) for s in TERMINAL)
    assert len(after) > 3, "expected several windows"
    print(f"\nfaust analytics: {len(records)} outcomes replayed; totals {totals}; {len(after) - 1} windows")

    # Outcomes that reach delivery.outcomes long after they occurred, each backed by a recipient-log row of its own
    # (outside the audience: the analytics count only outcomes a row vouches for), all on one partition (one key),
    # in this order: 50 minutes old (within the allowed lateness, an hour: counted, in the window of its event
    # time, which had long expired from the Faust table, and in the totals); two hours old (late: not counted);
    # and one on time, whose count shows the two before it were read.
    now = datetime.now(UTC)
    ages = {"within": timedelta(minutes=50), "late": timedelta(hours=2), "on time": timedelta(0)}
    base = 9_000_000_000 + uuid.uuid4().int % 1_000_000
    key = str(base).encode()
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        for i, age in enumerate(ages.values()):
            cur.execute("INSERT INTO campaign_recipient_log (campaign_id, recipient_id, message_id, channel_kind, "
                        "status, attempts, created_at, updated_at) VALUES (%s, %s, %s, %s, 'sent', 1, %s, %s)",
                        (campaign_id, base + i, str(uuid.uuid5(uuid.NAMESPACE_URL, f"{base + i}")), channel,
                         now - age, now - age))
    conn.close()
    for i, age in enumerate(ages.values()):
        raw.produce(topic, key=key, value=get_codec().encode("DeliveryOutcome", {
            "outcome_id": f"aged-{uuid.uuid4()}", "message_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{base + i}")),
            "campaign_id": campaign_id, "recipient_id": str(base + i), "channel": channel, "status": "SENT",
            "attempt": 1, "latency_ms": 5.0, "failure_reason": None, "provider_message_id": None,
            "occurred_at": now - age}))
    assert raw.flush(30) == 0

    def aged_counted() -> bool:
        totals, sums = _totals_and_window_sums(_analytics(dsn, campaign_id))
        return totals["sent"] >= log_counts.get("sent", 0) + 2 and totals == sums

    wait_for(aged_counted, timeout=60, interval=0.5, what="the outcome within the allowed lateness and the one after")
    rows = _analytics(dsn, campaign_id)
    totals, _ = _totals_and_window_sums(rows)
    assert totals["sent"] == log_counts.get("sent", 0) + 2, "the outcome two hours late was counted"
    within = now - ages["within"]
    window = rows[1]
    assert window[0] <= within < window[0] + timedelta(seconds=2) and window[1] == 1, window
    assert "more than the allowed lateness" in tally.log_text(), tally.log_text()[-3000:]


def test_faust_analytics_rebalance_between_two_workers(settings, service, sessions, audience, cluster):
    """Two Faust workers share the partitions; one is SIGKILLed (its partitions move to the other, which recovers
    their tables), restarted (they move back), then the other is stopped with SIGTERM (a clean leave)."""
    channel = "whatsapp"
    set_channel(sessions, channel, 150, 30)
    _plan, segments = audience(2400)
    cluster.start_simulator("--seed", "28")
    cluster.start_worker("scheduler,expander", channel)
    cluster.start_worker("senders", channel)
    a, b = _start_tally(cluster, 0), _start_tally(cluster, 1)
    campaign_id = create_campaign(service, channel, segments, batch_size=200)
    dsn = settings.database.dsn()
    audience_size = len(expected_audience(dsn, campaign_id))
    wait_for(lambda: _counted(dsn, campaign_id) >= 400, timeout=120, interval=0.1, what="400 counted")
    a.signal(signal.SIGKILL)
    a.popen.wait(10)
    # 300 more counted, or all of them: how far the campaign got by now depends on the machine's speed.
    goal = min(_counted(dsn, campaign_id) + 300, audience_size)
    wait_for(lambda: _counted(dsn, campaign_id) >= goal, timeout=120, interval=0.2,
             what="the other worker counting on")
    a = _start_tally(cluster, 2)
    goal = min(_counted(dsn, campaign_id) + 300, audience_size)
    wait_for(lambda: _counted(dsn, campaign_id) >= goal or not a.alive, timeout=120, interval=0.2,
             what="counting after the restart")
    assert b.terminate(timeout=30) == 0 or True  # a clean leave; its exit code is Faust's

    def log_done() -> dict[str, int] | None:
        counts = log_status_counts(dsn, campaign_id)
        return counts if sum(counts.get(s, 0) for s in TERMINAL) >= audience_size else None

    log_counts = wait_for(log_done, timeout=180, interval=0.5, what="every recipient has a terminal row")

    def matches() -> bool:
        totals, sums = _totals_and_window_sums(_analytics(dsn, campaign_id))
        return all(totals[s] == log_counts.get(s, 0) for s in TERMINAL) and totals == sums

    try:
        wait_for(lambda: matches() or not a.alive, timeout=120, interval=0.5,
                 what=f"campaign_analytics equal to the log {log_counts}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; {_diagnose(settings, dsn, campaign_id)}") from None
    assert a.alive, a.log_text()[-3000:]
