"""Classification of provider answers, message building and the fake transport -- no network."""

from __future__ import annotations

import traceback
from email import message_from_bytes
from email import policy as email_policy

import httpx
import pytest
from pydantic import SecretStr

from campaigns.errors import (
    DeliveryError,
    PermanentDeliveryError,
    ProviderAccountError,
    ThrottledError,
    TransientDeliveryError,
)
from campaigns.settings import ProviderSettings
from campaigns.transports import (
    FakeTransport,
    OutgoingMessage,
    SmsTransport,
    SmtpTransport,
    Transport,
    WhatsAppTransport,
    build_email,
    build_transports,
    classify_http_response,
    classify_smtp_reply,
    http_response_error,
    parse_retry_after,
    smtp_reply_error,
)
from campaigns.transports.classify import ACCOUNT_REASONS

SECRET = "tok-3f9c-very-secret"


def wa_error(code: int | str, message: str = "boom") -> dict[str, object]:
    return {"error": {"message": message, "type": "OAuthException", "code": code, "fbtrace_id": "x"}}


def sms_error(code: int, status: int = 400) -> dict[str, object]:
    return {"code": code, "message": "boom", "more_info": "https://example.invalid", "status": status}


def outgoing(channel: str = "sms", address: str = "+15551234567", **kw: object) -> OutgoingMessage:
    values: dict[str, object] = {
        "message_id": "msg-1",
        "campaign_id": "camp-1",
        "recipient_id": "rcpt-1",
        "channel": channel,
        "address": address,
        "body": "Hello",
        "locale": "en-US",
    }
    values.update(kw)
    return OutgoingMessage(**values)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- HTTP: success


@pytest.mark.parametrize("channel", ["whatsapp", "sms"])
@pytest.mark.parametrize("status", [200, 201, 202])
def test_2xx_is_delivered(channel: str, status: int) -> None:
    assert classify_http_response(channel, status, {"messages": [{"id": "wamid.1"}]}, {}) is None
    assert http_response_error(channel, status, None) is None


# ----------------------------------------------------------------------------- HTTP: throttling


@pytest.mark.parametrize(
    ("channel", "status", "body"),
    [
        ("whatsapp", 429, wa_error(130429)),
        ("whatsapp", 400, wa_error(130429)),  # Meta answers throttling with 400 + code
        ("whatsapp", 400, wa_error(131048)),  # spam rate limit
        ("whatsapp", 400, wa_error(131056)),  # pair rate limit
        ("whatsapp", 400, wa_error(80007)),
        ("whatsapp", 400, wa_error(4)),
        ("whatsapp", 400, wa_error("130429")),  # code as a string
        ("whatsapp", 429, None),  # no body at all
        ("sms", 429, sms_error(20429, 429)),
        ("sms", 400, sms_error(14107)),
        ("sms", 429, None),
    ],
)
def test_throttled(channel: str, status: int, body: object) -> None:
    with pytest.raises(ThrottledError) as info:
        classify_http_response(channel, status, body, {})
    assert info.value.reason == "throttled"
    assert info.value.retry_after is None
    assert isinstance(info.value, TransientDeliveryError)  # callers that only know Transient still retry


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "7"}, 7.0),
        ({"retry-after": "2.5"}, 2.5),  # plain dict, other case
        (httpx.Headers({"RETRY-AFTER": "3"}), 3.0),
        ({"Retry-After": "Wed, 21 Oct 2015 07:28:10 GMT"}, 10.0),  # HTTP-date, 10 s after `now`
        ({"Retry-After": "soon"}, None),
        ({"Retry-After": "-4"}, 0.0),
        ({}, None),
    ],
)
def test_throttled_retry_after(headers: dict[str, str], expected: float | None) -> None:
    now = 1445412480.0  # 2015-10-21 07:28:00 UTC
    with pytest.raises(ThrottledError) as info:
        classify_http_response("sms", 429, sms_error(20429, 429), headers, now=now)
    assert info.value.retry_after == expected


def test_parse_retry_after_http_date_needs_now() -> None:
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412500.0) == 0.0  # in the past
    assert parse_retry_after(None) is None
    assert parse_retry_after("  ") is None
    assert parse_retry_after("nan") is None


