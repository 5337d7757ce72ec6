"""Bad input into running stages: the SENDER and ANALYTICS stages keep running, in-process, whatever bytes
arrive on their topics.

``tests/unit/test_codec.py`` already shows the codec turns any bytes into a value or a ``SchemaError``.
Here hypothesis drives the stages themselves on real Kafka and PostgreSQL: random bytes, bytes behind a
valid schema header, and records that decode but carry hostile values (ids that are not ids, unknown
campaigns, over-long strings, extreme timestamps and numbers). After each example the stage must have
consumed and committed past every record, with no stage crash; then a valid message still goes through.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

from confluent_kafka import Producer
from hypothesis import HealthCheck, example, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from campaigns.codec import get_codec
from campaigns.core.ids import message_id
from campaigns.transports.fake import FakeTransport
from streams.worker import Worker
from tests.e2e.test_expansion import eligible
from tests.faults.conftest import create_campaign, set_channel
from tests.faults.history import analytics_consumed, committed_to_end, log_status_counts
from tests.helpers import wait_for

EXAMPLES = hsettings(max_examples=25, deadline=None, derandomize=True,
                     suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
TS_MIN, TS_MAX = -62_135_596_800_000, 253_402_300_799_999  # what timestamp-millis can carry (years 1-9999)

text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=300)
ids = st.one_of(text, st.uuids().map(str), st.integers(-(2**70), 2**70).map(str))


def _feed(settings: Any, topic: str, values: list[bytes | None]) -> None:
    producer = Producer(settings.kafka.as_librdkafka())
    for i, value in enumerate(values):
        producer.produce(topic, value=value, key=str(i).encode())
    assert producer.flush(30) == 0


def _assert_consumed(worker: Worker, consumed: Callable[[], bool], what: str) -> None:
    """``consumed()`` came true (the stage committed what it was fed), and the worker's stages are all still
    running."""
    wait_for(lambda: worker.errors or consumed(), timeout=30, interval=0.1, what=what)
    assert worker.errors == [], f"the stage crashed on bad input: {worker.errors[-1]!r}"
    assert all(t.is_alive() for t in worker.threads)


# --- the sender -------------------------------------------------------------------------------------------


def test_sender_keeps_running_on_random_input(settings, service, sessions, audience):
    channel = "sms"
    set_channel(sessions, channel, 1000, 100)
    plan, segments = audience(50)
    campaign_id = create_campaign(service, channel, segments[:1])
    assert [str(c) for c in service.activate_due()] == [campaign_id]  # active; nothing expands it here
    codec = get_codec()
    header = codec.encode("RecipientMessage", {
        "message_id": str(uuid.uuid4()), "campaign_id": campaign_id, "recipient_id": "1", "channel": channel,
        "address": "+15550001111", "body": "x", "created_at": 0})[:10]
    messages = st.fixed_dictionaries({
        "message_id": st.one_of(ids, st.just("")), "campaign_id": st.one_of(ids, st.just(campaign_id)),
        "recipient_id": st.one_of(ids, st.integers(1, 2**63 - 1).map(str)),
        "channel": st.sampled_from(["whatsapp", "sms", "email"]), "address": text, "body": text,
        "subject": st.none() | text, "template_name": st.none() | text, "locale": text,
        "attempt": st.integers(-(2**31), 2**31 - 1), "not_before": st.integers(TS_MIN, TS_MAX),
        "created_at": st.integers(TS_MIN, TS_MAX), "last_error": st.none() | text,
    }).map(lambda r: codec.encode("RecipientMessage", r))
    values = st.one_of(st.binary(max_size=3000), st.binary(max_size=200).map(lambda b: header + b), messages,
                       st.none())

    transport = FakeTransport(channel)
    worker = Worker(settings, stages=("senders",), channels=(channel,), transports={channel: transport},
                    rate_limits=False)
    topic = settings.kafka.topic(f"campaign.messages.{channel}")
    group = settings.kafka.topic(f"sender-{channel}")

    def message(**changes: Any) -> bytes:
        return codec.encode("RecipientMessage", {
            "message_id": str(uuid.uuid4()), "campaign_id": campaign_id, "recipient_id": "1", "channel": channel,
            "address": "+15550001111", "body": "x", "created_at": 0, **changes})

    with worker:
        @EXAMPLES
        @given(st.lists(values, min_size=1, max_size=15))
        @example([message(recipient_id="not-a-number")])  # the claim keys the log by a bigint recipient
        @example([message(recipient_id="9" * 25)])  # past bigint
        @example([message(recipient_id="9" * 5000)])  # past Python's int() digit limit
        @example([message(message_id="nope")])  # the claim stores a uuid message id
        def feed(batch: list[bytes | None]) -> None:
            _feed(settings, topic, batch)
            _assert_consumed(worker, lambda: committed_to_end(settings, group, topic),
                             f"{group} committed to the end of {topic}")

        feed()
        # And a valid message after all that still goes out.
        # (one of the campaign's audience who may be sent to: the sender checks both in PostgreSQL)
        sendable, _ = eligible(plan, [c for c in plan.ids() if 0 in plan.segment_of(c)], channel)
        recipient = str(min(sendable))
        good = {"message_id": message_id(campaign_id, recipient), "campaign_id": campaign_id,
                "recipient_id": recipient, "channel": channel, "address": "+15550001234", "body": "hello",
                "created_at": int(time.time() * 1000)}
        _feed(settings, topic, [codec.encode("RecipientMessage", good)])
        wait_for(lambda: any(m.message_id == good["message_id"] for m in transport.sent), timeout=30,
                 what="the valid message sent after the garbage")
    assert worker.errors == []
    assert log_status_counts(settings.database.dsn(), campaign_id).get("sent", 0) >= 1


# --- analytics --------------------------------------------------------------------------------------------


def test_analytics_keeps_running_on_random_input(settings, service, sessions, audience, monkeypatch):
    # Faust commits the acknowledged offsets on a timer (broker_commit_interval, 2.8 s by default), and every
    # example waits for that commit: the Faust child reads BROKER_COMMIT_INTERVAL from the environment it inherits.
    # A shorter interval changes when the commit comes, not what it covers (offsets are acknowledged only after
    # the agent's body ran), so each example still proves the stage consumed and committed past every record.
    monkeypatch.setenv("BROKER_COMMIT_INTERVAL", "0.2")
    _plan, segments = audience(20)
    campaign_id = create_campaign(service, "email", segments[:1])
    codec = get_codec()
    outcomes = st.fixed_dictionaries({
        "outcome_id": st.one_of(text, st.uuids().map(str)), "message_id": ids,
        "campaign_id": st.one_of(ids, st.just(campaign_id)), "recipient_id": ids, "channel": text,
        "status": st.sampled_from(["SENT", "FAILED", "RETRYING", "SKIPPED", "CANCELLED", "DELIVERED", "READ",
                                   "CLICKED", "BOUNCED"]),
        "attempt": st.integers(-(2**31), 2**31 - 1),
        "latency_ms": st.none() | st.floats(allow_nan=True, allow_infinity=True),
        "failure_reason": st.none() | text, "provider_message_id": st.none() | text,
        "occurred_at": st.integers(TS_MIN, TS_MAX),
    }).map(lambda r: codec.encode("DeliveryOutcome", r))
    values = st.one_of(st.binary(max_size=3000), outcomes, st.none())

    worker = Worker(settings, stages=("tally",), channels=())  # the Faust analytics, a child process
    topic = settings.kafka.topic("delivery.outcomes")

    def outcome(**changes: Any) -> bytes:
        return codec.encode("DeliveryOutcome", {
            "outcome_id": str(uuid.uuid4()), "message_id": str(uuid.uuid4()), "campaign_id": campaign_id,
            "recipient_id": "1", "channel": "email", "status": "SENT", "attempt": 1, "occurred_at": 0, **changes})

    with worker:
        @EXAMPLES
        @given(st.lists(values, min_size=1, max_size=15))
        @example([outcome(occurred_at=TS_MAX)])  # the last minute of year 9999: its window end overflows
        @example([outcome(campaign_id=str(uuid.uuid4()))])  # a campaign that does not exist (foreign key)
        @example([outcome(outcome_id="x" * 129)])  # longer than an outcome id may be (OUTCOME_ID_MAX)
        @example([outcome(status="DELIVERED", attempt=-5)])  # a receipt counts `attempt`: never negative
        def feed(batch: list[bytes | None]) -> None:
            _feed(settings, topic, batch)
            _assert_consumed(worker, lambda: analytics_consumed(settings),
                             "the analytics' forwarder and the Faust app committed to the end")

        feed()
    assert worker.errors == []
