# ruff: noqa: F811 (pytest fixtures imported and requested by name)
"""Delivery receipts on the real broker and database: the webhook receiver (signatures checked, forged calls
produce nothing), the receipts stage (idempotent rows and counters, held receipts of not-yet-recorded sends, a
replay of the whole topic changes nothing), and suppression honoured by expansion and the sender's claim."""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode

import psycopg2
from aiohttp.test_utils import TestClient, TestServer
from confluent_kafka import KafkaException

from app.webhooks import WebhookReceiver
from campaigns.codec import get_codec
from campaigns.core.receipts import Receipt, ReceiptStatus, receipt_id
from campaigns.core.webhook_signatures import email_signature, meta_signature, twilio_signature
from campaigns.settings import Settings
from campaigns.topics import RECEIPTS
from producers.kafka import KafkaProducer
from producers.topics import ensure_topics
from sinks import audience
from streams.receipts import ReceiptsStage
from tests.helpers import consume_to_end, wait_for
from tests.pipeline_fixtures import audience as audience_fixture  # noqa: F401 (fixture)
from tests.pipeline_fixtures import service, sessions  # noqa: F401 (fixtures)

T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)


def _query(settings: Settings, sql: str, *params: object) -> list[tuple]:
    conn = psycopg2.connect(settings.database.dsn())
    try:
        with conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall() if cur.description else []
    finally:
        conn.commit()
        conn.close()


def _records(settings: Settings) -> list:
    """Every record of delivery.receipts (retrying while a freshly created topic's leaders are being elected)."""

    def read() -> list | None:
        try:
            return [consume_to_end(settings.kafka.bootstrap_servers, settings.kafka.topic(RECEIPTS))]
        except KafkaException:
            return None

    return wait_for(read, timeout=30, interval=0.2, what="delivery.receipts readable")[0]


def _whatsapp_body(wamid: str, status: str, ts: int) -> bytes:
    payload = {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": "W",
                "changes": [
                    {
                        "field": "messages",
                        "value": {
                            "messaging_product": "whatsapp",
                            "metadata": {"phone_number_id": "1"},
                            "statuses": [
                                {"id": wamid, "status": status, "timestamp": str(ts), "recipient_id": "15550000001"}
                            ],
                        },
                    }
                ],
            }
        ],
    }
    return json.dumps(payload).encode()


async def test_receiver_refuses_forged_unsigned_and_stale_calls_and_produces_nothing_for_them(settings):
    ensure_topics(settings)
    producer = KafkaProducer(settings.kafka)
    receiver = WebhookReceiver(settings, producer)
    hooks, token = settings.webhooks, settings.providers.sms_auth_token.get_secret_value()
    async with TestClient(TestServer(receiver.app())) as client:
        body = _whatsapp_body("wamid.X", "delivered", 1764493200)
        assert (await client.post("/webhooks/whatsapp", data=body)).status == 401
        forged = meta_signature("not-the-app-secret", body)
        answer = await client.post("/webhooks/whatsapp", data=body, headers={"X-Hub-Signature-256": forged})
        assert answer.status == 403
        good = meta_signature(hooks.whatsapp_app_secret.get_secret_value(), body)
        tampered = body.replace(b"delivered", b"read")
        assert (
            await client.post("/webhooks/whatsapp", data=tampered, headers={"X-Hub-Signature-256": good})
        ).status == 403
        # The subscription handshake.
        ok = await client.get(
            "/webhooks/whatsapp",
            params={
                "hub.mode": "subscribe",
                "hub.verify_token": hooks.whatsapp_verify_token.get_secret_value(),
                "hub.challenge": "1158201444",
            },
        )
        assert ok.status == 200 and await ok.text() == "1158201444"
        bad = await client.get(
            "/webhooks/whatsapp", params={"hub.mode": "subscribe", "hub.verify_token": "guess", "hub.challenge": "1"}
        )
        assert bad.status == 403

        form = {"MessageSid": "SM1", "MessageStatus": "delivered", "To": "+15550000001", "From": "+15550000000"}
        url = str(client.make_url("/webhooks/twilio"))
        encoded = urlencode(form)
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        assert (await client.post("/webhooks/twilio", data=encoded, headers=headers)).status == 401
        wrong_url = twilio_signature(token, url + "?x=1", form.items())
        assert (
            await client.post("/webhooks/twilio", data=encoded, headers={**headers, "X-Twilio-Signature": wrong_url})
        ).status == 403
        wrong_token = twilio_signature("other-token", url, form.items())
        assert (
            await client.post("/webhooks/twilio", data=encoded, headers={**headers, "X-Twilio-Signature": wrong_token})
        ).status == 403

        note = json.dumps(
            {
                "notification_id": "n1",
                "type": "bounce",
                "bounce_type": "permanent",
                "message_id": "Q1",
                "recipient": "a@example.com",
            }
        ).encode()
        secret = hooks.email_secret.get_secret_value()
        stale = int(time.time()) - int(hooks.email_window_s) - 5
        assert (await client.post("/webhooks/email", data=note)).status == 401
        assert (
            await client.post(
                "/webhooks/email",
                data=note,
                headers={
                    "X-Campaigns-Timestamp": str(stale),
                    "X-Campaigns-Signature": email_signature(secret, stale, note),
                },
            )
        ).status == 403
        now = int(time.time())
        assert (
            await client.post(
                "/webhooks/email",
                data=note,
                headers={
                    "X-Campaigns-Timestamp": str(now),
                    "X-Campaigns-Signature": email_signature("guess", now, note),
                },
            )
        ).status == 403
        assert _records(settings) == []
        assert receiver.stats["unsigned"] == 3 and receiver.stats["forged"] == 7

        # Genuine calls: 2xx, one receipt each on delivery.receipts.
        assert (await client.post("/webhooks/whatsapp", data=body, headers={"X-Hub-Signature-256": good})).status == 200
        signed = twilio_signature(token, url, form.items())
        answer = await client.post("/webhooks/twilio", data=encoded, headers={**headers, "X-Twilio-Signature": signed})
        assert answer.status == 200 and "<Response>" in await answer.text()
        assert (
            await client.post(
                "/webhooks/email",
                data=note,
                headers={
                    "X-Campaigns-Timestamp": str(now),
                    "X-Campaigns-Signature": email_signature(secret, now, note),
                },
            )
        ).status == 204
    producer.close()
    records = _records(settings)
    decoded = sorted((r.key().decode(), get_codec().decode(r.value(), "DeliveryReceipt")["status"]) for r in records)
    assert decoded == [("Q1", "BOUNCED"), ("SM1", "DELIVERED"), ("wamid.X", "DELIVERED")]