# ----------------------------------------------------------------------------- HTTP: transient


@pytest.mark.parametrize(
    ("channel", "status", "body", "reason"),
    [
        ("whatsapp", 500, wa_error(131000), "server_error: 500"),
        ("whatsapp", 503, wa_error(131016), "server_error: 503"),
        ("whatsapp", 502, None, "server_error: 502"),
        ("whatsapp", 400, wa_error(131000), "temporary: 131000"),  # "something went wrong"
        ("whatsapp", 400, wa_error(2), "temporary: 2"),
        ("whatsapp", 400, wa_error(133004), "temporary: 133004"),
        ("sms", 500, sms_error(20500, 500), "server_error: 500"),
        ("sms", 503, "<html>Bad gateway</html>", "server_error: 503"),
        ("sms", 400, sms_error(20503), "temporary: 20503"),
        ("sms", 408, None, "temporary: 408"),
        ("sms", 409, None, "temporary: 409"),  # idempotent request still in flight
        ("sms", 425, None, "temporary: 425"),
    ],
)
def test_transient(channel: str, status: int, body: object, reason: str) -> None:
    with pytest.raises(TransientDeliveryError) as info:
        classify_http_response(channel, status, body, {})
    assert not isinstance(info.value, ThrottledError)
    assert info.value.reason == reason


def test_5xx_keeps_retry_after() -> None:
    error = http_response_error("whatsapp", 503, None, {"Retry-After": "30"})
    assert isinstance(error, TransientDeliveryError)
    assert error.retry_after == 30.0


# ----------------------------------------------------------------------------- HTTP: permanent


@pytest.mark.parametrize(
    ("channel", "status", "body", "reason"),
    [
        ("whatsapp", 400, wa_error(131026), "invalid_number"),
        ("whatsapp", 400, wa_error(100), "invalid_parameter"),
        ("whatsapp", 401, wa_error(190), "unauthorized"),
        ("whatsapp", 401, None, "unauthorized"),
        ("whatsapp", 403, wa_error(10), "permission_denied"),
        ("whatsapp", 403, None, "forbidden"),
        ("whatsapp", 400, wa_error(131047), "outside_customer_window"),
        ("whatsapp", 400, wa_error(131050), "opted_out"),
        ("whatsapp", 404, wa_error(132001), "template_not_found"),
        ("whatsapp", 400, wa_error(131051), "unsupported_message_type"),
        ("whatsapp", 400, wa_error(999999), "rejected: 999999"),
        ("whatsapp", 404, None, "rejected: 404"),
        ("whatsapp", 400, {"error": "not a dict"}, "rejected: 400"),
        ("whatsapp", 400, [1, 2], "rejected: 400"),
        ("whatsapp", 400, wa_error(True), "rejected: 400"),  # a bool is not a code
        ("whatsapp", 302, None, "unexpected_status: 302"),
        ("sms", 400, sms_error(21211), "invalid_number"),
        ("sms", 400, sms_error(21614), "not_mobile"),
        ("sms", 400, sms_error(21610), "opted_out"),
        ("sms", 400, sms_error(21408), "region_not_enabled"),
        ("sms", 401, sms_error(20003, 401), "unauthorized"),
        ("sms", 404, sms_error(20404, 404), "not_found"),
        ("sms", 400, sms_error(21999), "rejected: 21999"),
        ("sms", 413, None, "rejected: 413"),
        ("email", 400, None, "rejected: 400"),  # unknown channel: status rules only
    ],
)
def test_permanent(channel: str, status: int, body: object, reason: str) -> None:
    with pytest.raises(PermanentDeliveryError) as info:
        classify_http_response(channel, status, body, {})
    assert info.value.reason == reason
    assert str(info.value) == reason
    # Our account, not the recipient: the channel pauses instead of failing recipients.
    assert isinstance(info.value, ProviderAccountError) == (reason in ACCOUNT_REASONS)


def test_reason_never_echoes_provider_text() -> None:
    """Provider messages may echo what we sent (numbers, tokens); reasons are built from codes only."""
    body = wa_error(131026, message=f"token {SECRET} is for +15551234567")
    error = http_response_error("whatsapp", 400, body, {})
    assert error is not None
    assert SECRET not in str(error) and "+1555" not in str(error)


# ----------------------------------------------------------------------------- SMTP replies


@pytest.mark.parametrize(
    ("code", "message", "kind", "reason"),
    [
        (451, "4.7.0 Rate limit exceeded, try again later", ThrottledError, "throttled"),
        (421, "4.7.0 Try again later, closing connection", ThrottledError, "throttled"),
        (450, "4.7.1 Greylisted", ThrottledError, "throttled"),
        (451, "4.3.0 Temporary local problem", TransientDeliveryError, "temporary: 451 4.3.0"),
        (421, "Service not available", TransientDeliveryError, "temporary: 421"),
        (452, "4.2.2 Mailbox full", TransientDeliveryError, "temporary: 452 4.2.2"),
        (550, "5.1.1 <x@example.com>: Recipient address rejected", PermanentDeliveryError, "invalid_address"),
        (553, "5.1.3 Bad recipient address syntax", PermanentDeliveryError, "invalid_address"),
        (552, "5.2.2 Mailbox full", PermanentDeliveryError, "mailbox_full"),
        (535, "5.7.8 Authentication credentials invalid", ProviderAccountError, "unauthorized"),
        (530, "Authentication required", ProviderAccountError, "unauthorized"),
        (554, "5.7.1 Message rejected as spam", PermanentDeliveryError, "rejected: 554 5.7.1"),
        (550, "Requested action not taken", PermanentDeliveryError, "rejected: 550"),
    ],
)
def test_smtp_reply(code: int, message: str, kind: type[DeliveryError], reason: str) -> None:
    with pytest.raises(kind) as info:
        classify_smtp_reply(code, message)
    assert type(info.value) is kind
    assert info.value.reason == reason  # type: ignore[attr-defined]


@pytest.mark.parametrize("code", [220, 250, 251, 354])
def test_smtp_positive_replies(code: int) -> None:
    assert smtp_reply_error(code, "2.0.0 Ok") is None
    classify_smtp_reply(code)


# ----------------------------------------------------------------------------- messages and payloads


def test_outgoing_message_is_frozen_keyword_only_and_checks_channel() -> None:
    message = outgoing()
    with pytest.raises(AttributeError):
        message.body = "changed"  # type: ignore[misc]
    with pytest.raises(ValueError, match="unknown channel 'fax'"):
        outgoing(channel="fax")
    with pytest.raises(TypeError):
        OutgoingMessage("m", "c", "r", "sms", "+1555", "b", locale="en")  # type: ignore[misc]


def test_whatsapp_text_payload() -> None:
    payload = WhatsAppTransport.payload(outgoing("whatsapp", body="Hi there"))
    assert payload == {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": "+15551234567",
        "biz_opaque_callback_data": "msg-1",
        "type": "text",
        "text": {"preview_url": False, "body": "Hi there"},
    }


def test_whatsapp_template_payload() -> None:
    message = outgoing(
        "whatsapp", template_name="spring_sale", template_parameters=("Ann", "20%"), locale="pt-BR"
    )
    payload = WhatsAppTransport.payload(message)
    assert payload["type"] == "template"
    assert payload["biz_opaque_callback_data"] == "msg-1"
    assert payload["template"] == {
        "name": "spring_sale",
        "language": {"code": "pt_BR"},
        "components": [
            {"type": "body", "parameters": [{"type": "text", "text": "Ann"}, {"type": "text", "text": "20%"}]}
        ],
    }
    with_header = WhatsAppTransport.payload(outgoing("whatsapp", template_name="t", locale="en",
                                                     template_parameters=("Ann",), header_parameters=("SILVA",)))
    assert with_header["template"]["components"] == [
        {"type": "header", "parameters": [{"type": "text", "text": "SILVA"}]},
        {"type": "body", "parameters": [{"type": "text", "text": "Ann"}]},
    ]
    bare = WhatsAppTransport.payload(outgoing("whatsapp", template_name="hello_world", locale="en"))
    assert bare["template"] == {"name": "hello_world", "language": {"code": "en"}}


