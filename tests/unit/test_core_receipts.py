"""The receipt merge rule and the provider payload parsers (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from campaigns.core.receipts import (
    STATUS_ORDER,
    Receipt,
    ReceiptState,
    ReceiptStatus,
    fold,
    from_email,
    from_twilio,
    from_whatsapp,
    is_stop,
    merge,
    normalize_address,
    suppression_reason,
    transitions,
)

T0 = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)


def receipt(status: ReceiptStatus, at: datetime = T0, bounce: str | None = None) -> Receipt:
    return Receipt(f"r-{status}-{at.timestamp()}", "whatsapp", status, "wamid.1", at, bounce_type=bounce)


def test_read_before_delivered_sets_both_and_never_regresses() -> None:
    state = merge(ReceiptState(), receipt(ReceiptStatus.READ, T0 + timedelta(seconds=5)))
    assert state.delivered_at == state.read_at == T0 + timedelta(seconds=5)
    assert state.provider_status == "read"
    later = merge(state, receipt(ReceiptStatus.DELIVERED, T0 + timedelta(seconds=2)))
    assert later.delivered_at == T0 + timedelta(seconds=2)  # the earlier reported delivery time
    assert later.read_at == T0 + timedelta(seconds=5) and later.provider_status == "read"  # status not regressed
    assert merge(later, receipt(ReceiptStatus.SENT)).provider_status == "read"


def test_transitions_are_only_null_to_set() -> None:
    before = ReceiptState(delivered_at=T0)
    after = merge(before, receipt(ReceiptStatus.READ, T0 + timedelta(seconds=1)))
    assert transitions(before, after) == [("read", T0 + timedelta(seconds=1))]
    assert transitions(after, merge(after, receipt(ReceiptStatus.READ, T0))) == []  # earlier time: no new count
    assert transitions(ReceiptState(), merge(ReceiptState(), receipt(ReceiptStatus.READ))) == [
        ("delivered", T0),
        ("read", T0),
    ]


def test_stop_changes_no_row() -> None:
    assert merge(ReceiptState(), receipt(ReceiptStatus.STOP)) == ReceiptState()


def test_status_order_is_total() -> None:
    assert len(set(STATUS_ORDER.values())) == len(STATUS_ORDER)
    assert {s.value.lower() for s in ReceiptStatus} - {"stop"} == set(STATUS_ORDER)


receipts_strategy = st.lists(
    st.builds(
        receipt,
        st.sampled_from([s for s in ReceiptStatus]),
        st.integers(min_value=0, max_value=600).map(lambda s: T0 + timedelta(seconds=s)),
    ),
    max_size=8,
)


@given(receipts_strategy, st.randoms(use_true_random=False), st.lists(st.integers(0, 7), max_size=8))
def test_any_order_and_duplication_gives_the_same_row(receipts: list[Receipt], rng, dup: list[int]) -> None:
    """The final row depends only on the set of receipts; the counters added over the whole sequence are one
    per timestamp set, whatever the order and however many duplicates."""
    expected = fold(ReceiptState(), receipts)
    shuffled = [*receipts, *(receipts[i % len(receipts)] for i in dup if receipts)]
    rng.shuffle(shuffled)
    state, counted = ReceiptState(), []
    for r in shuffled:
        after = merge(state, r)
        counted += [name for name, _ in transitions(state, after)]
        state = after
    assert state == expected
    assert sorted(counted) == sorted(name for name, _ in transitions(ReceiptState(), expected))
    assert len(counted) == len(set(counted))  # each counter at most once per row
    if state.read_at is not None:  # a read implies a delivery, no later than the read
        assert state.delivered_at is not None and state.delivered_at <= state.read_at


@given(receipts_strategy, receipts_strategy)
def test_merge_is_associative_over_batches(first: list[Receipt], second: list[Receipt]) -> None:
    """Applying a batch in two transactions (a crash between them, a redelivery) ends where one would."""
    assert fold(fold(ReceiptState(), first), second) == fold(ReceiptState(), first + second)


# --- parsers -----------------------------------------------------------------------------------------------


def whatsapp_payload(statuses: list[dict], messages: list[dict] | None = None) -> dict:
    """The shape of a WhatsApp Cloud API webhook notification."""
    value: dict = {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550000000", "phone_number_id": "100000000000001"},
    }
    if statuses:
        value["statuses"] = statuses
    if messages:
        value["messages"] = messages
    return {
        "object": "whatsapp_business_account",
        "entry": [{"id": "WABA_ID", "changes": [{"value": value, "field": "messages"}]}],
    }


def test_whatsapp_statuses_and_stop() -> None:
    payload = whatsapp_payload(
        [
            {
                "id": "wamid.A",
                "status": "delivered",
                "timestamp": "1764493200",
                "recipient_id": "15551234567",
                "conversation": {"id": "c"},
                "pricing": {"billable": True},
            },
            {
                "id": "wamid.B",
                "status": "failed",
                "timestamp": "1764493201",
                "recipient_id": "15551234568",
                "errors": [{"code": 131026, "title": "Message undeliverable"}],
            },
            {
                "id": "wamid.C",
                "status": "failed",
                "timestamp": "1764493202",
                "recipient_id": "15551234569",
                "errors": [{"code": 131047, "title": "Re-engagement message"}],
            },
            {"id": "wamid.D", "status": "deleted", "timestamp": "1764493202"},
        ],
        [
            {
                "from": "15551234567",
                "id": "wamid.IN",
                "timestamp": "1764493300",
                "type": "text",
                "text": {"body": " baja "},
            }
        ],
    )
    got = from_whatsapp(payload, T0)
    assert [(r.status, r.provider_message_id, r.address) for r in got] == [
        (ReceiptStatus.DELIVERED, "wamid.A", "+15551234567"),
        (ReceiptStatus.BOUNCED, "wamid.B", "+15551234568"),
        (ReceiptStatus.FAILED, "wamid.C", "+15551234569"),
        (ReceiptStatus.STOP, None, "+15551234567"),
    ]
    assert got[0].occurred_at == datetime.fromtimestamp(1764493200, UTC)
    assert suppression_reason(got[1]) == "hard_bounce" and suppression_reason(got[2]) is None
    assert from_whatsapp(payload, T0)[0].receipt_id == got[0].receipt_id  # a provider retry: same id
    assert from_whatsapp({"object": "x", "entry": "nonsense"}, T0) == []


def test_twilio_status_callbacks_and_inbound_stop() -> None:
    base = {"AccountSid": "AC1", "From": "+15550000000", "To": "+15551234567", "ApiVersion": "2010-04-01"}
    for status, expected in [
        ("queued", ReceiptStatus.QUEUED),
        ("sent", ReceiptStatus.SENT),
        ("delivered", ReceiptStatus.DELIVERED),
        ("read", ReceiptStatus.READ),
        ("undelivered", ReceiptStatus.UNDELIVERED),
        ("failed", ReceiptStatus.FAILED),
    ]:
        (r,) = from_twilio({**base, "MessageSid": "SM1", "SmsSid": "SM1", "MessageStatus": status}, T0)
        assert (r.status, r.provider_message_id, r.address) == (expected, "SM1", "+15551234567")
    (hard,) = from_twilio({**base, "MessageSid": "SM1", "MessageStatus": "undelivered", "ErrorCode": "30005"}, T0)
    assert hard.status is ReceiptStatus.BOUNCED and suppression_reason(hard) == "hard_bounce"
    inbound = {"MessageSid": "SM9", "From": "+15551234567", "To": "+15550000000", "Body": "Stop", "NumMedia": "0"}
    (stop,) = from_twilio(inbound, T0)
    assert (stop.status, stop.address, stop.provider_message_id) == (ReceiptStatus.STOP, "+15551234567", None)
    assert from_twilio({**inbound, "Body": "please stop sending"}, T0) == []


def test_email_notifications() -> None:
    (b,) = from_email(
        {
            "notification_id": "n1",
            "type": "bounce",
            "bounce_type": "permanent",
            "message_id": "Q1",
            "recipient": "Ana@Example.com",
            "occurred_at": 1764493200,
        },
        T0,
    )
    assert (b.status, b.bounce_type, b.address, suppression_reason(b)) == (
        ReceiptStatus.BOUNCED,
        "hard",
        "ana@example.com",
        "hard_bounce",
    )
    (soft,) = from_email(
        {"notification_id": "n2", "type": "bounce", "bounce_type": "transient", "message_id": "Q1"}, T0
    )
    assert soft.bounce_type == "soft" and suppression_reason(soft) is None and soft.occurred_at == T0
    (c,) = from_email({"notification_id": "n3", "type": "complaint", "message_id": "Q1"}, T0)
    assert suppression_reason(c) == "complaint"
    for bad in (
        [],
        {"type": "open", "notification_id": "n", "message_id": "m"},
        {"type": "bounce"},
        {"type": "delivery", "notification_id": "n", "message_id": "m", "occurred_at": "soon"},
    ):
        try:
            from_email(bad, T0)
        except ValueError:
            continue
        raise AssertionError(f"accepted {bad!r}")


def test_stop_keywords_and_addresses() -> None:
    for body in ("STOP", "stop", " Unsubscribe ", "STOPALL", "cancel", "END", "quit", "Baja", "BAJA."):
        assert is_stop(body), body
    for body in ("stopping", "don't stop", "", None, "hola"):
        assert not is_stop(body), body
    assert normalize_address("whatsapp", "15551234567") == "+15551234567"
    assert normalize_address("sms", "+1 (555) 123-4567") == "+15551234567"
    assert normalize_address("email", " Ana@Example.COM ") == "ana@example.com"