def _campaign_with_sent_rows(settings, service, audience_fixture, channel: str, n: int) -> tuple[str, list[int]]:
    # Everyone active and not opted out: which seeded ids are (every 50th, 97th) depends on the tests run before.
    _plan, segments = audience_fixture(4 * n, opted_out_every=0, inactive_every=0)
    content = {"subject": "Hi", "body": "<p>Hello</p>"} if channel == "email" else {"body": "Hello"}
    campaign_id = str(
        service.create_campaign(
            "marketer-1",
            {"name": f"receipts-{channel}", "channel": channel, "content": content, "segments": segments[:1]},
        )
    )
    members = [
        r[0]
        for r in _query(
            settings,
            "SELECT customer_id FROM segment_members WHERE segment_id = %s ORDER BY customer_id LIMIT %s",
            segments[0],
            n,
        )
    ]
    assert len(members) == n
    for rid in members:
        _query(
            settings,
            "INSERT INTO campaign_recipient_log (campaign_id, recipient_id, message_id, channel_kind, "
            "status, attempts, provider_message_id, sent_at, created_at, updated_at) "
            "VALUES (%s, %s, %s, %s, 'sent', 1, %s, %s, %s, %s)",
            campaign_id,
            rid,
            str(uuid.uuid4()),
            channel,
            f"P-{campaign_id[:8]}-{rid}",
            T0,
            T0,
            T0,
        )
    return campaign_id, members


def _receipt(
    campaign_id: str, rid: int, status: ReceiptStatus, at: datetime, channel: str = "email", bounce: str | None = None
) -> Receipt:
    pid = f"P-{campaign_id[:8]}-{rid}"
    return Receipt(receipt_id(channel, pid, status.value, str(at)), channel, status, pid, at, bounce_type=bounce)


def _produce(settings: Settings, receipts: list[Receipt]) -> None:
    producer = KafkaProducer(settings.kafka)
    codec = get_codec()
    for r in receipts:
        producer.produce(
            settings.kafka.topic(RECEIPTS),
            r.provider_message_id or r.address,
            codec.encode("DeliveryReceipt", r.as_record(datetime.now(UTC))),
        )
    producer.flush()
    producer.close()


def _state(settings: Settings, campaign_id: str) -> dict:
    rows = _query(
        settings,
        "SELECT recipient_id, delivered_at, read_at, bounced_at, complained_at, provider_status, "
        "updated_at FROM campaign_recipient_log WHERE campaign_id = %s ORDER BY recipient_id",
        campaign_id,
    )
    analytics = _query(
        settings,
        "SELECT window_start, delivered, read, bounced, complained FROM campaign_analytics "
        "WHERE campaign_id = %s ORDER BY window_start NULLS FIRST",
        campaign_id,
    )
    return {"rows": rows, "analytics": analytics}


