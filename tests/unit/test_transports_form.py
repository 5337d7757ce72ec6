"""The SMS transport's form encoding is byte for byte ``urllib.parse.urlencode``'s -- no network."""

from __future__ import annotations

from urllib.parse import parse_qsl, quote_plus, urlencode

import httpx
from hypothesis import given
from hypothesis import strategies as st

from campaigns.settings import ProviderSettings
from campaigns.transports import OutgoingMessage, SmsTransport
from campaigns.transports.http_api import form_quote


@given(st.text())
def test_form_quote_is_quote_plus_without_safe_characters(value: str) -> None:
    assert form_quote(value) == quote_plus(value, safe="")


def test_form_quote_on_what_sms_bodies_hold() -> None:
    for value in ("", "+15551234567", "Hi Ana, 20% off & free P&P: https://x.example/a?b=c#d", "Ünïcödé ✓ 🎉\n\t~._-"):
        assert form_quote(value) == quote_plus(value, safe="")


async def test_sms_request_body_is_what_urlencode_made() -> None:
    bodies: list[bytes] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(request.content)
        return httpx.Response(201, json={"sid": "SM1"})

    settings = ProviderSettings(sms_from="+1 (555) 000-0000")
    transport = SmsTransport(settings, client_transport=httpx.MockTransport(handler))
    body = "Olá Zoë, 50% off + free shipping = today only! 🎉"
    message = OutgoingMessage(
        message_id="m-1",
        campaign_id="c",
        recipient_id="1",
        channel="sms",
        address="+15551234567",
        body=body,
        locale="pt-BR",
    )
    receipt = await transport.send(message)
    await transport.aclose()
    assert receipt.provider_message_id == "SM1"
    assert bodies == [urlencode({"To": "+15551234567", "From": "+1 (555) 000-0000", "Body": body}).encode()]
    assert dict(parse_qsl(bodies[0].decode())) == {"To": "+15551234567", "From": "+1 (555) 000-0000", "Body": body}
