"""The sender's logic on fakes: ``MemoryConsumer`` (its topics), ``MemoryProducer``, ``MemorySenderStore`` (the
recipient log, campaigns, audience and channel breaker) and ``FakeTransport``. The same stage on the real services:
tests/e2e (senders, retry tiers, breakers, leases, crash consistency, forged messages) and tests/faults."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from confluent_kafka import TopicPartition

from campaigns.codec import get_codec
from campaigns.core.content import unrendered_fields
from campaigns.core.states import CampaignAction
from campaigns.errors import PermanentDeliveryError, ProviderAccountError, TransientDeliveryError
from campaigns.settings import Settings
from campaigns.topics import MESSAGES_DLQ, OUTCOMES, messages_topic, retry_topic
from campaigns.transports.fake import FakeTransport
from producers.kafka import MemoryProducer
from sinks.audience import Recipient
from sinks.memory import MemorySenderCampaign, MemorySenderStore
from streams.memory import MemoryConsumer
from streams.sender import LEASE_MARGIN_S, RATE_HEADROOM, ChannelSender
from tests.helpers import RecordingFinisher

CODEC = get_codec()


@dataclass
class Harness:
    settings: Settings
    sender: ChannelSender
    consumer: MemoryConsumer
    producer: MemoryProducer
    store: MemorySenderStore
    transport: FakeTransport
    finisher: RecordingFinisher
    campaign: str

    def member(self, recipient: int, skip_reason: str | None = None) -> str:
        address = f"+1555000{recipient:04d}"
        self.store.audience[(self.campaign, recipient)] = Recipient(
            recipient, "en", address, skip_reason, {"first_name": f"Name{recipient}"})
        return address

    def message(self, recipient: int, *, campaign: str | None = None, channel: str = "sms",
                message_id: str | None = None) -> dict[str, Any]:
        record = {
            "message_id": message_id or str(uuid.uuid5(uuid.NAMESPACE_OID, f"{campaign or self.campaign}:{recipient}")),
            "campaign_id": campaign or self.campaign, "recipient_id": str(recipient), "channel": channel,
            "address": "+10000000000", "subject": None, "body": "forged body", "template_name": None, "locale": "en",
            "attempt": 0, "not_before": 0, "created_at": datetime.now(UTC), "last_error": None,
            "template_parameters": [],
        }
        self.consumer.add(self.topic(messages_topic("sms")), CODEC.encode("RecipientMessage", record),
                          key=str(recipient).encode())
        return record

    def topic(self, name: str) -> str:
        return self.settings.kafka.topic(name)

    def records(self, name: str, schema: str) -> list[dict[str, Any]]:
        topic = self.topic(name)
        return [CODEC.decode(v, schema) for t, _, v, _ in self.producer.records if t == topic]

    def outcomes(self) -> list[tuple[str, str, int]]:
        return [(o["recipient_id"], o["status"], o["attempt"]) for o in self.records(OUTCOMES, "DeliveryOutcome")]

    def status(self, recipient: int) -> str:
        return self.store.log[(self.campaign, recipient)].status


def build_harness(settings: Settings | None = None, transport: FakeTransport | None = None,
                  consumer: MemoryConsumer | None = None, **sender_options: Any) -> Harness:
    settings = settings or Settings()
    campaign = str(uuid.uuid4())
    store = MemorySenderStore(campaigns={campaign: MemorySenderCampaign()})
    consumer, producer, transport = consumer or MemoryConsumer(), MemoryProducer(), transport or FakeTransport("sms")
    finisher = RecordingFinisher()
    # Every topic the sender subscribes to exists (one partition each), as ensure_topics makes them.
    for name in (messages_topic("sms"), *(retry_topic("sms", n) for n in range(1, settings.sender.retry_tiers + 1))):
        consumer.log.setdefault((settings.kafka.topic(name), 0), [])
    sender = ChannelSender(settings, "sms", transport, producer, campaigns=finisher, consumer=consumer, store=store,
                           **sender_options)
    return Harness(settings, sender, consumer, producer, store, transport, finisher, campaign)


@pytest.fixture
def h() -> Harness:
    harness = build_harness()
    yield harness
    harness.sender.close()


def test_each_message_is_sent_once_rendered_from_the_store_and_a_redelivery_re_emits_its_outcome(h: Harness) -> None:
    addresses = [h.member(1), h.member(2)]
    first = h.message(1)
    h.message(2)
    h.sender.start()
    assert h.sender.run_once() == 2
    assert sorted(m.address for m in h.transport.sent) == addresses  # the audience's address, not the record's
    assert {m.body for m in h.transport.sent} == {"Hello Name1", "Hello Name2"}  # the campaign's content, rendered
    assert h.status(1) == h.status(2) == "sent"
    sent_at = datetime(2026, 11, 30, 6, 0, 1, 250000, tzinfo=UTC)
    h.store.log[(h.campaign, 1)].updated_at = sent_at  # when the row became sent
    h.message(1, message_id=first["message_id"])  # redelivered after a crash, or replayed
    h.sender.run_once()
    assert len(h.transport.sent) == 2 and h.sender.stats.duplicates_dropped == 1
    assert h.outcomes() == [("1", "SENT", 1), ("2", "SENT", 1), ("1", "SENT", 1)]  # the same outcome again
    # It occurred when the row became sent, not now: the analytics judge its lateness by that.
    assert h.records(OUTCOMES, "DeliveryOutcome")[-1]["occurred_at"] == sent_at
    assert h.consumer.committed == {(h.topic(messages_topic("sms")), 0): 3}


def test_messages_of_a_cancelled_campaign_are_cancelled_and_never_sent(h: Harness) -> None:
    h.member(1)
    h.store.campaigns[h.campaign].status = "cancelled"
    h.message(1)
    h.sender.start()
    h.sender.run_once()
    assert h.transport.sent == [] and "claim" not in h.store.calls
    assert h.status(1) == "cancelled" and h.outcomes() == [("1", "CANCELLED", 0)]


def test_bad_records_are_dead_lettered_and_the_partition_flows(h: Harness) -> None:
    h.member(2)
    h.consumer.add(h.topic(messages_topic("sms")), b"\x00 not avro")
    h.message(1, channel="email")  # on the sms topic
    h.message(9)  # not in the campaign's audience (forged, or replayed into it)
    h.message(1, campaign=str(uuid.uuid4()))  # no such campaign
    h.message(2)
    h.sender.start()
    h.sender.run_once()
    reasons = [d["reason"] for d in h.records(MESSAGES_DLQ, "DeadLetter")]
    assert sorted(reasons) == ["not_in_audience", "undecodable", "unknown_campaign", "wrong_channel"]
    assert [m.address for m in h.transport.sent] == ["+15550000002"]
    assert (h.campaign, 9) not in h.store.log  # an outsider is never logged
    assert h.consumer.committed == {(h.topic(messages_topic("sms")), 0): 5}


def test_a_transient_failure_is_retried_through_a_tier_and_a_permanent_one_fails(h: Harness) -> None:
    h.transport.fail_address(h.member(1), TransientDeliveryError("timeout"))
    h.transport.fail_address(h.member(2), PermanentDeliveryError("invalid_number"))
    h.message(1)
    h.message(2)
    h.sender.start()
    h.sender.run_once()
    assert h.status(1) == "retrying" and h.store.log[(h.campaign, 1)].attempts == 1
    assert h.status(2) == "failed"
    [retry] = h.records(retry_topic("sms", 1), "RecipientMessage")
    assert retry["recipient_id"] == "1" and retry["attempt"] == 1 and retry["last_error"] == "timeout"
    # Neither what was sent nor what the consumed record carried (an older expansion's content): the retry's
    # claim renders the stored content again.
    assert {k: retry[k] for k in unrendered_fields()} == unrendered_fields()
    assert [d["reason"] for d in h.records(MESSAGES_DLQ, "DeadLetter")] == ["permanent_failure"]
    assert sorted(h.outcomes()) == [("1", "RETRYING", 1), ("2", "FAILED", 1)]


def test_a_recipient_that_may_no_longer_be_sent_to_is_skipped(h: Harness) -> None:
    h.member(1, skip_reason="opted_out")
    h.message(1)
    h.sender.start()
    h.sender.run_once()
    assert h.transport.sent == [] and h.status(1) == "skipped"
    assert h.outcomes() == [("1", "SKIPPED", 0)]


def test_the_campaigns_failure_breaker_fails_it_once_the_sample_is_reached(h: Harness) -> None:
    campaign = h.store.campaigns[h.campaign]
    campaign.failure_threshold, campaign.failure_min_sample = 0.5, 2
    for r in (1, 2):
        h.transport.fail_address(h.member(r), PermanentDeliveryError("invalid_number"))
        h.message(r)
    h.sender.start()
    h.sender.run_once()
    assert h.finisher.finished == [(h.campaign, CampaignAction.FAIL)]


def test_an_account_error_opens_the_channel_breaker_and_fails_nobody(h: Harness) -> None:
    h.transport.fail_address(h.member(1), ProviderAccountError("account_disabled"))
    h.message(1)
    h.sender.start()
    h.sender.run_once()
    assert h.store.channels["sms"].paused_reason is not None
    assert h.status(1) == "retrying" and h.store.log[(h.campaign, 1)].attempts == 0  # held, not an attempt
    assert h.outcomes() == []  # nothing failed


@pytest.mark.parametrize(("max_in_flight", "concurrency", "peak"), [(4, None, 4), (4, 2, 2), (2, 8, 2)])
def test_calls_in_flight_never_exceed_max_in_flight_nor_the_transports_concurrency(
        max_in_flight: int, concurrency: int | None, peak: int) -> None:
    settings = Settings.model_validate({"sender": {"max_in_flight": max_in_flight}})
    h = build_harness(settings, FakeTransport("sms", latency_s=0.01, concurrency=concurrency))
    sender, transport = h.sender, h.transport
    try:
        for recipient in range(1, 11):
            h.member(recipient)
            h.message(recipient)
        sender.start()
        assert sender.run_once() == 10
        assert len(transport.sent) == 10
        assert transport.peak_in_flight == peak  # every call sleeps, so the lanes overlap as far as allowed
    finally:
        sender.close()


class _DeadlineTransport(FakeTransport):
    """A fake that says it ends each call by the deadline it is given (the Transport port), and records them."""

    honours_deadline = True

    def __init__(self) -> None:
        super().__init__("sms")
        self.deadlines: list[tuple[float, float]] = []  # (deadline, the loop's time at the call)

    async def send(self, message: Any, deadline: float | None = None) -> Any:
        assert deadline is not None, "a transport that honours deadlines is always given one"
        self.deadlines.append((deadline, asyncio.get_running_loop().time()))
        return await super().send(message)


def test_a_transport_that_honours_deadlines_is_given_the_calls_lease_bounded_budget() -> None:
    transport = _DeadlineTransport()
    h = build_harness(transport=transport)
    try:
        for recipient in (1, 2, 3):
            h.member(recipient)
            h.message(recipient)
        h.sender.start()
        assert h.sender.run_once() == 3
        assert len(transport.sent) == 3
        budget = min(h.settings.providers.timeout_s, h.settings.sender.claim_lease_s - LEASE_MARGIN_S)
        assert all(0 < deadline - called_at <= budget for deadline, called_at in transport.deadlines)
    finally:
        h.sender.close()


class RevokingConsumer(MemoryConsumer):
    """Revokes every partition inside its next ``consume`` call, as a rebalance does (the callback runs in it)."""

    revoke_next = False

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[Any]:
        if self.revoke_next:
            self.revoke_next = False
            revoked = [TopicPartition(t, p) for (t, p) in sorted(self.log)]
            self.subscribed = []
            assert self.on_revoke is not None
            self.on_revoke(self, revoked)
        return super().consume(num_messages, timeout)


def test_a_revoke_during_a_consume_drops_the_carry_of_the_revoked_partitions_and_the_rate_share() -> None:
    """Records waiting for tokens (the carry) of a partition revoked while the sender consumed are not sent by it:
    the partition's new owner sends them. With no partition left, the consumer has no rate at all."""
    now = [1000.0]
    settings = Settings()
    settings = settings.model_copy(update={"kafka": settings.kafka.model_copy(update={"partitions": 1})})
    h = build_harness(settings, consumer=RevokingConsumer(), rate_per_s=50.0, burst=2, clock=lambda: now[0])
    for recipient in range(1, 11):
        h.member(recipient)
        h.message(recipient)
    h.sender.start()
    now[0] += 0.1  # a full burst: two records go, the other eight wait in the carry
    assert h.sender.run_once() == 2
    assert len(h.transport.sent) == 2
    h.consumer.revoke_next = True
    now[0] += 10.0
    h.sender.run_once()
    now[0] += 10.0
    h.sender.run_once()
    assert len(h.transport.sent) == 2
    assert h.sender.rate_limiter_state().share == 0.0


