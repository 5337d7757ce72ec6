"""Scheduler and expansion on real Kafka + PostgreSQL (issue: scheduler and campaign expansion)."""

from __future__ import annotations

import collections

import psycopg2
import pytest

from campaigns.codec import get_codec
from campaigns.db.seed import SeedPlan
from campaigns.transports.fake import FakeTransport
from producers.kafka import KafkaProducer
from producers.topics import ensure_topics, topic_specs
from streams.expansion import Expander
from streams.worker import Worker
from tests.helpers import consume_to_end, wait_for


def eligible(plan: SeedPlan, ids, channel: str) -> tuple[set[int], dict[int, str]]:
    send, skip = set(), {}
    for cid in ids:
        if plan.inactive_every and cid % plan.inactive_every == 0:
            skip[cid] = "customer_inactive"
        elif plan.opted_out_every and cid % plan.opted_out_every == 0:
            skip[cid] = "opted_out"
        elif channel == "whatsapp" and plan.no_whatsapp_every and cid % plan.no_whatsapp_every == 0:
            skip[cid] = "no_address"
        else:
            send.add(cid)
    return send, skip


def skipped_rows(dsn: str, campaign_id) -> dict[int, str]:
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT recipient_id, failure_reason FROM campaign_recipient_log "
                    "WHERE campaign_id = %s AND status = 'skipped'", (str(campaign_id),))
        return dict(cur.fetchall())


def messages_by_recipient(settings, channel: str, campaign_id) -> collections.Counter:
    records = consume_to_end(settings.kafka.bootstrap_servers, settings.kafka.topic(f"campaign.messages.{channel}"))
    codec = get_codec()
    counts: collections.Counter = collections.Counter()
    for record in records:
        value = codec.decode(record.value(), "RecipientMessage")
        assert record.key().decode() == value["recipient_id"], "messages are keyed by recipient id"
        if value["campaign_id"] == str(campaign_id):
            counts[int(value["recipient_id"])] += 1
    return counts


def what_records_carry(settings, channel: str, campaign_id) -> set[tuple]:
    """The campaign's records' address and content fields, as a set of distinct tuples."""
    records = consume_to_end(settings.kafka.bootstrap_servers, settings.kafka.topic(f"campaign.messages.{channel}"))
    codec = get_codec()
    return {(v["address"], v["subject"], v["body"], v["template_name"], tuple(v["template_parameters"]), v["locale"])
            for v in (codec.decode(r.value(), "RecipientMessage") for r in records)
            if v["campaign_id"] == str(campaign_id)}


def test_union_of_segments_and_manual_list_one_message_per_person(settings, service, audience):
    plan, segments = audience(2000)
    manual = [plan.first_id + i for i in range(0, 300, 3)]  # overlaps the segments and adds nobody new
    campaign_id = service.create_campaign("marketer-1", {
        "name": "overlap", "channel": "whatsapp", "content": {"body": "hi"},
        "segments": segments[:2], "manual_recipients": manual, "batch_size": 137,
    })
    service.schedule_campaign("marketer-1", campaign_id)
    target = {cid for cid in plan.ids() if set(plan.segment_of(cid)) & {0, 1}} | set(manual)
    send, skip = eligible(plan, target, "whatsapp")

    with Worker(settings, stages=("scheduler", "expander")):
        wait_for(lambda: service.get_campaign("marketer-1", campaign_id).expansion_done, timeout=60,
                 what="expansion done")

    view = service.get_campaign("marketer-1", campaign_id)
    assert view.status == "active"
    assert view.total_recipients == len(target)
    counts = messages_by_recipient(settings, "whatsapp", campaign_id)
    assert set(counts) == target, "a message per audience member: whether it goes out is the claim's to decide"
    assert set(counts.values()) == {1}
    assert skipped_rows(settings.database.dsn(), campaign_id) == {}, "the expansion reads no customer"
    assert what_records_carry(settings, "whatsapp", campaign_id) == {("", None, "", None, (), "")}, \
        "a record names the pair: no address, no content"

    transport = FakeTransport("whatsapp")
    with Worker(settings, stages=("senders",), channels=("whatsapp",), rate_limits=False,
                transports={"whatsapp": transport}):
        wait_for(lambda: len(skipped_rows(settings.database.dsn(), campaign_id)) + len(transport.sent) == len(target),
                 timeout=60, what="every audience member sent to or skipped")
    assert skipped_rows(settings.database.dsn(), campaign_id) == skip
    assert {"opted_out", "no_address", "customer_inactive"} <= set(skip.values())
    assert collections.Counter(int(m.recipient_id) for m in transport.sent) == dict.fromkeys(send, 1)
    assert {m.body for m in transport.sent} == {"hi"} and all(m.address for m in transport.sent), \
        "the sender's claim gave each message its address and the campaign's content"


class CrashAfterFlush(KafkaProducer):
    """The producer of an expander that dies (like a killed worker) right after its ``crash_on``-th flush: that
    page's records are on the broker, its checkpoint (in the next page's transaction) never commits."""

    def __init__(self, kafka, *, crash_on: int):
        super().__init__(kafka)
        self.crash_on, self.flushes = crash_on, 0

    def flush(self, timeout: float = 30.0) -> None:
        super().flush(timeout)
        self.flushes += 1
        if self.flushes == self.crash_on:
            raise KeyboardInterrupt("simulated crash")


