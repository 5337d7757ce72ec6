"""A local stand-in for the three providers: WhatsApp Cloud API, a Twilio-style SMS API and an SMTP relay.

One :class:`ProviderSimulator` serves, on one event loop:

* HTTP (aiohttp) ``POST /whatsapp/{version}/{phone_number_id}/messages`` (bearer token) and
  ``POST /sms/2010-04-01/Accounts/{sid}/Messages.json`` (form fields, basic auth ``sid:token``);
* SMTP (aiosmtpd) on its own port; optional AUTH (PLAIN/LOGIN) and STARTTLS;
* control endpoints: ``GET /_control/messages?channel=&since=&message_id=&to=``, ``GET /_control/stats``,
  ``GET|POST /_control/config``, ``POST /_control/reset``, ``GET /_control/health``.

Every request is decided the moment it arrives, in this order: credentials (401), SMS idempotency
replay, request shape (400), rate limit (throttled), injected transient failure (``fail_next`` first,
then the seeded ``transient_error_rate`` draw), permanent-failure address (400 / SMTP 550), else
accepted and logged. The configured latency is then waited before the answer is written -- so, as with a real
provider, a client that times out may find its message was accepted anyway.

Outcomes per channel:

============ ============================== =============================== ==========================
outcome      WhatsApp                       SMS                             SMTP
============ ============================== =============================== ==========================
accepted     200 ``messages[0].id=wamid.*`` 201 ``sid=SM*``, status queued  ``250 2.0.0 ... queued as``
throttled    429, error.code 130429         429, code 20429                 ``451 4.7.0`` (at DATA)
transient    ``transient_status`` (503),    ``transient_status`` (503),     ``451 4.3.0`` (at DATA)
             error.code 131016              code 20503
invalid addr 400, error.code 131026         400, code 21211                 ``550 5.1.1`` (at RCPT)
bad request  400, error.code 100            400, 21602/21603/21604/21211    --
bad creds    401, error.code 190            401, code 20003                 ``535 5.7.8``
============ ============================== =============================== ==========================

Throttled answers carry ``Retry-After`` (whole seconds until the window frees a slot).

Rate limits are a sliding one-second window per channel: at most N requests are let past the limiter
in any 1 s interval; requests past it (accepted or failed) count, throttled ones do not.

Idempotency (SMS only, as providers differ): a request with an ``Idempotency-Key`` header whose key was
already ACCEPTED gets the first answer again (same sid, 201) and is neither logged nor counted as
accepted; it counts as ``idempotent_replays``. A key whose first request failed is not remembered.

The log (``messages``) holds accepted messages only, with our message id taken from
``biz_opaque_callback_data`` (WhatsApp), the ``Idempotency-Key`` header (SMS), or ``X-Campaign-Message-Id``
falling back to ``Message-ID`` (email). ``duplicates`` counts acceptances of a message id already
accepted on that channel -- a customer receiving the same message twice. End-to-end tests assert it
stays 0.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
import itertools
import json
import logging
import math
import os
import random
import re
import socket
import ssl
import time
import warnings
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from email import policy as email_policy
from email.header import decode_header, make_header
from email.parser import BytesParser
from typing import Any

from aiohttp import web
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from campaigns.settings import ProviderSettings

log = logging.getLogger(__name__)

CHANNELS = ("whatsapp", "sms", "email")

_ACCEPT, _THROTTLED, _TRANSIENT, _PERMANENT = range(4)
_E164 = re.compile(r"^\+[1-9]\d{6,14}$")
_WA_NUMBER = re.compile(r"^\+?[1-9]\d{6,14}$")
_PHONE_PUNCT = str.maketrans("", "", " -().")


def normalize_address(address: str) -> str:
    """The form permanent-failure addresses are compared in: lower-case emails, bare-digit phones."""
    address = address.strip()
    if "@" in address:
        return address.lower()
    return address.translate(_PHONE_PUNCT).lstrip("+")


# --------------------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class ReceivedMessage:
    """One accepted message as the simulator saw it. ``accepted_at`` is epoch seconds."""

    channel: str
    to: str
    body: str
    message_id: str | None
    provider_message_id: str
    accepted_at: float
    subject: str | None = None
    template_name: str | None = None
    sender: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class ChannelStats:
    accepted: int = 0
    throttled: int = 0
    transient_errors: int = 0
    permanent_errors: int = 0
    duplicates: int = 0
    idempotent_replays: int = 0
    unauthorized: int = 0

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


# --------------------------------------------------------------------------- configuration


def _per_channel(value: Any, *, name: str, default: Any, check: Callable[[Any], Any]) -> dict[str, Any]:
    if isinstance(value, Mapping):
        unknown = set(value) - set(CHANNELS)
        if unknown:
            raise ValueError(f"{name}: unknown channel(s) {sorted(unknown)}; expected {list(CHANNELS)}")
        return {ch: check(value[ch]) if ch in value else default for ch in CHANNELS}
    checked = check(value)
    return dict.fromkeys(CHANNELS, checked)


def _check_rate(value: Any) -> int | None:
    if value is None or value == 0:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 1 or value != int(value):
        raise ValueError(f"rate_limit_per_s: expected a whole number >= 1, 0 or null, got {value!r}")
    return int(value)


def _check_probability(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
        raise ValueError(f"transient_error_rate: expected a number in [0, 1], got {value!r}")
    return float(value)


def _check_count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"fail_next: expected a whole number >= 0, got {value!r}")
    return value


def _check_latency(value: Any) -> tuple[float, float]:
    if isinstance(value, Mapping):
        value = (value.get("min", 0.0), value.get("max", value.get("min", 0.0)))
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = (value, value)
    if (
        not isinstance(value, list | tuple)
        or len(value) != 2
        or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
        or not 0 <= value[0] <= value[1]
    ):
        raise ValueError(
            f"latency_ms: expected ms, [min, max] or {{min, max}} with 0 <= min <= max, got {value!r}"
        )
    return (float(value[0]), float(value[1]))


@dataclass(frozen=True)
class SimulatorConfig:
    """How the simulator behaves. Build changes with :meth:`with_changes` (validates and normalises).

    * ``latency_ms`` -- delay before each answer: fixed, or ``(min, max)`` drawn uniformly.
    * ``rate_limit_per_s`` -- per channel; ``None`` = unlimited. A bare number applies to every channel;
      a mapping sets the channels it names and leaves the others unlimited.
    * ``transient_error_rate`` -- per channel probability (0..1) of an injected transient failure, drawn
      from a ``random.Random(seed)``: the same seed and request order give the same failures.
    * ``permanent_failures`` -- addresses (phones in any punctuation, emails any case) always rejected.
    * ``transient_status`` -- the HTTP status of injected transient failures (500-599).
    """

    latency_ms: tuple[float, float] = (0.0, 0.0)
    rate_limit_per_s: Mapping[str, int | None] = field(default_factory=lambda: dict.fromkeys(CHANNELS))
    transient_error_rate: Mapping[str, float] = field(default_factory=lambda: dict.fromkeys(CHANNELS, 0.0))
    permanent_failures: frozenset[str] = frozenset()
    seed: int | None = None
    transient_status: int = 503

    def with_changes(self, **changes: Any) -> SimulatorConfig:
        """A validated copy with ``changes`` applied; raises ``ValueError`` naming the bad setting."""
        unknown = set(changes) - {f.name for f in fields(self)}
        if unknown:
            raise ValueError(f"unknown setting(s) {sorted(unknown)}")
        normalised: dict[str, Any] = {}
        for key, value in changes.items():
            if key == "latency_ms":
                normalised[key] = _check_latency(value)
            elif key == "rate_limit_per_s":
                normalised[key] = _per_channel(value, name=key, default=None, check=_check_rate)
            elif key == "transient_error_rate":
                normalised[key] = _per_channel(value, name=key, default=0.0, check=_check_probability)
            elif key == "permanent_failures":
                if isinstance(value, str) or not isinstance(value, Iterable):
                    raise ValueError("permanent_failures: expected a list of addresses")
                normalised[key] = frozenset(normalize_address(str(a)) for a in value)
            elif key == "seed":
                if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                    raise ValueError(f"seed: expected an integer or null, got {value!r}")
                normalised[key] = value
            elif key == "transient_status":
                if isinstance(value, bool) or not isinstance(value, int) or not 500 <= value <= 599:
                    raise ValueError(f"transient_status: expected 500-599, got {value!r}")
                normalised[key] = value
        return replace(self, **normalised)

    def as_dict(self) -> dict[str, Any]:
        return {
            "latency_ms": list(self.latency_ms),
            "rate_limit_per_s": dict(self.rate_limit_per_s),
            "transient_error_rate": dict(self.transient_error_rate),
            "permanent_failures": sorted(self.permanent_failures),
            "seed": self.seed,
            "transient_status": self.transient_status,
        }


# --------------------------------------------------------------------------- canned answers


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _wa_error(code: int, message: str, *, kind: str = "OAuthException", details: str | None = None) -> bytes:
    error: dict[str, Any] = {"message": message, "type": kind, "code": code, "fbtrace_id": "SIMULATOR"}
    if details:
        error["error_data"] = {"messaging_product": "whatsapp", "details": details}
    return _dumps({"error": error})


def _sms_error(code: int, message: str, status: int) -> bytes:
    return _dumps(
        {
            "code": code,
            "message": message,
            "more_info": f"https://www.twilio.com/docs/errors/{code}",
            "status": status,
        }
    )


_WA_UNAUTHORIZED = _wa_error(190, "Invalid OAuth access token - Cannot parse access token")
_WA_THROTTLED = _wa_error(
    130429, "(#130429) Rate limit hit", details="Cloud API message throughput has been reached."
)
_WA_TRANSIENT = _wa_error(
    131016, "(#131016) Service unavailable", details="A service is temporarily unavailable."
)
_WA_INVALID_NUMBER = _wa_error(
    131026, "(#131026) Message undeliverable", details="Unable to deliver message to this recipient."
)
_SMS_UNAUTHORIZED = _sms_error(20003, "Authenticate", 401)
_SMS_THROTTLED = _sms_error(20429, "Too Many Requests", 429)
_SMS_INVALID_NUMBER = _sms_error(21211, "The 'To' number is not a valid phone number.", 400)
_JSON = "application/json"
_SMS_PREFIX = "/sms/2010-04-01/Accounts/"
_SMS_SUFFIX = "/Messages.json"


def _parse_whatsapp(payload: Any) -> tuple[str, str, str | None, str | None] | str:
    """(to, body, template_name, message_id) or the reason the request is invalid."""
    if not isinstance(payload, dict):
        return "request body must be a JSON object"
    if payload.get("messaging_product") != "whatsapp":
        return "messaging_product must be 'whatsapp'"
    to = payload.get("to")
    if not isinstance(to, str) or not _WA_NUMBER.match(to):
        return "to must be a phone number"
    message_id = payload.get("biz_opaque_callback_data")
    if message_id is not None and not isinstance(message_id, str):
        return "biz_opaque_callback_data must be a string"
    kind = payload.get("type", "text")
    if kind == "text":
        text = payload.get("text")
        body = text.get("body") if isinstance(text, dict) else None
        if not isinstance(body, str) or not body:
            return "text.body is required"
        return to, body, None, message_id
    if kind == "template":
        template = payload.get("template")
        if not isinstance(template, dict) or not isinstance(template.get("name"), str):
            return "template.name is required"
        language = template.get("language")
        if not isinstance(language, dict) or not isinstance(language.get("code"), str):
            return "template.language.code is required"
        texts: list[str] = []
        for component in template.get("components") or ():
            for param in (component.get("parameters") or ()) if isinstance(component, dict) else ():
                if isinstance(param, dict) and isinstance(param.get("text"), str):
                    texts.append(param["text"])
        return to, " ".join(texts), template["name"], message_id
    return f"unsupported message type {kind!r}"


# --------------------------------------------------------------------------- the simulator


class ProviderSimulator:
    """The simulator, in-process. ``await start()``, use ``http_port`` / ``smtp_port``, ``await stop()``.

    Ports default to 0 (ephemeral); the bound ones are exposed after ``start()``. Credentials default to
    :class:`ProviderSettings`' defaults; ``ProviderSimulator.provider_settings()`` returns settings that
    point the real transports at this instance. Not thread-safe: use it from its event loop.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        http_port: int = 0,
        smtp_port: int = 0,
        credentials: ProviderSettings | None = None,
        smtp_auth: tuple[str, str] | None = None,
        smtp_tls_context: ssl.SSLContext | None = None,
        config: SimulatorConfig | None = None,
        **config_changes: Any,
    ) -> None:
        creds = credentials if credentials is not None else ProviderSettings()
        self.host = host
        self._requested_ports = (http_port, smtp_port)
        self._credentials = creds
        self._wa_auth = f"Bearer {creds.whatsapp_token.get_secret_value()}"
        basic = f"{creds.sms_account_sid}:{creds.sms_auth_token.get_secret_value()}"
        self._sms_auth = "Basic " + base64.b64encode(basic.encode()).decode()
        self._sms_sid = creds.sms_account_sid
        self._smtp_auth = smtp_auth
        self._smtp_tls_context = smtp_tls_context

        self._config = (config or SimulatorConfig()).with_changes(
            **{k: v for k, v in config_changes.items() if k != "fail_next"}
        )
        self._fail_next: dict[str, int] = dict.fromkeys(CHANNELS, 0)
        if "fail_next" in config_changes:
            self._set_fail_next(config_changes["fail_next"])

        self.messages: list[ReceivedMessage] = []
        self._stats = {ch: ChannelStats() for ch in CHANNELS}
        self._seen: dict[str, set[str]] = {ch: set() for ch in CHANNELS}
        self._windows: dict[str, deque[float]] = {ch: deque() for ch in CHANNELS}
        self._idempotency: dict[str, bytes] = {}
        self._rng = random.Random(self._config.seed)
        self._latency_rng = random.Random(_latency_seed(self._config.seed))
        self._run_tag = os.urandom(8).hex()
        self._seq = itertools.count(1)
        self._waiters: list[asyncio.Future[None]] = []
        self._control_routes: dict[tuple[str, str], Callable[[web.BaseRequest], Awaitable[web.Response]]] = {}

        self._runner: web.ServerRunner | None = None
        self._smtp_server: asyncio.Server | None = None
        self._smtp_protocols: weakref.WeakSet[SMTP] = weakref.WeakSet()
        self.smtp_connections_opened = 0  # lets tests check that the email transport reuses connections
        self.http_port: int | None = None
        self.smtp_port: int | None = None

    def __repr__(self) -> str:
        return (
            f"ProviderSimulator(host={self.host!r}, http_port={self.http_port}, smtp_port={self.smtp_port})"
        )

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Bind and serve HTTP and SMTP. Raises ``OSError`` if a port is taken."""
        if self._runner is not None:
            raise RuntimeError("simulator already started")
        http_sock = _bind(self.host, self._requested_ports[0])
        smtp_sock = _bind(self.host, self._requested_ports[1])
        try:
            # The low-level server with a hand-written dispatch: a few fixed routes do not need the
            # Application/router layers on every request.
            self._control_routes = {
                ("GET", "/_control/messages"): self._handle_messages,
                ("GET", "/_control/stats"): self._handle_stats,
                ("GET", "/_control/config"): self._handle_get_config,
                ("POST", "/_control/config"): self._handle_set_config,
                ("POST", "/_control/reset"): self._handle_reset,
                ("GET", "/_control/health"): self._handle_health,
            }
            server = web.Server(self._dispatch, access_log=None)
            runner = web.ServerRunner(server, handle_signals=False, shutdown_timeout=1.0)
            await runner.setup()
            self._runner = runner
            await web.SockSite(runner, http_sock, backlog=1024).start()
            self.http_port = http_sock.getsockname()[1]

            loop = asyncio.get_running_loop()
            self._smtp_server = await loop.create_server(self._smtp_protocol, sock=smtp_sock, backlog=1024)
            self.smtp_port = smtp_sock.getsockname()[1]
        except BaseException:
            http_sock.close()
            smtp_sock.close()
            await self.stop()
            raise
        log.info(
            "provider simulator listening: http://%s:%s smtp %s:%s",
            self.host,
            self.http_port,
            self.host,
            self.smtp_port,
        )

    async def stop(self) -> None:
        """Close both servers and their open connections. The log and stats stay readable."""
        if self._smtp_server is not None:
            self._smtp_server.close()
            self.drop_smtp_connections()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._smtp_server.wait_closed(), timeout=2.0)
            self._smtp_server = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self._notify()  # waiters re-check their condition and time out as usual

    async def __aenter__(self) -> ProviderSimulator:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def http_url(self) -> str:
        if self.http_port is None:
            raise RuntimeError("simulator not started")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.http_port}"

    def provider_settings(self, **overrides: Any) -> ProviderSettings:
        """Settings pointing the real transports at this running simulator (plus ``overrides``)."""
        if self.http_port is None or self.smtp_port is None:
            raise RuntimeError("simulator not started")
        values: dict[str, Any] = {
            "whatsapp_base_url": f"{self.http_url}/whatsapp",
            "sms_base_url": f"{self.http_url}/sms",
            "smtp_host": self.host,
            "smtp_port": self.smtp_port,
        }
        values.update(overrides)
        creds = self._credentials
        return type(creds).model_validate({**creds.model_dump(), **values})  # validates the overrides

    # ---------------------------------------------------------------- configuration and inspection

    @property
    def config(self) -> SimulatorConfig:
        return self._config

    def configure(self, **changes: Any) -> SimulatorConfig:
        """Change behaviour live (validated; raises ``ValueError``). See :class:`SimulatorConfig`.

        ``fail_next`` (an int for every channel, or ``{channel: n}`` for the channels named) makes the next
        n requests of a channel fail transiently. A new ``seed`` re-seeds the error and latency draws.
        """
        fail_next = changes.pop("fail_next", None)
        new_config = self._config.with_changes(**changes)
        if fail_next is not None:
            self._set_fail_next(fail_next)
        self._config = new_config
        if "seed" in changes:
            self._rng.seed(new_config.seed)
            self._latency_rng.seed(_latency_seed(new_config.seed))
        return new_config

    def _set_fail_next(self, value: Any) -> None:
        if isinstance(value, Mapping):
            updates = _per_channel(value, name="fail_next", default=None, check=_check_count)
            self._fail_next.update({ch: n for ch, n in updates.items() if n is not None})
        else:
            self._fail_next = dict.fromkeys(CHANNELS, _check_count(value))

    def reset(self) -> None:
        """Forget log, stats, idempotency keys, rate windows and pending ``fail_next``; keep the config."""
        self.messages.clear()
        self._stats = {ch: ChannelStats() for ch in CHANNELS}
        self._seen = {ch: set() for ch in CHANNELS}
        self._windows = {ch: deque() for ch in CHANNELS}
        self._idempotency.clear()
        self._fail_next = dict.fromkeys(CHANNELS, 0)
        self._rng.seed(self._config.seed)
        self._latency_rng.seed(_latency_seed(self._config.seed))

    def stats(self) -> dict[str, dict[str, int]]:
        """Counters per channel: accepted, throttled, transient_errors, permanent_errors, duplicates,
        idempotent_replays, unauthorized."""
        return {ch: st.as_dict() for ch, st in self._stats.items()}

    def query(
        self,
        *,
        channel: str | None = None,
        since: float | None = None,
        message_id: str | None = None,
        to: str | None = None,
    ) -> list[ReceivedMessage]:
        """Accepted messages, oldest first; ``since`` keeps those accepted strictly after it (epoch s)."""
        return [
            m
            for m in self.messages
            if (channel is None or m.channel == channel)
            and (since is None or m.accepted_at > since)
            and (message_id is None or m.message_id == message_id)
            and (to is None or m.to == to)
        ]

    async def wait_until(self, predicate: Callable[[], bool], *, timeout: float = 5.0) -> None:
        """Wait (event-driven, no polling) until ``predicate()`` holds; ``TimeoutError`` after ``timeout``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate():
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"condition not met within {timeout}s; stats={self.stats()}")
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters.append(waiter)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter, remaining)

    async def wait_for_messages(
        self, count: int, *, channel: str | None = None, timeout: float = 5.0
    ) -> list[ReceivedMessage]:
        """Wait until at least ``count`` messages (of ``channel``) were accepted; return them."""
        await self.wait_until(lambda: len(self.query(channel=channel)) >= count, timeout=timeout)
        return self.query(channel=channel)

    def _notify(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    # ---------------------------------------------------------------- the decision (hot path, no awaits)

    def _decide(self, channel: str, address: str) -> tuple[int, float]:
        config = self._config
        stats = self._stats[channel]
        limit = config.rate_limit_per_s[channel]
        if limit is not None:
            now = time.monotonic()
            window = self._windows[channel]
            edge = now - 1.0
            while window and window[0] <= edge:
                window.popleft()
            if len(window) >= limit:
                stats.throttled += 1
                return _THROTTLED, window[0] - edge
            window.append(now)
        if self._fail_next[channel] > 0:
            self._fail_next[channel] -= 1
            verdict = _TRANSIENT
        else:
            rate = config.transient_error_rate[channel]
            verdict = _TRANSIENT if rate > 0.0 and self._rng.random() < rate else _ACCEPT
        if (
            verdict == _ACCEPT
            and config.permanent_failures
            and normalize_address(address) in config.permanent_failures
        ):
            verdict = _PERMANENT
        if verdict == _TRANSIENT:
            stats.transient_errors += 1
        elif verdict == _PERMANENT:
            stats.permanent_errors += 1
        return verdict, 0.0

    def _accept(
        self,
        channel: str,
        to: str,
        body: str,
        message_id: str | None,
        provider_id: str,
        *,
        subject: str | None = None,
        template_name: str | None = None,
        sender: str | None = None,
    ) -> None:
        stats = self._stats[channel]
        stats.accepted += 1
        if message_id is not None:
            seen = self._seen[channel]
            if message_id in seen:
                stats.duplicates += 1
            else:
                seen.add(message_id)
        self.messages.append(
            ReceivedMessage(
                channel, to, body, message_id, provider_id, time.time(), subject, template_name, sender
            )
        )
        if self._waiters:
            self._notify()

    def _delay_s(self) -> float:
        low, high = self._config.latency_ms
        if high <= 0.0:
            return 0.0
        if low == high:
            return low / 1000.0
        return self._latency_rng.uniform(low, high) / 1000.0

    async def _reply(
        self, status: int, body: bytes, headers: Mapping[str, str] | None = None
    ) -> web.Response:
        if self._waiters:  # every outcome has been counted by now
            self._notify()
        delay = self._delay_s()
        if delay > 0.0:
            await asyncio.sleep(delay)
        return web.Response(status=status, body=body, content_type=_JSON, headers=headers)

    # ---------------------------------------------------------------- routing

    async def _dispatch(self, request: web.BaseRequest) -> web.StreamResponse:
        path = request.path
        if request.method == "POST":
            if path.startswith(_SMS_PREFIX) and path.endswith(_SMS_SUFFIX):
                sid = path[len(_SMS_PREFIX) : -len(_SMS_SUFFIX)]
                if sid and "/" not in sid:
                    return await self._handle_sms(request, sid)
            elif path.startswith("/whatsapp/"):
                parts = path.split("/")  # "", "whatsapp", version, phone_number_id, "messages"
                if len(parts) == 5 and parts[4] == "messages" and parts[2] and parts[3]:
                    return await self._handle_whatsapp(request, parts[3])
        handler = self._control_routes.get((request.method, path))
        if handler is not None:
            return await handler(request)
        if any(p == path for _, p in self._control_routes):
            return web.json_response({"error": "method not allowed"}, status=405)
        return web.json_response({"error": f"no such endpoint: {request.method} {path}"}, status=404)

    # ---------------------------------------------------------------- WhatsApp

    async def _handle_whatsapp(self, request: web.BaseRequest, phone_number_id: str) -> web.Response:
        stats = self._stats["whatsapp"]
        if not _same(request.headers.get("Authorization"), self._wa_auth):
            stats.unauthorized += 1
            return await self._reply(401, _WA_UNAUTHORIZED)
        try:
            payload = json.loads(await request.read())
        except ValueError:
            payload = None
        parsed = _parse_whatsapp(payload)
        if isinstance(parsed, str):
            stats.permanent_errors += 1
            return await self._reply(400, _wa_error(100, f"(#100) Invalid parameter: {parsed}"))
        to, body, template_name, message_id = parsed
        verdict, wait_s = self._decide("whatsapp", to)
        if verdict == _THROTTLED:
            return await self._reply(429, _WA_THROTTLED, {"Retry-After": str(max(1, math.ceil(wait_s)))})
        if verdict == _TRANSIENT:
            return await self._reply(self._config.transient_status, _WA_TRANSIENT)
        if verdict == _PERMANENT:
            return await self._reply(400, _WA_INVALID_NUMBER)
        wamid = f"wamid.SIM{self._run_tag}{next(self._seq):012d}"
        self._accept(
            "whatsapp",
            to,
            body,
            message_id,
            wamid,
            template_name=template_name,
            sender=phone_number_id,
        )
        wa_id = to.lstrip("+")
        answer = _dumps(
            {
                "messaging_product": "whatsapp",
                "contacts": [{"input": to, "wa_id": wa_id}],
                "messages": [{"id": wamid, "message_status": "accepted"}],
            }
        )
        return await self._reply(200, answer)

    # ---------------------------------------------------------------- SMS

    async def _handle_sms(self, request: web.BaseRequest, sid: str) -> web.Response:
        stats = self._stats["sms"]
        if sid != self._sms_sid or not _same(request.headers.get("Authorization"), self._sms_auth):
            stats.unauthorized += 1
            return await self._reply(401, _SMS_UNAUTHORIZED)
        form = await request.post()
        key = request.headers.get("Idempotency-Key")
        if key is not None:
            previous = self._idempotency.get(key)
            if previous is not None:
                stats.idempotent_replays += 1
                return await self._reply(201, previous)
        to, sender, body = form.get("To"), form.get("From"), form.get("Body")
        problem: bytes | None = None
        if not isinstance(to, str) or not to:
            problem = _sms_error(21604, "A 'To' phone number is required.", 400)
        elif not isinstance(sender, str) or not sender:
            problem = _sms_error(21603, "A 'From' phone number is required.", 400)
        elif not isinstance(body, str) or not body:
            problem = _sms_error(21602, "Message body is required.", 400)
        elif not _E164.match(to):
            problem = _SMS_INVALID_NUMBER
        if problem is not None:
            stats.permanent_errors += 1
            return await self._reply(400, problem)
        assert isinstance(to, str) and isinstance(body, str) and isinstance(sender, str)
        verdict, wait_s = self._decide("sms", to)
        if verdict == _THROTTLED:
            return await self._reply(429, _SMS_THROTTLED, {"Retry-After": str(max(1, math.ceil(wait_s)))})
        if verdict == _TRANSIENT:
            status = self._config.transient_status
            return await self._reply(status, _sms_error(20503, "Service Unavailable", status))
        if verdict == _PERMANENT:
            return await self._reply(400, _SMS_INVALID_NUMBER)
        sid = f"SM{self._run_tag}{next(self._seq):016x}"
        self._accept("sms", to, body, key, sid, sender=sender)
        answer = _dumps(
            {
                "sid": sid,
                "account_sid": self._sms_sid,
                "to": to,
                "from": sender,
                "body": body,
                "status": "queued",
                "direction": "outbound-api",
                "api_version": "2010-04-01",
                "num_segments": "1",
                "error_code": None,
                "error_message": None,
                "uri": f"/2010-04-01/Accounts/{self._sms_sid}/Messages/{sid}.json",
            }
        )
        if key is not None:
            self._idempotency[key] = answer
        return await self._reply(201, answer)

    # ---------------------------------------------------------------- SMTP

    def _smtp_protocol(self) -> SMTP:
        auth_required = self._smtp_auth is not None
        with warnings.catch_warnings():
            # AUTH without TLS is exactly what a loopback test relay wants; aiosmtpd warns about it.
            warnings.filterwarnings(
                "ignore", message="Requiring AUTH while not requiring TLS", category=UserWarning
            )
            proto = SMTP(
                _SmtpHandler(self),
                hostname="provider-simulator.local",
                ident="provider-simulator",
                tls_context=self._smtp_tls_context,
                auth_required=auth_required,
                auth_require_tls=self._smtp_tls_context is not None,
                authenticator=self._smtp_authenticate if auth_required else None,
                loop=asyncio.get_running_loop(),
            )
        self._smtp_protocols.add(proto)
        self.smtp_connections_opened += 1
        return proto

    def drop_smtp_connections(self) -> int:
        """Close every open SMTP connection from the server side (as a relay's idle timeout would)."""
        dropped = 0
        for proto in list(self._smtp_protocols):
            transport = proto.transport
            if transport is not None and not transport.is_closing():
                transport.close()
                dropped += 1
        return dropped

    def _smtp_authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        expected = self._smtp_auth
        if expected is None or not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        ok = _same(auth_data.login.decode(errors="replace"), expected[0]) and _same(
            auth_data.password.decode(errors="replace"), expected[1]
        )
        if not ok:
            self._stats["email"].unauthorized += 1
            if self._waiters:
                self._notify()
        return AuthResult(success=ok, handled=False)

    def _smtp_rcpt(self, address: str) -> str | None:
        """Refusal for RCPT, or None to accept the recipient."""
        failures = self._config.permanent_failures
        if failures and normalize_address(address) in failures:
            self._stats["email"].permanent_errors += 1
            if self._waiters:
                self._notify()
            return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"
        return None

    async def _smtp_data(self, envelope: Envelope) -> str:
        content = envelope.content if isinstance(envelope.content, bytes) else str(envelope.content).encode()
        recipients = list(envelope.rcpt_tos)
        # One decision per transaction (our transport sends one recipient per message).
        verdict, _ = self._decide("email", recipients[0] if recipients else "")
        if verdict == _THROTTLED:
            reply = "451 4.7.0 Rate limit exceeded, try again later"
        elif verdict == _TRANSIENT:
            reply = "451 4.3.0 Temporary local problem, try again later"
        elif verdict == _PERMANENT:
            reply = "550 5.1.1 Recipient address rejected: User unknown"
        else:
            message_id, subject, body = _parse_email(content)
            queue_id = f"SIM{self._run_tag[:8]}{next(self._seq):010d}"
            for rcpt in recipients:
                self._accept(
                    "email", rcpt, body, message_id, queue_id, subject=subject, sender=envelope.mail_from
                )
            reply = f"250 2.0.0 Ok: queued as {queue_id}"
        if self._waiters:
            self._notify()
        delay = self._delay_s()
        if delay > 0.0:
            await asyncio.sleep(delay)
        return reply

    # ---------------------------------------------------------------- control API

    async def _handle_messages(self, request: web.BaseRequest) -> web.Response:
        q = request.query
        try:
            since = float(q["since"]) if "since" in q else None
        except ValueError:
            return web.json_response({"error": "since must be epoch seconds"}, status=400)
        channel = q.get("channel")
        if channel is not None and channel not in CHANNELS:
            return web.json_response({"error": f"unknown channel {channel!r}"}, status=400)
        found = self.query(channel=channel, since=since, message_id=q.get("message_id"), to=q.get("to"))
        return web.Response(
            body=_dumps({"count": len(found), "messages": [m.as_dict() for m in found]}), content_type=_JSON
        )

    async def _handle_stats(self, request: web.BaseRequest) -> web.Response:
        return web.json_response(self.stats())

    async def _handle_get_config(self, request: web.BaseRequest) -> web.Response:
        return web.json_response(self._config_view())

    async def _handle_set_config(self, request: web.BaseRequest) -> web.Response:
        try:
            changes = json.loads(await request.read() or b"{}")
            if not isinstance(changes, dict):
                raise ValueError("expected a JSON object of settings")
            self.configure(**changes)
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response(self._config_view())

    async def _handle_reset(self, request: web.BaseRequest) -> web.Response:
        self.reset()
        return web.json_response({"ok": True})

    async def _handle_health(self, request: web.BaseRequest) -> web.Response:
        return web.json_response({"ok": True, "http_port": self.http_port, "smtp_port": self.smtp_port})

    def _config_view(self) -> dict[str, Any]:
        view = self._config.as_dict()
        view["fail_next"] = dict(self._fail_next)
        return view


class _SmtpHandler:
    """aiosmtpd hooks; the decisions live in the simulator so every channel shares one code path."""

    def __init__(self, simulator: ProviderSimulator) -> None:
        self._sim = simulator

    async def handle_RCPT(  # aiosmtpd's hook names
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        refusal = self._sim._smtp_rcpt(address)
        if refusal is not None:
            return refusal
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        return await self._sim._smtp_data(envelope)


def _raw_headers(head: bytes) -> dict[str, str]:
    """Header name (lower-case) -> unfolded value; the first occurrence wins."""
    headers: dict[str, str] = {}
    name = None
    for line in head.decode("utf-8", errors="replace").split("\n"):
        if line[:1] in (" ", "\t") and name is not None:
            headers[name] += " " + line.strip()
            continue
        key, colon, value = line.partition(":")
        if not colon:
            name = None
            continue
        name = key.strip().lower()
        if name in headers:  # keep the first; later duplicates are ignored
            name = None
            continue
        headers[name] = value.strip()
    return headers


def _parse_email(content: bytes) -> tuple[str | None, str | None, str]:
    """(our message id, subject, text body) of a received message.

    Single-part text messages (what our transport sends) take a hand-written fast path; anything else
    the stdlib's legacy ``compat32`` parser. (The modern email policy's header registry costs
    milliseconds per message, and even ``compat32`` a few hundred microseconds.)
    """
    content = content.replace(b"\r\n", b"\n")
    head, _, raw_body = content.partition(b"\n\n")
    headers = _raw_headers(head)
    message_id = headers.get("x-campaign-message-id") or headers.get("message-id", "").strip("<>") or None
    subject = headers.get("subject")
    if subject is not None and "=?" in subject:
        subject = str(make_header(decode_header(subject)))
    content_type, _, params = headers.get("content-type", "text/plain").partition(";")
    body = ""
    if content_type.strip().lower().startswith("text/"):
        charset = "utf-8"
        for param in params.split(";"):
            key, _, value = param.partition("=")
            if key.strip().lower() == "charset":
                charset = value.strip().strip('"') or charset
        encoding = headers.get("content-transfer-encoding", "7bit").lower()
        try:
            if encoding == "quoted-printable":
                raw_body = binascii.a2b_qp(raw_body)
            elif encoding == "base64":
                raw_body = binascii.a2b_base64(raw_body)
            body = raw_body.decode(charset, errors="replace")
        except (binascii.Error, LookupError):
            body = ""
    else:
        message = BytesParser(policy=email_policy.compat32).parsebytes(content)
        part = None
        for candidate in message.walk():
            if candidate.get_content_maintype() == "text":
                part = candidate
                if candidate.get_content_subtype() == "plain":
                    break
        if part is not None:
            payload = part.get_payload(decode=True)
            if isinstance(payload, bytes):
                body = payload.decode(part.get_content_charset() or "utf-8", errors="replace")
    return message_id, subject, body.replace("\r\n", "\n").rstrip("\n")


def _latency_seed(seed: int | None) -> str | None:
    # Its own stream, so configuring latency does not shift which requests get injected errors.
    return None if seed is None else f"latency-{seed}"


def _same(given: str | None, expected: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def _bind(host: str, port: int) -> socket.socket:
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock
