"""Derived records stay consistent with the recipient log across crashes (issue 14, bugs 1 and 2).

The rule: an outcome exists if and only if its log row committed, with the same id every time it is emitted.
Each test crashes a stage at the worst moment, in process and deterministically, on the real broker and
database; the "crash" keeps whatever the stage had produced (flushed afterwards), the worst case for
analytics, or loses it (a producer that never delivers), the worst case for completeness.
"""

from __future__ import annotations

import collections
from typing import Any

import psycopg2
import pytest

from campaigns.codec import get_codec
from campaigns.topics import OUTCOMES, messages_topic
from campaigns.transports.fake import FakeTransport
from producers.kafka import KafkaProducer
from producers.topics import ensure_topics, topic_specs
from streams.expansion import Expander
from streams.sender import ChannelSender
from tests.helpers import consume_to_end, wait_for


class _Crash(KeyboardInterrupt):
    """A simulated kill: nothing in the stages catches it."""


class CommitCrash:
    """A psycopg2 connection that dies at its ``crash_on``-th commit, before committing (the transaction is
    rolled back, as a killed process's would be)."""

    def __init__(self, conn: Any, crash_on: int) -> None:
        self._conn, self._crash_on, self.commits = conn, crash_on, 0

    def commit(self) -> None:
        self.commits += 1
        if self.commits == self._crash_on:
            self._conn.rollback()
            raise _Crash(f"killed at commit {self.commits}")
        self._conn.commit()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


class LostProducer(KafkaProducer):
    """A producer whose records never reach the broker: the process dies at the first flush that has records to
    deliver (a flush with nothing queued, as the runtime does after an empty batch, is no such moment)."""

    queued = 0

    def produce(self, *args: Any, **kwargs: Any) -> None:
        self.queued += 1

    def flush(self, timeout: float | None = None) -> int:
        if self.queued:
            raise _Crash("killed before the flush")
        return 0


def _outcomes(settings, campaign_id: str) -> dict[str, set[str]]:
    """recipient -> the statuses of its outcome records on delivery.outcomes."""
    codec = get_codec()
    found: dict[str, set[str]] = collections.defaultdict(set)
    for msg in consume_to_end(settings.kafka.bootstrap_servers, settings.kafka.topic(OUTCOMES)):
        o = codec.decode(msg.value(), "DeliveryOutcome")
        if o["campaign_id"] == campaign_id:
            found[o["recipient_id"]].add(o["status"].lower())
    return found


def _log(settings, campaign_id: str) -> dict[str, str]:
    with psycopg2.connect(settings.database.dsn()) as conn, conn.cursor() as cur:
        cur.execute("SELECT recipient_id::text, status FROM campaign_recipient_log WHERE campaign_id = %s",
                    (campaign_id,))
        return dict(cur.fetchall())


def _active_campaign(settings, service, segments, *, batch_size: int) -> str:
    campaign_id = service.create_campaign("marketer-1", {
        "name": "crash", "channel": "sms", "content": {"body": "hi"}, "segments": segments,
        "batch_size": batch_size,
    })
    service.schedule_campaign("marketer-1", campaign_id)
    ensure_topics(settings.kafka, topic_specs(settings))
    assert service.activate_due() == [campaign_id]
    return str(campaign_id)


def _expand(settings, service, campaign_id: str) -> Expander:
    """An expander that has expanded the campaign to its end (returned open, to sweep later)."""
    expander = Expander(settings, KafkaProducer(settings.kafka))
    wait_for(lambda: expander.run_once() is not None
             and service.get_campaign("marketer-1", campaign_id).expansion_done,
             timeout=60, what="expansion done")
    return expander


def _sms_sender(settings, service, campaign_id: str, producer: KafkaProducer) -> ChannelSender:
    built = ChannelSender(settings, "sms", FakeTransport("sms"), producer, campaigns=service,
                          group_id=f"crash-{campaign_id}")
    built.start()
    return built