def _drain(stage: ReceiptsStage, until) -> None:  # type: ignore[no-untyped-def]
    wait_for(lambda: (stage.run_once(), until())[1], timeout=30, interval=0.0, what="the receipts stage")


def test_stage_applies_receipts_once_whatever_the_order_duplicates_or_replays(
    settings,
    service,
    audience_fixture,
):
    ensure_topics(settings)
    campaign_id, members = _campaign_with_sent_rows(settings, service, audience_fixture, "email", 6)
    a, b, c, d, e, f = members
    t = T0 + timedelta(seconds=30)
    receipts = [
        _receipt(campaign_id, a, ReceiptStatus.READ, t + timedelta(seconds=9)),  # read before delivered
        _receipt(campaign_id, a, ReceiptStatus.DELIVERED, t + timedelta(seconds=3)),
        _receipt(campaign_id, a, ReceiptStatus.DELIVERED, t + timedelta(seconds=3)),  # a provider's retry
        _receipt(campaign_id, b, ReceiptStatus.DELIVERED, t),
        _receipt(campaign_id, b, ReceiptStatus.COMPLAINED, t + timedelta(seconds=60)),
        _receipt(campaign_id, c, ReceiptStatus.BOUNCED, t, bounce="hard"),
        _receipt(campaign_id, d, ReceiptStatus.BOUNCED, t, bounce="soft"),
        _receipt(campaign_id, e, ReceiptStatus.SENT, t),
    ]
    # A receipt for a send not recorded yet (the callback outran the sender): held, applied once the row exists.
    _query(
        settings,
        "UPDATE campaign_recipient_log SET status = 'claimed', provider_message_id = NULL "
        "WHERE campaign_id = %s AND recipient_id = %s",
        campaign_id,
        f,
    )
    early = _receipt(campaign_id, f, ReceiptStatus.DELIVERED, t)
    _produce(settings, [*receipts, early])
    stage = ReceiptsStage(settings, KafkaProducer(settings.kafka))
    try:
        _drain(stage, lambda: stage.received >= 9 and stage.held == 1)
        _query(
            settings,
            "UPDATE campaign_recipient_log SET status = 'sent', provider_message_id = %s "
            "WHERE campaign_id = %s AND recipient_id = %s",
            early.provider_message_id,
            campaign_id,
            f,
        )
        _drain(stage, lambda: stage.held == 0)
        assert stage.unmatched == 0

        state = _state(settings, campaign_id)
        by_id = {row[0]: row for row in state["rows"]}
        assert by_id[a][1] == t + timedelta(seconds=3) and by_id[a][2] == t + timedelta(seconds=9)
        assert by_id[a][5] == "read"
        assert by_id[b][1] == t and by_id[b][4] == t + timedelta(seconds=60) and by_id[b][5] == "complained"
        assert by_id[c][3] == t and by_id[c][5] == "bounced"
        assert by_id[d][3] == t and by_id[d][5] == "bounced"
        assert by_id[e][1:5] == (None, None, None, None) and by_id[e][5] == "sent"
        assert by_id[f][1] == t
        totals = state["analytics"][0]
        assert totals[0] is None and totals[1:] == (3, 1, 2, 1)  # delivered a,b,f; read a; bounced c,d; complained b
        windows = state["analytics"][1:]
        assert tuple(sum(w[i] for w in windows) for i in range(1, 5)) == totals[1:]
        sent = _query(
            settings,
            "SELECT count(*) FROM campaign_recipient_log WHERE campaign_id = %s AND status = 'sent'",
            campaign_id,
        )[0][0]
        assert totals[1] <= sent  # delivered <= sent

        email_of = dict(_query(settings, "SELECT id, email FROM customers WHERE id = ANY(%s)", [b, c, d]))
        suppressed = _query(settings, "SELECT channel_kind, address, reason FROM suppressions ORDER BY address")
        assert sorted(suppressed) == sorted(
            [("email", email_of[b].lower(), "complaint"), ("email", email_of[c].lower(), "hard_bounce")]
        )  # not the soft bounce

        # The changed rows went to campaign.analytics, with the new counters (CampaignAnalytics v2).
        published = [
            get_codec().decode(r.value(), "CampaignAnalytics")
            for r in consume_to_end(settings.kafka.bootstrap_servers, settings.kafka.topic("campaign.analytics"))
        ]
        latest_totals = [p for p in published if p["campaign_id"] == campaign_id and p["window_start"] is None][-1]
        assert (
            latest_totals["delivered"],
            latest_totals["read"],
            latest_totals["bounced"],
            latest_totals["complained"],
        ) == totals[1:]

        # Replay the whole topic (every record produced again) and a duplicate batch: nothing changes.
        topic = settings.kafka.topic(RECEIPTS)
        records = _records(settings)
        replay = KafkaProducer(settings.kafka)
        for record in records:
            replay.produce(topic, record.key(), record.value())
        replay.flush()
        replay.close()
        received = stage.received
        _drain(stage, lambda: stage.received >= received + len(records))
        assert _state(settings, campaign_id) == state  # not even updated_at moved
    finally:
        stage.close()

    # Suppression is honoured by the sender's claim (RESOLVE_SQL) and by the page the benchmark's baselines read
    # (PAGE_SQL).
    segment = _query(settings, "SELECT segment_id FROM campaign_segments WHERE campaign_id = %s", campaign_id)[0][0]
    conn = psycopg2.connect(settings.database.dsn())
    try:
        with conn.cursor() as cur:
            page = audience.fetch_page(cur, uuid.UUID(campaign_id), [segment], "email", 0, 100)
            reasons = {r.customer_id: r.skip_reason for r in page}
            resolved = audience.resolve(cur, "email", [(campaign_id, rid) for rid in members])
            sms_page = audience.fetch_page(cur, uuid.UUID(campaign_id), [segment], "sms", 0, 100)
    finally:
        conn.close()
    assert reasons[b] == reasons[c] == "suppressed" and reasons[d] is None and reasons[a] is None
    assert resolved[(campaign_id, c)].skip_reason == "suppressed" and resolved[(campaign_id, a)].skip_reason is None
    assert {r.customer_id: r.skip_reason for r in sms_page}[c] is None  # suppressed on email only