def test_build_email_headers_and_body() -> None:
    raw = build_email(
        outgoing("email", address="ann@example.org", subject="Spring ☀ sale", body="Hello Ann\nBye"),
        sender="campaigns@example.com",
        domain="example.com",
    )
    assert b"\r\n" in raw  # SMTP line endings
    parsed = message_from_bytes(raw, policy=email_policy.default)
    assert parsed["Message-ID"] == "<msg-1@example.com>"
    assert parsed["X-Campaign-Message-Id"] == "msg-1"
    assert parsed["X-Campaign-Id"] == "camp-1"
    assert parsed["To"] == "ann@example.org"
    assert parsed["Subject"] == "Spring ☀ sale"
    assert parsed.get_content_type() == "text/plain"
    assert parsed.get_content().replace("\r\n", "\n").rstrip("\n") == "Hello Ann\nBye"


def test_build_email_html_body() -> None:
    raw = build_email(
        outgoing("email", address="a@example.org", body="<p>Hello <b>Ann</b></p>"),
        sender="c@example.com",
        domain="example.com",
    )
    assert message_from_bytes(raw, policy=email_policy.default).get_content_type() == "text/html"


def test_build_email_multipart_alternative_with_one_click_unsubscribe() -> None:
    raw = build_email(
        outgoing(
            "email", address="a@example.org", subject="Hi Ann", body="<p>Hello <b>Ann</b> =3D &amp; co</p>",
            text_body="Hello Ann =3D & co\n--=_campaigns_msg-1 is just text",
            list_unsubscribe=("https://u.example/unsubscribe?token=u1.5.email.x.y", "mailto:u@example.com?subject=x"),
        ),
        sender="c@example.com",
        domain="example.com",
    )
    parsed = message_from_bytes(raw, policy=email_policy.default)
    assert parsed.get_content_type() == "multipart/alternative"
    parts = list(parsed.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "text/html"]
    text = parts[0].get_content().replace("\r\n", "\n").rstrip("\n")
    assert text == "Hello Ann =3D & co\n--=_campaigns_msg-1 is just text"
    assert parts[1].get_content().rstrip("\n") == "<p>Hello <b>Ann</b> =3D &amp; co</p>"
    assert parsed["List-Unsubscribe"] == (
        "<https://u.example/unsubscribe?token=u1.5.email.x.y>, <mailto:u@example.com?subject=x>"
    )
    assert parsed["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert not parsed.defects and all(not p.defects for p in parts)


def test_build_email_refuses_header_injection() -> None:
    with pytest.raises(PermanentDeliveryError, match="invalid_message"):
        build_email(
            outgoing("email", address="a@example.org", subject="Hi\r\nBcc: victim@example.org"),
            sender="c@example.com",
            domain="example.com",
        )


async def test_smtp_transport_refuses_bad_addresses_before_connecting() -> None:
    transport = SmtpTransport(ProviderSettings(smtp_port=1))  # nothing listens there; never reached
    for address in ["no-at-sign", "ünï@example.org", "a@example.org\r\nRCPT TO:<b@x>", "<a@example.org>"]:
        with pytest.raises(PermanentDeliveryError, match="invalid_address"):
            await transport.send(outgoing("email", address=address))
    await transport.aclose()


# ----------------------------------------------------------------------------- HTTP transports, no network


def settings_with_secrets() -> ProviderSettings:
    return ProviderSettings(
        whatsapp_token=SecretStr(SECRET),
        sms_auth_token=SecretStr(SECRET),
        smtp_username="mailer",
        smtp_password=SecretStr(SECRET),
    )


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (httpx.ConnectError("refused"), "connect_error"),
        (httpx.ConnectTimeout("slow"), "connect_timeout"),
        (httpx.PoolTimeout("busy"), "pool_timeout"),
        (httpx.ReadTimeout("slow"), "timeout"),
        (httpx.WriteTimeout("slow"), "timeout"),
        (httpx.RemoteProtocolError("closed"), "connection_error"),
        (httpx.ReadError("reset"), "connection_error"),
    ],
)
async def test_network_failures_are_transient(exc: Exception, reason: str) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    for cls in (WhatsAppTransport, SmsTransport):
        transport = cls(settings_with_secrets(), client_transport=httpx.MockTransport(handler))
        with pytest.raises(TransientDeliveryError) as info:
            await transport.send(outgoing(transport.channel))
        assert info.value.reason == reason
        assert not isinstance(info.value, ThrottledError)
        await transport.aclose()