def test_expansion_killed_mid_way_resumes_and_loses_nobody(settings, service, audience):
    plan, segments = audience(1500)
    campaign_id = service.create_campaign("marketer-1", {
        "name": "crash", "channel": "sms", "content": {"body": "hi"}, "segments": segments, "batch_size": 100,
    })
    service.schedule_campaign("marketer-1", campaign_id)
    ensure_topics(settings.kafka, topic_specs(settings))
    assert service.activate_due() == [campaign_id]

    crashing = Expander(settings, CrashAfterFlush(settings.kafka, crash_on=4))
    with pytest.raises(KeyboardInterrupt):
        crashing.run_once()
    crashing.close()
    assert not service.get_campaign("marketer-1", campaign_id).expansion_done

    restarted = Expander(settings, KafkaProducer(settings.kafka))
    restarted.run_once()
    restarted.close()

    assert service.get_campaign("marketer-1", campaign_id).expansion_done
    counts = messages_by_recipient(settings, "sms", campaign_id)
    assert set(counts) == set(plan.ids()), "every recipient is on the topic, none missing"
    # Only the page produced but not checkpointed was produced twice; the senders' claims absorb it.
    assert sum(1 for n in counts.values() if n == 2) <= 100
    assert max(counts.values()) <= 2


def test_two_schedulers_activate_each_campaign_once(settings, service, audience):
    _, segments = audience(50)
    ids = []
    for i in range(8):
        campaign_id = service.create_campaign("marketer-1", {
            "name": f"race-{i}", "channel": "email", "content": {"subject": "s", "body": "b"},
            "segments": segments[:1],
        })
        service.schedule_campaign("marketer-1", campaign_id)
        ids.append(campaign_id)

    with Worker(settings, stages=("scheduler",)), Worker(settings, stages=("scheduler",)):
        wait_for(lambda: all(service.get_campaign("marketer-1", c).status == "active" for c in ids),
                 timeout=30, what="all campaigns active")

    with psycopg2.connect(settings.database.dsn()) as conn, conn.cursor() as cur:
        cur.execute("SELECT key, count(*) FROM outbox WHERE event_type = 'ACTIVATED' AND key = ANY(%s) GROUP BY key",
                    ([str(c) for c in ids],))
        activations = dict(cur.fetchall())
    assert activations == {str(c): 1 for c in ids}


def _active_sms_campaign(settings, service, name: str, segment: int):
    """An SMS campaign to one segment in pages of 50, activated, its topics created: ready for an expander."""
    campaign_id = service.create_campaign("marketer-1", {
        "name": name, "channel": "sms", "content": {"body": "hi"}, "segments": [segment], "batch_size": 50,
    })
    service.schedule_campaign("marketer-1", campaign_id)
    ensure_topics(settings.kafka, topic_specs(settings))
    assert service.activate_due() == [campaign_id]
    return campaign_id


def test_a_member_added_behind_the_cursor_does_not_keep_the_campaign_active(settings, service, audience):
    """Regression: the total used to be a recount at the end, which counted a customer who joined the segment
    behind the keyset cursor and never got a row (total 116 for 115 expanded): active forever."""
    plan, segments = audience(300)
    campaign_id = _active_sms_campaign(settings, service, "late joiner", segments[0])
    members = [cid for cid in plan.ids() if 0 in plan.segment_of(cid)]
    # A customer of another segment, whose id is below the cursor once the first page is done.
    joiner = next(cid for cid in plan.ids() if 0 not in plan.segment_of(cid) and cid < members[49])
    dsn = settings.database.dsn()
    expander = Expander(settings, KafkaProducer(settings.kafka))

    def join_once(_campaign, _page_size):
        expander.on_page = None
        with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
            cur.execute("INSERT INTO segment_members (segment_id, customer_id) VALUES (%s, %s)",
                        (segments[0], joiner))
        conn.close()

    expander.on_page = join_once
    expander.run_once()
    expander.close()
    view = service.get_campaign("marketer-1", campaign_id)
    assert view.expansion_done and view.total_recipients == len(members)
    with Worker(settings, stages=("senders", "tally", "completion"), channels=("sms",), rate_limits=False,
                transports={"sms": FakeTransport("sms")}) as worker:
        wait_for(lambda: service.get_campaign("marketer-1", campaign_id).status == "completed", timeout=60,
                 what="campaign completed")
        assert worker.restarts == {}


def test_a_page_read_ahead_that_fails_raises_in_the_expander_and_the_next_pass_reads_again(
    settings, service, audience
):
    """Pages are read one ahead on a connection of their own (streams.expansion.PageReader). That connection
    dropped mid-campaign: the expander's pass fails as a read on its own connection did (run_forever retries),
    nothing is checkpointed past the pages done, and the next pass reconnects and finishes, every member on the
    topic."""
    plan, segments = audience(600)
    campaign_id = _active_sms_campaign(settings, service, "dropped reader", segments[0])
    members = [cid for cid in plan.ids() if 0 in plan.segment_of(cid)]
    dsn = settings.database.dsn()
    expander = Expander(settings, KafkaProducer(settings.kafka))

    def drop_the_reader(_campaign, _page_size):
        expander.on_page = None
        reader = expander._pages._conn  # the page read ahead is running on it, or done
        with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(%s)", (reader.get_backend_pid(),))
        conn.close()

    expander.on_page = drop_the_reader
    try:
        with pytest.raises(psycopg2.OperationalError):
            expander.run_once()
        view = service.get_campaign("marketer-1", campaign_id)
        assert not view.expansion_done
        expander.run_once()
    finally:
        expander.close()
    view = service.get_campaign("marketer-1", campaign_id)
    assert view.expansion_done and view.total_recipients == len(members)
    assert set(messages_by_recipient(settings, "sms", campaign_id)) == set(members)