def test_unknown_provider_ids_are_dropped_after_the_hold_and_counted(settings, service, audience_fixture):
    ensure_topics(settings)
    settings = settings.model_copy(update={"receipts": settings.receipts.model_copy(update={"unknown_hold_s": 1.0})})
    stop_reply = Receipt(receipt_id("sms", "inbound", "SM9"), "sms", ReceiptStatus.STOP, None, T0, "+15551230000")
    # Records that would fail their batch on every redelivery (written by something other than the receiver) are
    # skipped as undecodable, and the partition goes on: garbage, an unknown channel, an over-long address.
    poison = [
        Receipt("p1", "fax", ReceiptStatus.STOP, None, T0, "+15551230001"),
        Receipt("p2", "sms", ReceiptStatus.STOP, None, T0, "+1" + "5" * 400),
    ]
    _produce(settings, [*poison, Receipt("x1", "sms", ReceiptStatus.DELIVERED, "SM-nobody", T0), stop_reply])
    garbage = KafkaProducer(settings.kafka)
    garbage.produce(settings.kafka.topic(RECEIPTS), "k", b"\x00not avro")
    garbage.flush()
    garbage.close()
    from campaigns.metrics import PipelineMetrics

    metrics = PipelineMetrics(settings)
    stage = ReceiptsStage(settings, KafkaProducer(settings.kafka), metrics=metrics)
    try:
        _drain(stage, lambda: stage.unmatched == 1 and stage.undecodable == 3)
        assert stage.held == 0
    finally:
        stage.close()
    rendered = metrics.render().decode()
    assert 'campaigns_receipts_total{channel="sms",result="unmatched"} 1.0' in rendered
    assert 'campaigns_receipts_total{channel="sms",result="suppressed"} 1.0' in rendered
    assert 'campaigns_receipts_total{channel="sms",result="held"} 0.0' not in rendered
    assert _query(settings, "SELECT channel_kind, address, reason FROM suppressions") == [
        ("sms", "+15551230000", "stop_reply")
    ]


def test_a_faust_analytics_resum_keeps_the_receipt_counts(settings, service, audience_fixture):
    """The opt-in Faust analytics re-sums a campaign_analytics row from its parts: the receipts' own part
    (source_partition -1) keeps their counts in the sum; complained, which no part re-sums, is left alone."""
    from campaigns.core.tally import empty_part
    from sinks import analytics as analytics_sink
    from sinks import receipts as receipts_sink

    campaign_id, _members = _campaign_with_sent_rows(settings, service, audience_fixture, "email", 1)
    now = datetime.now(UTC)
    conn = psycopg2.connect(settings.database.dsn())
    try:
        with conn.cursor() as cur:
            receipts_sink.add_counts(
                cur, [(campaign_id, None, None, {"delivered": 2, "read": 1, "complained": 1})], now
            )
        conn.commit()
        part = empty_part()
        part.update(sent=5, src=10)
        with conn.cursor() as cur:
            rows = analytics_sink.write_parts(cur, [(campaign_id, None, None, 0, part)], now)
        conn.commit()
    finally:
        conn.close()
    assert [(r["sent"], r["delivered"], r["read"], r["complained"]) for r in rows] == [(5, 2, 1, 1)]
    assert _query(
        settings, "SELECT sent, delivered, read, complained FROM campaign_analytics WHERE campaign_id = %s", campaign_id
    ) == [(5, 2, 1, 1)]