def _killed_before_its_flush(settings, service, campaign_id: str) -> None:
    """A sender that commits its first batch's rows and dies before its producer flushes anything."""
    doomed = _sms_sender(settings, service, campaign_id, LostProducer(settings.kafka))
    with pytest.raises(_Crash):
        wait_for(lambda: doomed.run_once() and False, timeout=60, what="the doomed sender to die")
    doomed.close()


def _restarted_until_outcomes(settings, service, campaign_id: str, messages: int, what: str) -> None:
    """A sender on the same group, run until ``messages`` recipients have an outcome."""
    restarted = _sms_sender(settings, service, campaign_id, KafkaProducer(settings.kafka))
    try:
        wait_for(lambda: (restarted.run_once() or True)
                 and len(_outcomes(settings, campaign_id)) == messages,
                 timeout=60, interval=0.2, what=what)
    finally:
        restarted.close()


@pytest.mark.parametrize("crash_on", range(1, 8))
def test_expansion_killed_at_a_commit_then_cancelled_emits_outcomes_only_for_committed_rows(
    settings, service, audience, crash_on
):
    """Bug 2: the expander produced a page's SKIPPED outcomes before committing the page; killed there, the
    campaign cancelled and swept, analytics counted skipped + cancelled for more recipients than it had.
    Killed at each of its first commits in turn (reads, pages' skipped rows, checkpoints), so one of them is
    the commit of a page's skipped rows."""
    plan, segments = audience(600, opted_out_every=5)
    campaign_id = _active_campaign(settings, service, segments, batch_size=100)

    producer = KafkaProducer(settings.kafka)
    crashing = Expander(settings, producer)
    crashing._conn = CommitCrash(crashing._conn, crash_on)
    with pytest.raises(_Crash):
        crashing.run_once()
    producer.flush()  # worst case: everything produced before the kill reached the broker
    crashing.close()

    service.cancel_campaign("marketer-1", campaign_id)
    sweeper = Expander(settings, KafkaProducer(settings.kafka))
    wait_for(lambda: sweeper.run_once() is not None and _log(settings, campaign_id)
             and service.get_campaign("marketer-1", campaign_id).expansion_done,
             timeout=60, what="the sweep to finish")
    sweeper.close()

    log_rows, outcomes = _log(settings, campaign_id), _outcomes(settings, campaign_id)
    assert set(log_rows.values()) <= {"skipped", "cancelled"}
    assert len(log_rows) == len(plan.ids())
    wrong = {r: (log_rows.get(r), statuses) for r, statuses in outcomes.items() if statuses != {log_rows.get(r)}}
    assert not wrong, f"outcomes that their log row does not back: {dict(list(wrong.items())[:5])}"
    assert set(outcomes) == set(log_rows), "every logged recipient has its outcome"


def test_sender_killed_before_its_flush_re_emits_the_skipped_outcomes_of_rows_it_committed(
    settings, service, audience
):
    """A claim's skipped rows committed (opted-out members: the claim decides who may be sent to), their outcomes
    lost with the process (killed before its flush): the messages redelivered find the rows terminal and must
    still emit their outcomes, with the ids of the first time. (The sender reads a batch's skipped rows back
    after its claim, so a skip written by an earlier delivery is emitted too.)"""
    _, segments = audience(300, opted_out_every=5, inactive_every=0)
    campaign_id = _active_campaign(settings, service, segments, batch_size=100)
    _expand(settings, service, campaign_id).close()
    messages = len(consume_to_end(settings.kafka.bootstrap_servers, settings.kafka.topic(messages_topic("sms"))))

    _killed_before_its_flush(settings, service, campaign_id)
    committed = {r for r, status in _log(settings, campaign_id).items() if status == "skipped"}
    assert committed, "the doomed sender committed skipped rows (their outcomes never left it)"
    assert not _outcomes(settings, campaign_id)

    _restarted_until_outcomes(settings, service, campaign_id, messages, f"{messages} outcomes")
    log_rows, outcomes = _log(settings, campaign_id), _outcomes(settings, campaign_id)
    assert len(log_rows) == messages and set(log_rows.values()) == {"sent", "skipped"}
    assert committed <= {r for r, status in log_rows.items() if status == "skipped"}
    assert all(statuses == {log_rows[r]} for r, statuses in outcomes.items()), "each row's own outcome, once"


