"""sinks/analytics.py on a real PostgreSQL: parts kept only if newer, rows re-summed from their parts, idempotent
re-writes (not even ``updated_at`` moves), two writers of one row, and the returned rows."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import psycopg2
import pytest

from campaigns.core.tally import empty_part
from sinks import analytics as sink
from tests.pipeline_fixtures import audience, service, sessions  # noqa: F401 (fixtures)

W0 = datetime(2026, 11, 30, 6, 0, tzinfo=UTC)
W1 = W0 + timedelta(seconds=60)


def _part(src: int, sent: int, failed: int = 0, latency_max: float = 0.0) -> dict[str, object]:
    part = empty_part()
    part.update(sent=sent, failed=failed, src=src, latency_count=sent, latency_sum_ms=10.0 * sent,
                latency_max_ms=latency_max)
    return part


def _rows(dsn: str, campaign_id: str) -> list[tuple[object, ...]]:
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT window_start, window_end, sent, failed, latency_count, latency_max_ms, updated_at "
                    "FROM campaign_analytics WHERE campaign_id = %s ORDER BY window_start NULLS FIRST", (campaign_id,))
        rows = cur.fetchall()
    conn.close()
    return rows


def _write(dsn: str, parts: list[tuple[object, ...]]) -> list[dict[str, object]]:
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            out = sink.write_parts(cur, parts, datetime.now(UTC))  # type: ignore[arg-type]
        conn.commit()
        return out
    finally:
        conn.close()


def test_parts_are_absolute_newer_wins_and_rows_are_their_sum(settings, service, audience):  # noqa: F811
    _plan, segments = audience(20)
    campaign_id = str(service.create_campaign("marketer-1", {
        "name": "sink", "channel": "email", "content": {"subject": "Hi", "body": "<p>Hello</p>"},
        "segments": segments[:1]}))
    dsn = settings.database.dsn()
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        assert sink.known_campaigns(cur, [campaign_id, "00000000-0000-0000-0000-000000000000"]) == {campaign_id}
    conn.close()

    first = [(campaign_id, W0, W1, 0, _part(10, 3, latency_max=5.0)), (campaign_id, W0, W1, 1, _part(7, 2, 1)),
             (campaign_id, None, None, 0, _part(10, 3)), (campaign_id, None, None, 1, _part(7, 2, 1))]
    returned = _write(dsn, first)
    assert sorted((r["window_start"] is None, r["sent"], r["failed"]) for r in returned) == [(False, 5, 1),
                                                                                          (True, 5, 1)]
    rows = _rows(dsn, campaign_id)
    assert [(r[0], r[1], r[2], r[3], r[4], r[5]) for r in rows] == [(None, None, 5, 1, 5, 0.0),
                                                                  (W0, W1, 5, 1, 5, 5.0)]
    # The same parts again, and an older part: nothing changes, not even updated_at.
    assert _write(dsn, first) == []
    assert _write(dsn, [(campaign_id, W0, W1, 0, _part(9, 2))]) == []
    assert _rows(dsn, campaign_id) == rows
    # A newer part of one partition (a late outcome in W0): that row and only it is re-summed.
    returned = _write(dsn, [(campaign_id, W0, W1, 1, _part(12, 3, 1))])
    assert [(r["window_start"], r["sent"]) for r in returned] == [(W0, 6)]
    assert _rows(dsn, campaign_id)[0] == rows[0]


def test_two_writers_of_one_row_end_with_the_sum_of_both(settings, service, audience):  # noqa: F811
    _plan, segments = audience(20)
    campaign_id = str(service.create_campaign("marketer-1", {
        "name": "sink2", "channel": "email", "content": {"subject": "Hi", "body": "<p>Hello</p>"},
        "segments": segments[:1]}))
    dsn = settings.database.dsn()
    barrier = threading.Barrier(2)

    def writer(partition: int) -> None:
        for src in range(1, 30):
            barrier.wait(5)
            _write(dsn, [(campaign_id, None, None, partition, _part(src, src))])

    threads = [threading.Thread(target=writer, args=(p,)) for p in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert _rows(dsn, campaign_id)[0][2] == 29 + 29


def test_a_flush_that_changes_totals_wakes_a_listening_store(settings, service, audience):  # noqa: F811
    """The NOTIFY completion waits on: sent at the commit of a flush that changed totals, not for windows only."""
    _plan, segments = audience(20)
    campaign_id = str(service.create_campaign("marketer-1", {
        "name": "notify", "channel": "email", "content": {"subject": "Hi", "body": "<p>Hello</p>"},
        "segments": segments[:1]}))
    store = sink.PostgresAnalyticsStore(settings.database.dsn())
    try:
        assert store.wait_for_totals(0.0)  # the first call starts listening and says "look now"
        assert not store.wait_for_totals(0.2)
        _write(settings.database.dsn(), [(campaign_id, W0, W1, 0, _part(3, 1))])  # a window only
        assert not store.wait_for_totals(0.2)
        _write(settings.database.dsn(), [(campaign_id, None, None, 0, _part(3, 1))])
        assert store.wait_for_totals(10.0)
        assert not store.wait_for_totals(0.2)  # one notification, consumed
    finally:
        store.close()


def test_the_log_check_reads_status_and_attempts_of_the_rows_that_exist(settings, service, audience):  # noqa: F811
    _plan, segments = audience(5)
    campaign_id = str(service.create_campaign("marketer-1", {
        "name": "log check", "channel": "email", "content": {"subject": "Hi", "body": "<p>Hello</p>"},
        "segments": segments[:1]}))
    now = datetime.now(UTC)
    with psycopg2.connect(settings.database.dsn()) as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO campaign_recipient_log (campaign_id, recipient_id, message_id, channel_kind, status, "
                    "attempts, created_at, updated_at) VALUES (%s, 1, gen_random_uuid(), 'email', 'sent', 1, %s, %s), "
                    "(%s, 2, gen_random_uuid(), 'email', 'retrying', 2, %s, %s)",
                    (campaign_id, now, now, campaign_id, now, now))
    conn.close()
    store = sink.PostgresAnalyticsStore(settings.database.dsn())
    try:
        assert store.log_rows([(campaign_id, 2), (campaign_id, 1), (campaign_id, 3)]) == {
            (campaign_id, 1): ("sent", 1), (campaign_id, 2): ("retrying", 2)}
    finally:
        store.close()


def test_the_tally_writes_every_flush_on_one_connection_and_reopens_it_after_a_failure(
    settings, service, audience  # noqa: F811
):
    from streams.tally import PartsWriter

    _plan, segments = audience(5)
    campaign_id = str(service.create_campaign("marketer-1", {
        "name": "writer", "channel": "email", "content": {"subject": "Hi", "body": "<p>Hello</p>"},
        "segments": segments[:1]}))
    stranger = "00000000-0000-0000-0000-0000000000aa"
    dsn = settings.database.dsn()
    writer, unknown = PartsWriter(dsn), set()

    def backend() -> int:
        assert writer._conn is not None
        return writer._conn.raw.get_backend_pid()

    written = writer.write([(campaign_id, None, None, 0, _part(1, 1)), (stranger, None, None, 0, _part(1, 1))],
                           unknown)
    assert [r["sent"] for r in written] == [1] and unknown == {stranger}  # a campaign that does not exist: skipped
    first = backend()
    writer.write([(campaign_id, None, None, 0, _part(2, 2))], unknown)
    assert backend() == first  # the same connection: no backend started per flush

    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT pg_terminate_backend(%s)", (first,))
    conn.close()
    with pytest.raises(psycopg2.Error):  # the flush fails; the tally retries it on the next tick
        writer.write([(campaign_id, None, None, 0, _part(3, 3))], unknown)
    assert [r["sent"] for r in writer.write([(campaign_id, None, None, 0, _part(3, 3))], unknown)] == [3]
    assert backend() != first  # reopened
    assert [row[2] for row in _rows(dsn, campaign_id)] == [3]
    writer.close()
