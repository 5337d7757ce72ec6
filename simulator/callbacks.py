"""Delivery callbacks of the provider simulator: after accepting a message, the simulator reports what became of
it to the configured webhook URL, in each provider's own format and signed the way that provider signs.

* **WhatsApp**: ``POST <webhook_url>/webhooks/whatsapp``, a Cloud API notification (``object:
  whatsapp_business_account``, ``entry[].changes[].value.statuses[]`` with ``id``, ``status``, ``timestamp``,
  ``recipient_id``, and ``errors`` for a failure), ``X-Hub-Signature-256`` with the app secret.
* **SMS**: ``POST`` to the message's ``StatusCallback`` (else ``<webhook_url>/webhooks/twilio``), a Twilio status
  callback form (``MessageSid``, ``MessageStatus``, ``AccountSid``, ``From``, ``To``, ``ErrorCode``),
  ``X-Twilio-Signature`` with the auth token.
* **Email**: ``POST <webhook_url>/webhooks/email``, the project's signed JSON notification (docs/webhooks.md).

What happens to a message is drawn from ``random.Random(f"{seed}:{channel}:{address}")``: the same seed gives
the same fate to the same recipient whatever the order or timing of the sends (a test can know in advance who
bounces). ``receipt_ratios``: ``bounced`` (hard: WhatsApp 131026, Twilio 30005, email permanent bounce),
``undelivered`` (soft: WhatsApp 131049, Twilio 30003, email transient bounce), ``delivered`` (default: the
rest); then, for a delivered message, ``read`` (WhatsApp and SMS) and ``complained`` (email) as probabilities.
``bounce_addresses`` always hard-bounce. A callback is posted after ``receipt_delay_ms``; a refused or failed post
is retried (0.5 s doubling, 5 tries), as providers retry webhooks. Only acknowledged (2xx) callbacks count in
:attr:`CallbackSender.acknowledged`, which is what ``GET /_control/callbacks`` reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import aiohttp

from campaigns.core.webhook_signatures import email_signature, meta_signature, twilio_signature

log = logging.getLogger(__name__)

RATIO_KEYS = ("delivered", "read", "bounced", "complained", "undelivered")
POST_TRIES = 5


def check_ratios(value: Any) -> dict[str, float]:
    """Validated ratios: every key of :data:`RATIO_KEYS`, ``delivered`` defaulting to what bounced and undelivered
    leave; ``bounced + undelivered + delivered <= 1``."""
    if not isinstance(value, Mapping) or set(value) - set(RATIO_KEYS):
        raise ValueError(f"receipt_ratios: expected a mapping with keys among {list(RATIO_KEYS)}, got {value!r}")
    ratios: dict[str, float] = {}
    for key in RATIO_KEYS:
        v = value.get(key, 0.0 if key != "delivered" else None)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, int | float) or not 0.0 <= v <= 1.0:
            raise ValueError(f"receipt_ratios.{key}: expected a number in [0, 1], got {v!r}")
        ratios[key] = float(v)
    ratios.setdefault("delivered", max(0.0, 1.0 - ratios["bounced"] - ratios["undelivered"]))
    if ratios["bounced"] + ratios["undelivered"] + ratios["delivered"] > 1.0 + 1e-9:
        raise ValueError("receipt_ratios: bounced + undelivered + delivered must not exceed 1")
    return ratios


@dataclass(frozen=True, slots=True)
class Planned:
    status: str  # delivered | read | bounced | undelivered | complained
    delay_s: float


def plan(
    seed: int | None,
    channel: str,
    address: str,
    ratios: Mapping[str, float],
    delay_ms: tuple[float, float],
    always_bounce: bool,
) -> list[Planned]:
    """The callbacks one accepted message gets, in order (pure, deterministic for a seed)."""
    rng = random.Random(f"{seed}:{channel}:{address}")
    draw = rng.random()

    def delay() -> float:
        low, high = delay_ms
        return (low if low == high else rng.uniform(low, high)) / 1000.0

    if always_bounce or draw < ratios["bounced"]:
        return [Planned("bounced", delay())]
    if draw < ratios["bounced"] + ratios["undelivered"]:
        return [Planned("undelivered", delay())]
    if draw >= ratios["bounced"] + ratios["undelivered"] + ratios["delivered"]:
        return []  # no news (a phone that stays off)
    out = [Planned("delivered", delay())]
    if channel == "email":
        if rng.random() < ratios["complained"]:
            out.append(Planned("complained", delay()))
    elif rng.random() < ratios["read"]:
        out.append(Planned("read", delay()))
    return out


@dataclass(frozen=True, slots=True)
class Secrets:
    whatsapp_app_secret: str
    sms_account_sid: str
    sms_auth_token: str
    email_secret: str


class CallbackSender:
    """Posts the planned callbacks of accepted messages (one asyncio task per message)."""

    def __init__(self, secrets: Secrets) -> None:
        self._secrets = secrets
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.acknowledged: Counter[tuple[str, str]] = Counter()  # (channel, status) -> callbacks answered 2xx
        self.failed = 0  # callbacks given up after POST_TRIES

    def schedule(
        self,
        url: str,
        channel: str,
        to: str,
        sender: str | None,
        provider_id: str,
        planned: list[Planned],
        status_callback: str | None = None,
    ) -> None:
        if not planned:
            return
        task = asyncio.get_running_loop().create_task(
            self._run(url, channel, to, sender, provider_id, planned, status_callback)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @property
    def pending(self) -> int:
        return len(self._tasks)

    def counts(self) -> dict[str, Any]:
        by_channel: dict[str, dict[str, int]] = {}
        for (channel, status), n in sorted(self.acknowledged.items()):
            by_channel.setdefault(channel, {})[status] = n
        return {"acknowledged": by_channel, "failed": self.failed, "pending": self.pending}

    def reset(self) -> None:
        self.acknowledged.clear()
        self.failed = 0

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _run(
        self,
        url: str,
        channel: str,
        to: str,
        sender: str | None,
        provider_id: str,
        planned: list[Planned],
        status_callback: str | None,
    ) -> None:
        for step in planned:
            if step.delay_s > 0:
                await asyncio.sleep(step.delay_s)
            target, body, headers = self._request(url, channel, to, sender, provider_id, step.status, status_callback)
            if await self._post(target, body, headers):
                self.acknowledged[(channel, step.status)] += 1
            else:
                self.failed += 1

    def _request(
        self,
        url: str,
        channel: str,
        to: str,
        sender: str | None,
        provider_id: str,
        status: str,
        status_callback: str | None,
    ) -> tuple[str, bytes, dict[str, str]]:
        now = int(time.time())
        s = self._secrets
        if channel == "whatsapp":
            entry: dict[str, Any] = {
                "id": provider_id,
                "status": "failed" if status in ("bounced", "undelivered") else status,
                "timestamp": str(now),
                "recipient_id": to.lstrip("+"),
            }
            if status == "bounced":
                entry["errors"] = [{"code": 131026, "title": "Message undeliverable"}]
            elif status == "undelivered":
                entry["errors"] = [
                    {
                        "code": 131049,
                        "title": "This message was not delivered to maintain healthy ecosystem engagement.",
                    }
                ]
            payload = {
                "object": "whatsapp_business_account",
                "entry": [
                    {
                        "id": "SIMULATED_WABA",
                        "changes": [
                            {
                                "field": "messages",
                                "value": {
                                    "messaging_product": "whatsapp",
                                    "metadata": {
                                        "display_phone_number": (sender or "").lstrip("+"),
                                        "phone_number_id": sender,
                                    },
                                    "statuses": [entry],
                                },
                            }
                        ],
                    }
                ],
            }
            body = json.dumps(payload, separators=(",", ":")).encode()
            headers = {
                "Content-Type": "application/json",
                "X-Hub-Signature-256": meta_signature(s.whatsapp_app_secret, body),
            }
            return f"{url}/webhooks/whatsapp", body, headers
        if channel == "sms":
            twilio_status = {"bounced": "undelivered"}.get(status, status)
            params = {
                "MessageSid": provider_id,
                "SmsSid": provider_id,
                "MessageStatus": twilio_status,
                "SmsStatus": twilio_status,
                "AccountSid": s.sms_account_sid,
                "From": sender or "",
                "To": to,
                "ApiVersion": "2010-04-01",
            }
            if status in ("bounced", "undelivered"):
                params["ErrorCode"] = "30005" if status == "bounced" else "30003"
            target = status_callback or f"{url}/webhooks/twilio"
            headers = {
                "Content-Type": "application/x-www-form-urlencoded",
                "X-Twilio-Signature": twilio_signature(s.sms_auth_token, target, params.items()),
            }
            return target, urlencode(params).encode(), headers
        kind = {"delivered": "delivery", "complained": "complaint"}.get(status, "bounce")
        notification: dict[str, Any] = {
            "notification_id": f"{provider_id}:{status}",
            "type": kind,
            "message_id": provider_id,
            "recipient": to,
            "occurred_at": now,
        }
        if kind == "bounce":
            notification["bounce_type"] = "permanent" if status == "bounced" else "transient"
        body = json.dumps(notification, separators=(",", ":")).encode()
        headers = {
            "Content-Type": "application/json",
            "X-Campaigns-Timestamp": str(now),
            "X-Campaigns-Signature": email_signature(s.email_secret, now, body),
        }
        return f"{url}/webhooks/email", body, headers

    async def _post(self, target: str, body: bytes, headers: dict[str, str]) -> bool:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        wait = 0.5
        for attempt in range(POST_TRIES):
            try:
                async with self._session.post(target, data=body, headers=headers) as response:
                    if 200 <= response.status < 300:
                        return True
                    log.warning("callback to %s answered %d (try %d)", target, response.status, attempt + 1)
            except (aiohttp.ClientError, TimeoutError) as exc:
                log.warning("callback to %s failed: %s (try %d)", target, exc, attempt + 1)
            await asyncio.sleep(wait)
            wait *= 2
        return False