def test_sender_killed_before_its_flush_re_emits_the_outcomes_of_rows_it_committed(settings, service, audience):
    """Bug 1: a sender committed ``cancelled`` rows and died before its producer flush; the redelivered
    messages found the rows already terminal and nothing re-emitted their outcomes (log 152, analytics 52)."""
    _, segments = audience(300, opted_out_every=0, inactive_every=0)
    campaign_id = _active_campaign(settings, service, segments, batch_size=100)
    _expand(settings, service, campaign_id).close()
    messages = len(consume_to_end(settings.kafka.bootstrap_servers, settings.kafka.topic(messages_topic("sms"))))
    service.cancel_campaign("marketer-1", campaign_id)  # before any sender: every message becomes a cancel

    _killed_before_its_flush(settings, service, campaign_id)
    assert "cancelled" in _log(settings, campaign_id).values(), "the doomed sender committed cancelled rows"

    _restarted_until_outcomes(settings, service, campaign_id, messages, f"{messages} CANCELLED outcomes")
    log_rows, outcomes = _log(settings, campaign_id), _outcomes(settings, campaign_id)
    assert set(log_rows.values()) == {"cancelled"} and len(log_rows) == messages
    assert all(statuses == {"cancelled"} for statuses in outcomes.values())


def test_cancel_ends_rows_left_claimed_by_a_dead_sender_and_rows_left_retrying(settings, service, audience):
    """Bug 3: rows left ``claimed`` by a crashed sender (lease run out) and ``retrying`` rows whose retries
    came due while the campaign was paused stayed non-terminal forever after a cancel. The sweep now ends
    both, and emits their CANCELLED outcomes."""
    _, segments = audience(200, opted_out_every=0, inactive_every=0)
    campaign_id = _active_campaign(settings, service, segments, batch_size=100)
    expander = _expand(settings, service, campaign_id)
    # What a sender killed mid-batch leaves (claims whose lease ran out), and what a transient failure leaves
    # (retrying rows), for 40 recipients each; nobody will ever come back for them.
    with psycopg2.connect(settings.database.dsn()) as conn, conn.cursor() as cur:
        cur.execute("SELECT DISTINCT customer_id FROM segment_members WHERE segment_id = ANY(%s) ORDER BY 1 LIMIT 80",
                    (segments,))
        ids = [r for (r,) in cur.fetchall()]
        cur.execute(
            "INSERT INTO campaign_recipient_log (campaign_id, recipient_id, message_id, channel_kind, status, "
            "attempts, claimed_at, lease_until) SELECT %s, r, gen_random_uuid(), 'sms', "
            "CASE WHEN n <= 40 THEN 'claimed' ELSE 'retrying' END, CASE WHEN n <= 40 THEN 0 ELSE 1 END, "
            "now() - interval '1 minute', CASE WHEN n <= 40 THEN now() - interval '30 seconds' END "
            "FROM unnest(%s::bigint[]) WITH ORDINALITY AS v(r, n)",
            (campaign_id, ids),
        )
    service.pause_campaign("marketer-1", campaign_id)
    service.cancel_campaign("marketer-1", campaign_id)
    wait_for(lambda: expander.run_once() is not None
             and "claimed" not in _log(settings, campaign_id).values()
             and "retrying" not in _log(settings, campaign_id).values(),
             timeout=60, what="the sweep to end every row")
    expander.close()

    log_rows = _log(settings, campaign_id)
    assert set(log_rows.values()) == {"cancelled"}
    outcomes = _outcomes(settings, campaign_id)
    assert all(outcomes.get(str(r)) == {"cancelled"} for r in ids), "each settled row has its CANCELLED outcome"