async def test_http_transports_send_auth_idempotency_and_never_leak_the_token() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(401, json={"error": {"code": 190, "message": f"bad token {SECRET}"}})

    wa = WhatsAppTransport(settings_with_secrets(), client_transport=httpx.MockTransport(handler))
    sms = SmsTransport(settings_with_secrets(), client_transport=httpx.MockTransport(handler))
    errors = []
    for transport in (wa, sms):
        with pytest.raises(PermanentDeliveryError) as info:
            await transport.send(outgoing(transport.channel))
        errors.append(info.value)
        assert info.value.reason == "unauthorized"
    assert seen[0].headers["Authorization"] == f"Bearer {SECRET}"
    assert seen[0].url.path == "/whatsapp/v21.0/100000000000001/messages"
    assert seen[1].headers["Authorization"].startswith("Basic ")
    assert seen[1].headers["Idempotency-Key"] == "msg-1"
    assert seen[1].headers["Content-Type"] == "application/x-www-form-urlencoded"
    for text in [
        *(str(e) for e in errors),
        *(repr(e) for e in errors),
        *("".join(traceback.format_exception(e)) for e in errors),
        repr(wa),
        repr(sms),
        repr(SmtpTransport(settings_with_secrets())),
        repr(settings_with_secrets()),
    ]:
        assert SECRET not in text
    await wa.aclose()
    await sms.aclose()


async def test_build_transports_one_per_channel() -> None:
    transports = build_transports(ProviderSettings())
    assert set(transports) == {"whatsapp", "sms", "email"}
    for channel, transport in transports.items():
        assert transport.channel == channel
        assert isinstance(transport, Transport)
        await transport.aclose()


# ----------------------------------------------------------------------------- FakeTransport


async def test_fake_transport_records_and_fails_on_demand() -> None:
    fake = FakeTransport("sms")
    assert isinstance(fake, Transport)
    fake.fail_address("+15550000001", PermanentDeliveryError("invalid_number"))
    fake.fail_address("+15550000002", TransientDeliveryError("server_error: 503"), times=2)
    fake.fail_call(5, ThrottledError("throttled", retry_after=1.5))

    with pytest.raises(PermanentDeliveryError):
        await fake.send(outgoing(address="+15550000001"))  # call 1
    for _ in range(2):  # calls 2, 3
        with pytest.raises(TransientDeliveryError):
            await fake.send(outgoing(address="+15550000002"))
    receipt = await fake.send(outgoing(address="+15550000002"))  # call 4: recovered
    assert receipt.provider_message_id == "fake-sms-4"
    with pytest.raises(ThrottledError) as info:
        await fake.send(outgoing(message_id="m-5"))  # call 5
    assert info.value.retry_after == 1.5
    fake.fail_next(1, TransientDeliveryError("timeout"))
    with pytest.raises(TransientDeliveryError):
        await fake.send(outgoing(message_id="m-6"))
    await fake.send(outgoing(message_id="m-7"))

    assert len(fake.attempts) == 7
    assert [m.message_id for m in fake.sent] == ["msg-1", "m-7"]
    assert len(fake.sent_to("+15550000002")) == 1
    assert fake.duplicate_message_ids() == {}
    with pytest.raises(PermanentDeliveryError):  # still failing: no `times` means always
        await fake.send(outgoing(address="+15550000001"))
    await fake.send(outgoing(message_id="m-7"))
    assert fake.duplicate_message_ids() == {"m-7": 2}
    await fake.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        await fake.send(outgoing())


async def test_fake_transport_raises_fresh_copies() -> None:
    fake = FakeTransport("email")
    original = TransientDeliveryError("server_error: 500", retry_after=2.0)
    fake.fail_next(2, original)
    raised = []
    for _ in range(2):
        with pytest.raises(TransientDeliveryError) as info:
            await fake.send(outgoing("email", address="a@example.org"))
        raised.append(info.value)
    assert raised[0] is not raised[1] and raised[0] is not original
    assert raised[1].retry_after == 2.0 and raised[1].reason == "server_error: 500"
