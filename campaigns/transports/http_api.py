"""HTTP transports: the WhatsApp Cloud API and a Twilio-style SMS API, each on one pooled HTTP client.

Three interchangeable client backends (``ProviderSettings.http_client``):

* ``"http1"`` (default): this project's own keep-alive HTTP/1.1 client (``http1.py``), which does only what
  these calls need: 0.05 CPU s per 1,000 requests against aiohttp's 0.10-0.12 (``python -m bench.http_client``);
* ``"aiohttp"``: measured 5-15x less client CPU per request than httpx on this project's machines, and it
  stays flat as the pool grows (httpcore's pool scans every connection, with a ``poll()`` per connection, on
  each request: ~6 ms CPU per request at 100 connections);
* ``"httpx"``: ``httpx.AsyncClient``; also used whenever a test hands in an httpx ``client_transport``
  (e.g. ``httpx.MockTransport``) to exercise the transports without a network.

Failure reasons a caller can rely on (``TransientDeliveryError.reason``), the same for every backend:

* ``connect_error``, ``connect_timeout``, ``pool_timeout`` -- the request never reached the provider, a
  retry cannot cause a duplicate;
* ``timeout``, ``connection_error`` -- the request may have reached the provider: a retry may duplicate
  the message unless the provider honours our idempotency key (the SMS API does, via
  ``Idempotency-Key``; the WhatsApp Cloud API has no idempotency key, ``biz_opaque_callback_data`` only
  lets webhooks and the simulator log correlate the message with our id);
* ``server_error: <status>``, ``temporary: <code>``, ``throttled`` -- the provider answered.

Credentials live in the client's default headers only; they never reach an exception text, a repr or
a log line written here.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Mapping
from typing import Any, Protocol

import aiohttp
import httpx
import yarl

from campaigns.errors import TransientDeliveryError
from campaigns.settings import ProviderSettings

from .base import OutgoingMessage, SendReceipt
from .classify import http_response_error
from .http1 import Http1Poster

log = logging.getLogger(__name__)

_USER_AGENT = "campaigns-sender/0.1"
_JSON = "application/json"
_FORM = "application/x-www-form-urlencoded"
_NO_HEADERS: Mapping[str, str] = {}
# One encoder for every payload: ``json.dumps`` with options builds a new JSONEncoder on each call.
_JSON_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)

# ``application/x-www-form-urlencoded`` byte by byte, exactly as ``urllib.parse.urlencode`` (``quote_plus``, no
# safe characters): unreserved ASCII kept, space -> ``+``, every other UTF-8 byte -> ``%XX``. One
# ``str.translate`` over the UTF-8 bytes (read as Latin-1) costs a fifth of urlencode's per-character quoting,
# which was a tenth of the SMS transport's client CPU per request.
_FORM_BYTES = [f"%{byte:02X}" for byte in range(256)]
for _byte in b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-~":
    _FORM_BYTES[_byte] = chr(_byte)
_FORM_BYTES[ord(" ")] = "+"


def form_quote(value: str) -> str:
    """``value`` as a form field name or value; equal to ``urllib.parse.quote_plus(value, safe="")``."""
    return value.encode().decode("latin-1").translate(_FORM_BYTES)


class _Poster(Protocol):
    """POSTs bytes to one URL; network failures come out as TransientDeliveryError."""

    async def post(
        self, content: bytes, headers: Mapping[str, str]
    ) -> tuple[int, bytes, Mapping[str, str]]: ...

    async def aclose(self) -> None: ...


class _HttpxPoster:
    def __init__(
        self,
        url: str,
        default_headers: Mapping[str, str],
        timeout_s: float,
        max_connections: int,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._url = url
        self._client = httpx.AsyncClient(
            headers=dict(default_headers),
            timeout=httpx.Timeout(timeout_s),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            transport=transport,
            follow_redirects=False,
        )

    async def post(self, content: bytes, headers: Mapping[str, str]) -> tuple[int, bytes, Mapping[str, str]]:
        try:
            response = await self._client.post(self._url, content=content, headers=headers)
        except httpx.ConnectTimeout as exc:
            raise TransientDeliveryError("connect_timeout") from exc
        except httpx.PoolTimeout as exc:
            raise TransientDeliveryError("pool_timeout") from exc
        except httpx.TimeoutException as exc:
            raise TransientDeliveryError("timeout") from exc
        except httpx.ConnectError as exc:
            raise TransientDeliveryError("connect_error") from exc
        except httpx.TransportError as exc:  # ReadError, WriteError, RemoteProtocolError, ...
            raise TransientDeliveryError("connection_error") from exc
        return response.status_code, response.content, response.headers

    async def aclose(self) -> None:
        await self._client.aclose()


class _AiohttpPoster:
    """aiohttp's session must be created inside the running loop, so it is opened on first use."""

    def __init__(
        self, url: str, default_headers: Mapping[str, str], timeout_s: float, max_connections: int
    ) -> None:
        self._url = yarl.URL(url)  # parsed once: aiohttp parses a str URL again on every request
        self._default_headers = dict(default_headers)
        # ``connect`` bounds the wait for a pooled connection plus connecting (nothing sent yet);
        # ``sock_read`` bounds the wait for the answer (the request may have been delivered).
        self._timeout = aiohttp.ClientTimeout(total=None, connect=timeout_s, sock_read=timeout_s)
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    def _open(self) -> aiohttp.ClientSession:
        if self._closed:
            raise RuntimeError("transport is closed")
        self._session = aiohttp.ClientSession(
            headers=self._default_headers,
            timeout=self._timeout,
            connector=aiohttp.TCPConnector(limit=self._max_connections, limit_per_host=0),
            raise_for_status=False,
            auto_decompress=True,  # free unless the answer is compressed; an API may compress its errors
            # The provider APIs authenticate by header and set no cookies we must send back; the real jar
            # filters its (empty) contents for every request.
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        return self._session

    async def post(self, content: bytes, headers: Mapping[str, str]) -> tuple[int, bytes, Mapping[str, str]]:
        session = self._session or self._open()
        try:
            async with session.post(
                self._url, data=content, headers=headers, allow_redirects=False
            ) as response:
                body = await response.read()
                return response.status, body, response.headers
        except aiohttp.ConnectionTimeoutError as exc:
            raise TransientDeliveryError("connect_timeout") from exc
        except TimeoutError as exc:  # SocketTimeoutError and plain timeouts: the request may have landed
            raise TransientDeliveryError("timeout") from exc
        except aiohttp.ClientConnectorError as exc:
            raise TransientDeliveryError("connect_error") from exc
        except (aiohttp.ClientError, OSError) as exc:  # disconnects, resets, payload errors
            raise TransientDeliveryError("connection_error") from exc

    async def aclose(self) -> None:
        self._closed = True
        if self._session is not None:
            await self._session.close()
            self._session = None


def cloud_api_language(locale: str) -> str:
    """The WhatsApp Cloud API language code for a project locale: ``en-US`` -> ``en_US``, ``en`` -> ``en``."""
    return locale.replace("-", "_")


def _decode_json(content: bytes) -> Any:
    if not content:
        return None
    try:
        return json.loads(content)
    except ValueError:  # includes UnicodeDecodeError
        return None


class _HttpTransport:
    """Posts one message per call and classifies the answer."""

    channel: str = ""
    honours_deadline = False  # httpx and aiohttp: the sender cuts their calls itself

    def __init__(
        self,
        *,
        url: str,
        auth_header: str,
        content_type: str,
        settings: ProviderSettings,
        client_transport: httpx.AsyncBaseTransport | None,
    ) -> None:
        self._url = url
        self.concurrency = settings.max_connections  # one exchange at a time per pooled connection
        # Every request of a transport has the same content type: sent with the fixed headers, formatted once.
        headers = {"Authorization": auth_header, "User-Agent": _USER_AGENT, "Content-Type": content_type}
        self._poster: _Poster
        if client_transport is not None or settings.http_client == "httpx":
            self.backend = "httpx"
            self._poster = _HttpxPoster(
                url, headers, settings.timeout_s, settings.max_connections, transport=client_transport
            )
        elif settings.http_client == "http1":
            self.backend = "http1"
            self._poster = Http1Poster(url, headers, settings.timeout_s, settings.max_connections)
            self.honours_deadline = True  # the Transport port: each call ends by the deadline it is given
        else:
            self.backend = "aiohttp"
            self._poster = _AiohttpPoster(url, headers, settings.timeout_s, settings.max_connections)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(url={self._url!r}, backend={self.backend!r})"

    async def _post_and_check(
        self, message: OutgoingMessage, content: bytes, headers: Mapping[str, str], deadline: float | None
    ) -> Any:
        if deadline is None:
            status, raw, response_headers = await self._poster.post(content, headers)
        else:  # only when honours_deadline: the http1 poster
            assert isinstance(self._poster, Http1Poster)
            status, raw, response_headers = await self._poster.post(content, headers, deadline)
        body = _decode_json(raw)
        error = http_response_error(self.channel, status, body, response_headers)
        if error is not None:
            log.debug("%s send of %s failed: HTTP %s, %s", self.channel, message.message_id, status, error)
            raise error
        return body

    async def aclose(self) -> None:
        await self._poster.aclose()


class WhatsAppTransport(_HttpTransport):
    """WhatsApp Cloud API: ``POST {base}/{version}/{phone_number_id}/messages`` with a bearer token.

    Sends a template message when ``template_name`` is set (language from the locale, ``en-US`` ->
    ``en_US``; ``template_parameters`` become the body component's text parameters), else a text message.
    Our ``message_id`` travels as ``biz_opaque_callback_data`` so delivery webhooks (and the simulator's
    log) can be matched to it; the Cloud API does not de-duplicate on it.
    """

    channel = "whatsapp"

    def __init__(
        self, settings: ProviderSettings, *, client_transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        base = settings.whatsapp_base_url.rstrip("/")
        super().__init__(
            url=f"{base}/{settings.whatsapp_api_version}/{settings.whatsapp_phone_number_id}/messages",
            auth_header=f"Bearer {settings.whatsapp_token.get_secret_value()}",
            content_type=_JSON,
            settings=settings,
            client_transport=client_transport,
        )

    @staticmethod
    def payload(message: OutgoingMessage) -> dict[str, Any]:
        """The Cloud API request body for ``message`` (pure; exposed for tests)."""
        payload: dict[str, Any] = {
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": message.address,
            "biz_opaque_callback_data": message.message_id,
        }
        if message.template_name:
            template: dict[str, Any] = {
                "name": message.template_name,
                "language": {"code": cloud_api_language(message.locale)},
            }
            components = [
                {"type": kind, "parameters": [{"type": "text", "text": p} for p in parameters]}
                for kind, parameters in (("header", message.header_parameters), ("body", message.template_parameters))
                if parameters
            ]
            if components:
                template["components"] = components
            payload["type"] = "template"
            payload["template"] = template
        else:
            payload["type"] = "text"
            payload["text"] = {"preview_url": False, "body": message.body}
        return payload

    async def send(self, message: OutgoingMessage, deadline: float | None = None) -> SendReceipt:
        content = _JSON_ENCODER.encode(self.payload(message)).encode()
        body = await self._post_and_check(message, content, _NO_HEADERS, deadline)
        provider_id = None
        if isinstance(body, dict):
            messages = body.get("messages")
            if isinstance(messages, list) and messages and isinstance(messages[0], dict):
                provider_id = messages[0].get("id")
        return SendReceipt(provider_message_id=provider_id if isinstance(provider_id, str) else None)


class SmsTransport(_HttpTransport):
    """Twilio-style SMS: form POST to ``{base}/2010-04-01/Accounts/{sid}/Messages.json``, basic auth.

    Sends ``Idempotency-Key: <message_id>`` so a provider that honours it (the simulator does) answers a
    repeated request with the first message's sid instead of sending a second SMS.
    """

    channel = "sms"

    def __init__(
        self, settings: ProviderSettings, *, client_transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        base = settings.sms_base_url.rstrip("/")
        sid = settings.sms_account_sid
        basic = base64.b64encode(f"{sid}:{settings.sms_auth_token.get_secret_value()}".encode()).decode()
        super().__init__(
            url=f"{base}/2010-04-01/Accounts/{sid}/Messages.json",
            auth_header=f"Basic {basic}",
            content_type=_FORM,
            settings=settings,
            client_transport=client_transport,
        )
        self._from_field = f"From={form_quote(settings.sms_from)}"

    async def send(self, message: OutgoingMessage, deadline: float | None = None) -> SendReceipt:
        content = f"To={form_quote(message.address)}&{self._from_field}&Body={form_quote(message.body)}".encode()
        body = await self._post_and_check(message, content, {"Idempotency-Key": message.message_id}, deadline)
        sid = body.get("sid") if isinstance(body, dict) else None
        return SendReceipt(provider_message_id=sid if isinstance(sid, str) else None)
