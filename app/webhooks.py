"""The webhook receiver (``campaigns webhooks``): providers' delivery callbacks -> ``delivery.receipts``.

Routes (docs/webhooks.md):

* ``GET  /webhooks/whatsapp`` - Meta's subscription handshake (``hub.mode``, ``hub.verify_token``,
  ``hub.challenge``): the challenge echoed if the token matches, else 403.
* ``POST /webhooks/whatsapp`` - WhatsApp Cloud API notifications, ``X-Hub-Signature-256`` over the raw body.
* ``POST /webhooks/twilio``   - Twilio status callbacks and inbound messages, ``X-Twilio-Signature`` over the
  public URL and the sorted form parameters (auth token: ``providers.sms_auth_token``).
* ``POST /webhooks/email``    - email delivery/bounce/complaint notifications, this project's signed JSON.
* ``GET  /health``.

Guarantees: a request without its signature header gets 401, a wrong or stale signature 403 (a stale email
notification too), and in both cases nothing is produced. A verified request is answered 2xx only after its
receipts are acknowledged by the broker (flush), so a provider retries whatever was not stored (a retry has the
same receipt ids; the receipts stage applies them once). Broker trouble -> 503, the provider retries.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

from aiohttp import web

from campaigns.codec import get_codec
from campaigns.core import receipts as core
from campaigns.core.webhook_signatures import meta_handshake, verify_email, verify_meta, verify_twilio
from campaigns.errors import CampaignError
from campaigns.settings import Settings
from campaigns.topics import RECEIPTS
from producers.kafka import KafkaProducer, Publisher

log = logging.getLogger(__name__)

_TWIML_EMPTY = '<?xml version="1.0" encoding="UTF-8"?><Response></Response>'


class WebhookReceiver:
    """The aiohttp application and its counters (``stats``)."""

    def __init__(self, settings: Settings, producer: Publisher, clock: Callable[[], float] = time.time) -> None:
        self._settings = settings
        self._config = settings.webhooks
        self._producer = producer
        self._clock = clock
        self._codec = get_codec()
        self._topic = settings.kafka.topic(RECEIPTS)
        self._twilio_token = settings.providers.sms_auth_token.get_secret_value()
        self.stats = {"accepted": 0, "receipts": 0, "unsigned": 0, "forged": 0, "invalid": 0}

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self._config.max_body_bytes)
        app.add_routes(
            [
                web.get("/webhooks/whatsapp", self.whatsapp_handshake),
                web.post("/webhooks/whatsapp", self.whatsapp),
                web.post("/webhooks/twilio", self.twilio),
                web.post("/webhooks/email", self.email),
                web.get("/health", self.health),
            ]
        )
        return app

    def _base_url(self, request: web.Request) -> str:
        if self._config.public_base_url:
            return self._config.public_base_url.rstrip("/")
        return f"{request.scheme}://{request.host}"

    def _refuse(self, status: int, why: str, request: web.Request) -> web.Response:
        self.stats["unsigned" if status == 401 else "forged"] += 1
        log.warning("webhooks: %s %s refused (%d): %s", request.method, request.path, status, why)
        return web.json_response({"error": why}, status=status)

    async def _produce(self, receipts: list[core.Receipt]) -> None:
        received = datetime.fromtimestamp(self._clock(), UTC)
        for receipt in receipts:
            key = receipt.provider_message_id or receipt.address or receipt.receipt_id
            self._producer.produce(self._topic, key, self._codec.encode("DeliveryReceipt", receipt.as_record(received)))
        if receipts:
            await asyncio.to_thread(self._producer.flush)
        self.stats["accepted"] += 1
        self.stats["receipts"] += len(receipts)

    async def whatsapp_handshake(self, request: web.Request) -> web.Response:
        q = request.query
        challenge = meta_handshake(
            self._config.whatsapp_verify_token.get_secret_value(),
            q.get("hub.mode"),
            q.get("hub.verify_token"),
            q.get("hub.challenge"),
        )
        if challenge is None:
            return self._refuse(403, "verification token mismatch", request)
        return web.Response(text=challenge)

    async def whatsapp(self, request: web.Request) -> web.Response:
        body = await request.read()
        header = request.headers.get("X-Hub-Signature-256")
        if not header:
            return self._refuse(401, "X-Hub-Signature-256 missing", request)
        if not verify_meta(self._config.whatsapp_app_secret.get_secret_value(), body, header):
            return self._refuse(403, "X-Hub-Signature-256 does not match the body", request)
        try:
            payload = json.loads(body)
        except ValueError:
            self.stats["invalid"] += 1
            return web.json_response({"error": "body is not JSON"}, status=400)
        return await self._answer(core.from_whatsapp(payload, self._now()), web.Response(status=200))

    async def twilio(self, request: web.Request) -> web.Response:
        header = request.headers.get("X-Twilio-Signature")
        form = await request.post()
        if not header:
            return self._refuse(401, "X-Twilio-Signature missing", request)
        params = [(k, str(v)) for k, v in form.items()]
        url = self._base_url(request) + request.path_qs
        if not verify_twilio(self._twilio_token, url, params, header):
            return self._refuse(403, "X-Twilio-Signature does not match the URL and parameters", request)
        receipts = core.from_twilio({k: str(v) for k, v in form.items()}, self._now())
        return await self._answer(receipts, web.Response(text=_TWIML_EMPTY, content_type="text/xml"))

    async def email(self, request: web.Request) -> web.Response:
        body = await request.read()
        header = request.headers.get("X-Campaigns-Signature")
        timestamp = request.headers.get("X-Campaigns-Timestamp")
        if not header or not timestamp:
            return self._refuse(401, "X-Campaigns-Signature or X-Campaigns-Timestamp missing", request)
        if not verify_email(
            self._config.email_secret.get_secret_value(),
            body,
            timestamp,
            header,
            now_s=self._clock(),
            window_s=self._config.email_window_s,
        ):
            return self._refuse(403, "signature does not match, or the timestamp is outside the window", request)
        try:
            receipts = core.from_email(json.loads(body), self._now())
        except ValueError as exc:
            self.stats["invalid"] += 1
            return web.json_response({"error": str(exc)}, status=400)
        return await self._answer(receipts, web.Response(status=204))

    async def health(self, _request: web.Request) -> web.Response:
        return web.json_response({"ok": True, **self.stats})

    async def _answer(self, receipts: list[core.Receipt], ok: web.Response) -> web.Response:
        try:
            await self._produce(receipts)
        except (CampaignError, OSError) as exc:  # DeliveryFailed, broker unreachable: the provider retries
            log.error("webhooks: could not store %d receipts: %s", len(receipts), exc)
            return web.json_response({"error": "temporarily unavailable"}, status=503)
        return ok

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock(), UTC)


def serve(settings: Settings, host: str | None = None, port: int | None = None) -> int:
    """Run the receiver until SIGINT/SIGTERM (topics are created first)."""
    from producers.topics import ensure_topics

    ensure_topics(settings)
    producer = KafkaProducer(settings.kafka)
    receiver = WebhookReceiver(settings, producer)
    host = host or settings.webhooks.host
    port = settings.webhooks.port if port is None else port
    print(f"webhooks: listening on http://{host}:{port}/webhooks/{{whatsapp,twilio,email}}", flush=True)
    try:
        web.run_app(receiver.app(), host=host, port=port, print=None, access_log=None)
    finally:
        producer.close()
    return 0


class WebhookThread:
    """The receiver in a background thread with its own event loop (the demo, tests): ``with WebhookThread(settings)
    as hooks: hooks.url``. Binds ``settings.webhooks.host`` on a free port (``port=0``) unless one is given."""

    def __init__(self, settings: Settings, port: int = 0) -> None:
        self._settings = settings
        self._port = port
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._producer: KafkaProducer | None = None
        self.receiver: WebhookReceiver | None = None
        self.url = ""
        self._thread = threading.Thread(target=self._loop.run_forever, name="webhooks", daemon=True)

    def __enter__(self) -> WebhookThread:
        self._producer = KafkaProducer(self._settings.kafka)
        self.receiver = WebhookReceiver(self._settings, self._producer)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=30)
        return self

    async def _start(self) -> None:
        assert self.receiver is not None
        self._runner = web.AppRunner(self.receiver.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._settings.webhooks.host, self._port)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://{self._settings.webhooks.host}:{port}"

    def __exit__(self, *exc: object) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()
        if self._producer is not None:
            self._producer.close()
