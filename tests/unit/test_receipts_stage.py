"""The receipts stage's logic on fakes: ``MemoryConsumer`` (``delivery.receipts``), ``MemoryProducer`` and
``MemoryReceiptsStore``, with a clock the test moves. The same stage on the real services:
tests/integration/test_receipts.py and tests/entrypoints/test_webhooks.py."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import pytest

from campaigns.codec import get_codec
from campaigns.core.receipts import Receipt, ReceiptStatus, receipt_id
from campaigns.settings import Settings
from campaigns.topics import ANALYTICS, RECEIPTS
from producers.kafka import MemoryProducer
from sinks.memory import MemoryReceiptsStore
from streams.memory import MemoryConsumer
from streams.receipts import ReceiptsStage

T0 = datetime(2026, 11, 30, 12, 0, 7, tzinfo=UTC)
CAMPAIGN = "6f1c2b8e-3d4a-4f5b-9c6d-7e8f9a0b1c2d"
CODEC = get_codec()


@dataclass
class Harness:
    stage: ReceiptsStage
    consumer: MemoryConsumer
    producer: MemoryProducer
    store: MemoryReceiptsStore
    topic: str
    now: list[float]

    def sent(self, recipient: int, provider_id: str, address: str) -> None:
        self.store.rows[(provider_id, "email")] = [CAMPAIGN, recipient, provider_id, "email", None, None, None, None,
                                                   None, address]

    def receipt(self, provider_id: str | None, status: ReceiptStatus, *, bounce: str | None = None,
                address: str | None = None, channel: str = "email") -> None:
        r = Receipt(receipt_id(channel, str(provider_id), status.value), channel, status, provider_id, T0, address,
                    bounce)
        value = CODEC.encode("DeliveryReceipt", r.as_record(T0))
        self.consumer.add(self.topic, value, key=(provider_id or "").encode())

    def totals(self) -> dict[str, int]:
        return self.store.analytics.get((CAMPAIGN, None), {})


@pytest.fixture
def h() -> Harness:
    settings = Settings()
    now = [1_000.0]
    consumer, producer, store = MemoryConsumer(), MemoryProducer(), MemoryReceiptsStore()
    topic = settings.kafka.topic(RECEIPTS)
    consumer.log[(topic, 0)] = []
    stage = ReceiptsStage(settings, producer, clock=lambda: now[0], consumer=consumer, store=store)
    return Harness(stage, consumer, producer, store, topic, now)


def test_duplicate_and_out_of_order_receipts_count_once(h: Harness) -> None:
    h.sent(1, "p1", "Ana@Example.com")
    h.receipt("p1", ReceiptStatus.READ)  # read before delivered: read implies delivered
    h.receipt("p1", ReceiptStatus.DELIVERED)
    h.receipt("p1", ReceiptStatus.READ)  # the provider's retry of the same callback
    h.stage.run_once()
    assert h.totals()["delivered"] == 1 and h.totals()["read"] == 1
    h.receipt("p1", ReceiptStatus.DELIVERED)  # replayed later
    h.stage.run_once()
    assert h.totals()["delivered"] == 1 and h.stage.counted == 2
    published = [CODEC.decode(v, "CampaignAnalytics") for t, _, v, _ in h.producer.records
                 if t == Settings().kafka.topic(ANALYTICS)]
    assert published and published[-1]["delivered"] == 1
    assert h.consumer.committed == {(h.topic, 0): 4}


def test_hard_bounces_complaints_and_stop_replies_suppress_the_address(h: Harness) -> None:
    h.sent(1, "p1", "Ana@Example.com")
    h.sent(2, "p2", "bo@example.com")
    h.sent(3, "p3", "cy@example.com")
    h.receipt("p1", ReceiptStatus.BOUNCED, bounce="hard")
    h.receipt("p2", ReceiptStatus.BOUNCED, bounce="soft")  # a soft bounce suppresses nothing
    h.receipt("p3", ReceiptStatus.COMPLAINED)
    h.receipt(None, ReceiptStatus.STOP, address="+1 (555) 000-0001", channel="sms")
    h.stage.run_once()
    assert h.store.suppressions == {("email", "ana@example.com"): "hard_bounce",
                                    ("email", "cy@example.com"): "complaint", ("sms", "+15550000001"): "stop_reply"}
    assert h.totals()["bounced"] == 2 and h.totals()["complained"] == 1


def test_a_receipt_before_its_send_is_held_its_offset_uncommitted_then_applied(h: Harness) -> None:
    h.receipt("p9", ReceiptStatus.DELIVERED)  # the callback outran the sender's record
    h.stage.run_once()
    assert h.stage.held == 1 and h.consumer.committed == {(h.topic, 0): 0}  # a crash re-delivers it
    h.sent(9, "p9", "late@example.com")
    h.now[0] += 1.0  # past its first back-off (0.5 s)
    h.stage.run_once()
    assert h.stage.held == 0 and h.totals()["delivered"] == 1
    assert h.consumer.committed == {(h.topic, 0): 1}


def test_an_unknown_provider_id_is_dropped_after_the_hold_and_bad_records_are_skipped(h: Harness) -> None:
    h.consumer.add(h.topic, b"\x00 not avro")
    h.receipt("nobody", ReceiptStatus.DELIVERED)
    h.stage.run_once()
    assert h.stage.undecodable == 1 and h.stage.held == 1
    h.now[0] += Settings().receipts.unknown_hold_s + 1
    h.stage.run_once()
    assert h.stage.unmatched == 1 and h.stage.held == 0
    assert h.consumer.committed == {(h.topic, 0): 2}


def test_a_failed_transaction_commits_no_offset_and_the_batch_is_redone(h: Harness) -> None:
    h.sent(1, "p1", "ana@example.com")
    h.receipt("p1", ReceiptStatus.DELIVERED)
    h.store.fail_next = ConnectionError("PostgreSQL went away")
    with pytest.raises(ConnectionError):
        h.stage.run_once()
    assert h.consumer.committed == {} and h.totals() == {}
    h.stage.run_once()
    assert h.totals()["delivered"] == 1 and h.consumer.committed == {(h.topic, 0): 1}