class TimedTransport(FakeTransport):
    """A fake that notes when each call started (time.monotonic())."""

    def __init__(self) -> None:
        super().__init__("sms")
        self.started: list[float] = []

    async def send(self, message: Any) -> Any:
        self.started.append(time.monotonic())
        return await super().send(message)


def test_calls_of_a_campaign_resumed_between_take_and_claim_still_wait_for_their_tokens() -> None:
    """``_take`` hands over a paused campaign's records without tokens (they make no call); if the campaign is
    resumed before they are claimed, each call still waits for its own token: 10 calls at 20/s with a burst of 1
    start over at least 9 token intervals, whatever the machine's speed (it can only make them later)."""
    settings = Settings()
    settings = settings.model_copy(update={"kafka": settings.kafka.model_copy(update={"partitions": 1})})
    transport = TimedTransport()
    h = build_harness(settings, transport, rate_per_s=20.0 / RATE_HEADROOM, burst=1)
    for recipient in range(1, 11):
        h.member(recipient)
        h.message(recipient)
    campaign = h.store.campaigns[h.campaign]
    campaign.status = "paused"
    reads = h.store.campaign_states

    def resumed_after_the_first_read(ids: Any) -> Any:
        rows = reads(ids)
        campaign.status = "active"  # resumed while the batch is on its way to its claim
        return rows

    h.store.campaign_states = resumed_after_the_first_read  # type: ignore[method-assign]
    h.sender.start()
    assert h.sender.run_once() == 10
    assert len(transport.sent) == 10
    assert transport.started[-1] - transport.started[0] >= 9 / 20.0 - 1e-3
