"""A local stand-in for the three providers: WhatsApp Cloud API, a Twilio-style SMS API and an SMTP relay.

One :class:`ProviderSimulator` serves, on one event loop:

* HTTP (``simulator/http.py``, a lean HTTP/1.1 server) ``POST /whatsapp/{version}/{phone_number_id}/messages``
  (bearer token) and
  ``POST /sms/2010-04-01/Accounts/{sid}/Messages.json`` (form fields, basic auth ``sid:token``);
* SMTP (aiosmtpd) on its own port; optional AUTH (PLAIN/LOGIN) and STARTTLS;
* control endpoints: ``GET /_control/messages?channel=&since=&message_id=&to=`` (accepted requests),
  ``GET /_control/refused?channel=&since=&message_id=&to=`` (refused requests), ``GET /_control/stats``,
  ``GET|POST /_control/config``, ``GET|POST /_control/templates``, ``POST /_control/inbound``,
  ``POST /_control/reset``, ``GET /_control/health``, ``GET /_control/callbacks`` (delivery callbacks the
  webhook receiver acknowledged);
* delivery callbacks, when ``webhook_url`` is set: after accepting a message, its fate (delivered, read,
  bounced, undelivered, complained; drawn per address from the seed) is posted to the receiver in the provider's
  own format and signature (``simulator/callbacks.py``).

Every request is decided the moment it arrives, in this order: credentials (401), SMS idempotency
replay, request validation (400 / SMTP 550-554, see below), rate limit (throttled), injected transient
failure (``fail_next`` first, then the seeded ``transient_error_rate`` draw), permanent-failure address
(400 / SMTP 550), else accepted and logged. The configured latency is then waited before the answer is
written -- so, as with a real provider, a client that times out may find its message was accepted anyway.

Outcomes per channel:

============ ============================== =============================== ==========================
outcome      WhatsApp                       SMS                             SMTP
============ ============================== =============================== ==========================
accepted     200 ``messages[0].id=wamid.*`` 201 ``sid=SM*``, status queued  ``250 2.0.0 ... queued as``
throttled    429, error.code 130429         429, code 20429                 ``451 4.7.0`` (at DATA)
transient    ``transient_status`` (503),    ``transient_status`` (503),     ``451 4.3.0`` (at DATA)
             error.code 131016              code 20503
invalid addr 400, error.code 131026         400, code 21211                 ``550 5.1.1`` (at RCPT)
bad request  400, error.code 100 / 131008   400, 21602/21603/21604/         ``554 5.6.0`` / ``550
             / 132000 / 132001 / 131047     21211/21617                     5.7.1`` (at DATA)
bad creds    401, error.code 190            401, code 20003                 ``535 5.7.8``
============ ============================== =============================== ==========================

Throttled answers carry ``Retry-After`` (whole seconds until the window frees a slot).

Request validation, as the real providers do it (error bodies in the providers' own shapes: Graph API
``{"error": {"message", "type", "code", "error_data": {"messaging_product", "details"}, "fbtrace_id"}}``,
Twilio ``{"code", "message", "more_info", "status"}``):

* **WhatsApp, template messages**: ``template.name`` and ``template.language.code`` are required, and the
  template must be *registered* for that language, else 132001 ("Template name does not exist in the
  translation"). The ``components``' parameters must match the registered template: as many ``body``
  parameters as the template has, none for header/button components it does not have, else 132000
  ("Number of parameters does not match the expected number of params", with details like ``body:
  number of localizable_params (0) does not match the expected number of params (2)``). A ``text``
  parameter without text is 131008 ("Required parameter is missing"), one with a line break, a tab or four spaces
  in a row 132018; malformed components are 100.
* **WhatsApp, text messages**: ``text.body`` is required (100), at most 4,096 characters (100), and a
  free-form message is only allowed inside the recipient's 24-hour customer service window, else 131047
  ("Re-engagement message"). The real Cloud API may also report 131047 later, in a failed-status webhook;
  the simulator answers at once so a test sees it on the request.
* **SMS**: ``To`` (21604), ``From`` or ``MessagingServiceSid`` (21603) and ``Body`` (21602) are required;
  ``To`` must be E.164 (21211); ``Body`` at most 1,600 characters (21617).
* **SMTP** (at DATA): the message must be well-formed RFC 5322: every header line ``Name: value`` (or a
  folded continuation), no 8-bit header bytes unless the client used SMTPUTF8, no line over 998
  characters (``554 5.6.0`` otherwise); exactly one ``From`` with an address, exactly one parseable
  ``Date`` and exactly one ``Message-ID`` of the form ``<left@right>`` (``550 5.7.1`` otherwise). MIME as
  mail servers check it: a multipart needs its boundary, its parts and its closing boundary, and
  ``multipart/alternative`` at least two text parts (``554 5.6.0``); ``List-Unsubscribe`` must be a list of
  ``<mailto:...>`` / ``<https://...>`` URIs, and ``List-Unsubscribe-Post`` exactly
  ``List-Unsubscribe=One-Click`` with an http(s) URI beside it (RFC 8058; ``550 5.7.1``).

Templates: the simulator knows the WhatsApp templates registered with it, as the Cloud API knows the ones
approved in the business account: (name, language code) -> number of body parameters (and of text header
parameters, ``header_parameters``, 0 or 1). Register them
with :meth:`ProviderSimulator.register_template`, the ``templates=`` argument, ``POST /_control/templates``
(``{"name", "language", "parameters"}`` or a list of them) or ``python -m simulator --template
NAME:LANGUAGE:N`` / ``--template-file FILE`` (a project template JSON, as given to ``campaigns template
add``). :func:`template_registration` turns a project template into its registration. Templates survive
:meth:`~ProviderSimulator.reset` (they are account state, like the configuration).

The customer service window: a number is inside it for ``service_window_s`` (24 h) after its last inbound
message. The simulator learns inbound messages from ``POST /_control/inbound`` (``{"from": "+1555...",
"at": <epoch s, default now>}``, ``from`` may be a list) or :meth:`ProviderSimulator.record_inbound` -- a
stand-in for the customer writing to the business. ``open_service_window`` (``--open-service-window``)
treats every number as inside the window, for harnesses that send free-form text to seeded audiences
that never wrote in (fault and load scenarios); it is off by default, as in production.

Rate limits are a sliding one-second window per channel: at most N requests are let past the limiter
in any 1 s interval; requests past it (accepted or failed) count, throttled ones do not.

Idempotency (SMS only, as providers differ): a request with an ``Idempotency-Key`` header whose key was
already ACCEPTED gets the first answer again (same sid, 201) and is neither logged nor counted as
accepted; it counts as ``idempotent_replays``. A key whose first request failed is not remembered.

Two logs, both in arrival order with epoch-second times: ``messages`` holds accepted messages, with our
message id taken from ``biz_opaque_callback_data`` (WhatsApp), the ``Idempotency-Key`` header (SMS), or
``X-Campaign-Message-Id`` falling back to ``Message-ID`` (email), and what each carried for its
recipient (WhatsApp: the template's parameters per component; email: subject, text and HTML parts, the
list headers); ``refused`` holds every refused request (:class:`RefusedRequest`: time, recipient when
the request named one, our message id when known, HTTP status or SMTP reply code, the provider's error
code and the reason). ``duplicates`` counts acceptances of a message id already accepted on that channel
-- a customer receiving the same message twice. End-to-end tests assert it stays 0. SMTP refusals made
by the protocol layer before any hook runs (``530`` AUTH required, command syntax errors) are not in the
refusal log. """

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
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from email import policy as email_policy
from email.header import decode_header, make_header
from email.message import Message
from email.parser import BytesParser
from email.utils import getaddresses, parsedate_to_datetime
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from campaigns.core.templates import template_parameters_in_order
from campaigns.settings import ProviderSettings, WebhookSettings
from campaigns.transports.http_api import cloud_api_language

from .callbacks import CallbackSender, check_ratios
from .callbacks import Secrets as CallbackSecrets
from .callbacks import plan as plan_callbacks
from .http import HttpServer, Request, Response, json_response

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
    template_language: str | None = None
    template_parameters: tuple[str, ...] = ()
    """The body parameters of a WhatsApp template message, in order (``body`` joins them with spaces)."""
    template_components: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """A WhatsApp template message's parameters per component (header, body, button), as received."""
    html_body: str | None = None
    """Email: the text/html part (``body`` is the text/plain part when there is one)."""
    headers: Mapping[str, str] = field(default_factory=dict)
    """Email: the MIME and list headers as received (content-type, list-unsubscribe, list-unsubscribe-post)."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


REFUSAL_OUTCOMES = ("unauthorized", "invalid", "throttled", "transient", "rejected")


@dataclass(frozen=True, slots=True)
class RefusedRequest:
    """One request the simulator refused. ``refused_at`` is epoch seconds.

    ``outcome``: ``unauthorized`` (bad credentials), ``invalid`` (the request broke the provider's rules),
    ``throttled`` (rate limit), ``transient`` (injected 5xx / SMTP 4xx), ``rejected`` (a permanent-failure
    address). ``status`` is the HTTP status or the SMTP reply code; ``code`` the provider's error code as
    text (WhatsApp ``error.code``, Twilio ``code``, the SMTP enhanced status code such as ``5.1.1``);
    ``reason`` says what was wrong. ``to`` and ``message_id`` are None when the request did not carry them
    (or they could not be read).
    """

    channel: str
    to: str | None
    outcome: str
    status: int
    code: str | None
    reason: str
    message_id: str | None
    refused_at: float

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
    * ``service_window_s`` -- how long after a number's last inbound message free-form WhatsApp text may be
      sent to it (the customer service window, 24 h).
    * ``open_service_window`` -- treat every number as inside the window (harnesses sending free-form text
      to audiences that never wrote in); off by default, as in production.
    * ``webhook_url`` -- where delivery callbacks go (the receiver's base URL, e.g. ``http://127.0.0.1:8090``);
      None (default) sends none. ``receipt_delay_ms`` (fixed or ``(min, max)``) before each callback,
      ``receipt_ratios`` and ``bounce_addresses``: see ``simulator/callbacks.py``.
    """

    latency_ms: tuple[float, float] = (0.0, 0.0)
    rate_limit_per_s: Mapping[str, int | None] = field(default_factory=lambda: dict.fromkeys(CHANNELS))
    transient_error_rate: Mapping[str, float] = field(default_factory=lambda: dict.fromkeys(CHANNELS, 0.0))
    permanent_failures: frozenset[str] = frozenset()
    seed: int | None = None
    transient_status: int = 503
    service_window_s: float = 24 * 3600.0
    open_service_window: bool = False
    webhook_url: str | None = None
    receipt_delay_ms: tuple[float, float] = (0.0, 0.0)
    receipt_ratios: Mapping[str, float] = field(default_factory=lambda: check_ratios({}))
    bounce_addresses: frozenset[str] = frozenset()

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
            elif key == "service_window_s":
                if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
                    raise ValueError(f"service_window_s: expected seconds > 0, got {value!r}")
                normalised[key] = float(value)
            elif key == "open_service_window":
                if not isinstance(value, bool):
                    raise ValueError(f"open_service_window: expected true or false, got {value!r}")
                normalised[key] = value
            elif key == "webhook_url":
                if value is not None and (not isinstance(value, str) or not value.startswith(("http://", "https://"))):
                    raise ValueError(f"webhook_url: expected an http(s) URL or null, got {value!r}")
                normalised[key] = value.rstrip("/") if value else None
            elif key == "receipt_delay_ms":
                normalised[key] = _check_latency(value)
            elif key == "receipt_ratios":
                normalised[key] = check_ratios(value)
            elif key == "bounce_addresses":
                if isinstance(value, str) or not isinstance(value, Iterable):
                    raise ValueError("bounce_addresses: expected a list of addresses")
                normalised[key] = frozenset(normalize_address(str(a)) for a in value)
        return replace(self, **normalised)

    def as_dict(self) -> dict[str, Any]:
        return {
            "latency_ms": list(self.latency_ms),
            "rate_limit_per_s": dict(self.rate_limit_per_s),
            "transient_error_rate": dict(self.transient_error_rate),
            "permanent_failures": sorted(self.permanent_failures),
            "seed": self.seed,
            "transient_status": self.transient_status,
            "service_window_s": self.service_window_s,
            "open_service_window": self.open_service_window,
            "webhook_url": self.webhook_url,
            "receipt_delay_ms": list(self.receipt_delay_ms),
            "receipt_ratios": dict(self.receipt_ratios),
            "bounce_addresses": sorted(self.bounce_addresses),
        }


# --------------------------------------------------------------------------- canned answers


# One encoder for every answer: ``json.dumps`` with options builds a new JSONEncoder on each call.
_ENCODER = json.JSONEncoder(separators=(",", ":"))


def _dumps(obj: Any) -> bytes:
    return _ENCODER.encode(obj).encode()


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
_SMS_PREFIX = "/sms/2010-04-01/Accounts/"
_SMS_SUFFIX = "/Messages.json"


_WA_TEXT_MAX = 4096
_SMS_BODY_MAX = 1600
_WA_COMPONENTS = ("header", "body", "button")


@dataclass(frozen=True, slots=True)
class _WaRefusal:
    """A Cloud API error answer: ``(#code) title`` with ``details`` in ``error_data`` (HTTP 400)."""

    code: int
    title: str
    details: str

    def body(self) -> bytes:
        return _wa_error(self.code, f"(#{self.code}) {self.title}", details=self.details)


def _invalid(details: str) -> _WaRefusal:
    return _WaRefusal(100, "Invalid parameter", details)


@dataclass(frozen=True, slots=True)
class _WaMessage:
    """A well-formed Cloud API send request (not yet checked against templates or the window)."""

    to: str
    kind: str  # "text" | "template"
    body: str
    message_id: str | None
    template_name: str | None = None
    language: str | None = None
    parameters: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """Template component type -> the parameters given (their ``text``, or ``""`` for non-text ones)."""


def _wa_peek(payload: Any) -> tuple[str | None, str | None]:
    """(to, our message id) of a request, as far as they can be read; for the refusal log."""
    if not isinstance(payload, dict):
        return None, None
    to, message_id = payload.get("to"), payload.get("biz_opaque_callback_data")
    return (to if isinstance(to, str) else None), (message_id if isinstance(message_id, str) else None)


def _template_components(components: Any) -> dict[str, tuple[str, ...]] | _WaRefusal:
    """Component type -> its parameters' texts; or why ``template.components`` is malformed."""
    if components is None:
        return {}
    if not isinstance(components, list):
        return _invalid("template.components must be an array")
    found: dict[str, list[str]] = {}
    for i, component in enumerate(components):
        kind = component.get("type") if isinstance(component, dict) else None
        if not isinstance(kind, str) or kind.lower() not in _WA_COMPONENTS:
            return _invalid(f"template.components[{i}].type must be one of {', '.join(_WA_COMPONENTS)}")
        assert isinstance(component, dict)
        params = component.get("parameters")
        if params is None:
            params = []
        if not isinstance(params, list):
            return _invalid(f"template.components[{i}].parameters must be an array")
        texts = found.setdefault(kind.lower(), [])
        for j, param in enumerate(params):
            ptype = param.get("type") if isinstance(param, dict) else None
            if not isinstance(ptype, str):
                return _invalid(f"template.components[{i}].parameters[{j}].type is required")
            assert isinstance(param, dict)
            if ptype == "text":
                text = param.get("text")
                if not isinstance(text, str) or not text:
                    return _WaRefusal(
                        131008,
                        "Required parameter is missing",
                        f"template.components[{i}].parameters[{j}]: text is required",
                    )
                if "\n" in text or "\t" in text or "    " in text:
                    return _WaRefusal(
                        132018,
                        "There was an issue with the parameters in your template",
                        f"template.components[{i}].parameters[{j}]: Param text cannot have new-line/tab characters "
                        "or more than 4 consecutive spaces",
                    )
                texts.append(text)
            else:
                texts.append("")
    return {kind: tuple(texts) for kind, texts in found.items()}


def _parse_whatsapp(payload: Any) -> _WaMessage | _WaRefusal:
    """The request, or the Cloud API error for a malformed one (shape only: no template or window rules)."""
    if not isinstance(payload, dict):
        return _invalid("request body must be a JSON object")
    if payload.get("messaging_product") != "whatsapp":
        return _invalid("messaging_product must be 'whatsapp'")
    to = payload.get("to")
    if not isinstance(to, str) or not _WA_NUMBER.match(to):
        return _invalid("to must be a phone number")
    message_id = payload.get("biz_opaque_callback_data")
    if message_id is not None and not isinstance(message_id, str):
        return _invalid("biz_opaque_callback_data must be a string")
    kind = payload.get("type", "text")
    if kind == "text":
        text = payload.get("text")
        body = text.get("body") if isinstance(text, dict) else None
        if not isinstance(body, str) or not body:
            return _WaRefusal(100, "The parameter text['body'] is required.", "text.body is required")
        if len(body) > _WA_TEXT_MAX:
            return _invalid(f"text.body must be at most {_WA_TEXT_MAX} characters, got {len(body)}")
        return _WaMessage(to, "text", body, message_id)
    if kind == "template":
        template = payload.get("template")
        if not isinstance(template, dict) or not isinstance(template.get("name"), str) or not template["name"]:
            return _WaRefusal(100, "The parameter template['name'] is required.", "template.name is required")
        language = template.get("language")
        if not isinstance(language, dict) or not isinstance(language.get("code"), str):
            return _WaRefusal(
                100, "The parameter template['language'] is required.", "template.language.code is required"
            )
        parameters = _template_components(template.get("components"))
        if isinstance(parameters, _WaRefusal):
            return parameters
        body = " ".join(t for t in parameters.get("body", ()) if t)
        return _WaMessage(to, "template", body, message_id, template["name"], language["code"], parameters)
    return _WaRefusal(131051, "Unsupported message type", f"message type {kind!r} is not supported")


def _check_registered(
    message: _WaMessage, templates: Mapping[tuple[str, str], Mapping[str, int]]
) -> _WaRefusal | None:
    """132001 for an unknown (name, language), 132000 when the parameter counts differ from it."""
    assert message.template_name is not None and message.language is not None
    expected = templates.get((message.template_name, message.language))
    if expected is None:
        return _WaRefusal(
            132001,
            "Template name does not exist in the translation",
            f"template name ({message.template_name}) does not exist in {message.language}",
        )
    for kind in _WA_COMPONENTS:  # header, body, button: the order the Cloud API reports them in
        given = len(message.parameters.get(kind, ()))
        wanted = expected.get(kind, 0)
        if given != wanted:
            return _WaRefusal(
                132000,
                "Number of parameters does not match the expected number of params",
                f"{kind}: number of localizable_params ({given}) does not match the expected number of "
                f"params ({wanted})",
            )
    return None


def template_registration(name: str, locale: str, body: str, header: str | None = None) -> dict[str, Any]:
    """How a project WhatsApp template is registered with the simulator: its name, the language code the
    transport sends for ``locale``, and one body parameter per distinct placeholder (in first-appearance
    order, which is the order the campaign service stores them in and the sender renders them in); with a
    text ``header`` (the template's ``subject``), its parameters too."""
    registration = {
        "name": name,
        "language": cloud_api_language(locale),
        "parameters": len(template_parameters_in_order(body)),
    }
    if header:
        registration["header_parameters"] = len(template_parameters_in_order(header))
    return registration


def _check_template_spec(spec: Any) -> tuple[str, str, int, int]:
    """(name, language, body parameters, header parameters) of a registration; ``ValueError`` naming what is
    wrong."""
    if not isinstance(spec, Mapping):
        raise ValueError(f"a template registration is an object {{name, language, parameters}}, got {spec!r}")
    unknown = set(spec) - {"name", "language", "parameters", "header_parameters"}
    if unknown:
        raise ValueError(f"template registration: unknown key(s) {sorted(unknown)}")
    name, language, count = spec.get("name"), spec.get("language"), spec.get("parameters", 0)
    header = spec.get("header_parameters", 0)
    if not isinstance(name, str) or not name:
        raise ValueError("template registration: name must be a non-empty string")
    if not isinstance(language, str) or not language:
        raise ValueError("template registration: language must be a language code such as en or en_US")
    if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= 100:
        raise ValueError(f"template registration: parameters must be a whole number 0..100, got {count!r}")
    if isinstance(header, bool) or not isinstance(header, int) or not 0 <= header <= 1:
        raise ValueError(f"template registration: header_parameters must be 0 or 1 (a text header), got {header!r}")
    return name, language, count, header


# Header field names: printable US-ASCII except the colon (RFC 5322 section 2.2).
_FIELD_NAME = re.compile(rb"^[!-9;-~]+$")
_MESSAGE_ID = re.compile(r"^<[^<>@\s]+@[^<>@\s]+>$")
_REQUIRED_ONCE = (("from", "From"), ("date", "Date"), ("message-id", "Message-ID"))


def _rfc5322_problem(content: bytes, *, smtp_utf8: bool = False) -> str | None:
    """The SMTP reply refusing ``content`` if it is not a well-formed RFC 5322 message, else None.

    ``554 5.6.0`` when the message cannot be parsed (a header line that is not ``Name: value`` or a folded
    continuation, 8-bit header bytes without SMTPUTF8, a line over 998 characters); ``550 5.7.1`` when a
    required header is missing, repeated or unparseable (From with an address, Date, Message-ID).
    """
    text = content.replace(b"\r\n", b"\n")
    head, separator, _ = text.partition(b"\n\n")
    lines = head.split(b"\n")
    if not separator and lines and lines[-1] == b"":
        lines.pop()
    fields: list[list[Any]] = []  # [lower-case name, raw value]
    for number, line in enumerate(lines, 1):
        if line[:1] in (b" ", b"\t"):
            if not fields:
                return "554 5.6.0 Message is not RFC 5322 compliant: it starts with a folded line"
            fields[-1][1] += b" " + line.strip()
            continue
        name, colon, value = line.partition(b":")
        if not colon or not _FIELD_NAME.match(name):
            return f"554 5.6.0 Message is not RFC 5322 compliant: header line {number} is not 'Name: value'"
        fields.append([name.decode("ascii").lower(), value.strip()])
    if not smtp_utf8 and not head.isascii():
        return "554 5.6.0 Message is not RFC 5322 compliant: 8-bit header without SMTPUTF8 (use RFC 2047)"
    if any(len(line) > 998 for line in text.split(b"\n")):
        return "554 5.6.0 Message is not RFC 5322 compliant: a line is longer than 998 characters"
    counts = Counter(name for name, _ in fields)
    values = {name: value.decode("utf-8", errors="replace") for name, value in fields}
    for key, shown in _REQUIRED_ONCE:
        if counts[key] != 1:
            what = "missing" if counts[key] == 0 else f"{counts[key]} of"
            return f"550 5.7.1 Message is not RFC 5322 compliant: {what} {shown} header (exactly one required)"
    try:
        parsedate_to_datetime(values["date"])
    except (TypeError, ValueError, IndexError):
        return "550 5.7.1 Message is not RFC 5322 compliant: the Date header is not a valid date"
    addresses = getaddresses([values["from"]])
    if not addresses or not all("@" in address and not address.startswith("@") for _, address in addresses):
        return "550 5.7.1 Message is not RFC 5322 compliant: the From header has no valid address"
    if not _MESSAGE_ID.match(values["message-id"]):
        return "550 5.7.1 Message is not RFC 5322 compliant: the Message-ID header is not <left@right>"
    return None


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
        templates: Iterable[Mapping[str, Any]] = (),
        webhook_secrets: WebhookSettings | None = None,
        **config_changes: Any,
    ) -> None:
        creds = credentials if credentials is not None else ProviderSettings()
        hooks = webhook_secrets if webhook_secrets is not None else WebhookSettings()
        self._callbacks = CallbackSender(CallbackSecrets(
            hooks.whatsapp_app_secret.get_secret_value(), creds.sms_account_sid,
            creds.sms_auth_token.get_secret_value(), hooks.email_secret.get_secret_value()))
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
        self.refused: list[RefusedRequest] = []
        self._templates: dict[tuple[str, str], dict[str, int]] = {}  # (name, language) -> component -> count
        for spec in templates:
            self.register_template(**spec)
        self._inbound: dict[str, float] = {}  # normalised number -> epoch s of its last inbound message
        self._stats = {ch: ChannelStats() for ch in CHANNELS}
        self._seen: dict[str, set[str]] = {ch: set() for ch in CHANNELS}
        self._windows: dict[str, deque[float]] = {ch: deque() for ch in CHANNELS}
        self._idempotency: dict[str, bytes] = {}
        self._rng = random.Random(self._config.seed)
        self._latency_rng = random.Random(_latency_seed(self._config.seed))
        self._run_tag = os.urandom(8).hex()
        self._seq = itertools.count(1)
        self._waiters: list[asyncio.Future[None]] = []
        self._control_routes: dict[tuple[str, str], Callable[[Request], Response]] = {}

        self._http: HttpServer | None = None
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
        if self._http is not None:
            raise RuntimeError("simulator already started")
        http_sock = _bind(self.host, self._requested_ports[0])
        smtp_sock = _bind(self.host, self._requested_ports[1])
        try:
            # A few fixed routes and a hand-written dispatch on the project's own lean server (simulator/http.py):
            # the simulator shares the benchmark's cores with the worker it answers.
            self._control_routes = {
                ("GET", "/_control/messages"): self._handle_messages,
                ("GET", "/_control/stats"): self._handle_stats,
                ("GET", "/_control/config"): self._handle_get_config,
                ("POST", "/_control/config"): self._handle_set_config,
                ("POST", "/_control/reset"): self._handle_reset,
                ("GET", "/_control/health"): self._handle_health,
                ("GET", "/_control/refused"): self._handle_refused,
                ("GET", "/_control/templates"): self._handle_get_templates,
                ("POST", "/_control/templates"): self._handle_register_templates,
                ("POST", "/_control/inbound"): self._handle_inbound,
                ("GET", "/_control/callbacks"): self._handle_callbacks,
            }
            self._http = HttpServer(self._dispatch)
            await self._http.start(http_sock, backlog=1024)
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
        await self._callbacks.close()
        if self._smtp_server is not None:
            self._smtp_server.close()
            self.drop_smtp_connections()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._smtp_server.wait_closed(), timeout=2.0)
            self._smtp_server = None
        if self._http is not None:
            await self._http.stop()
            self._http = None
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

    def register_template(self, name: str, language: str, parameters: int = 0, header_parameters: int = 0) -> None:
        """Register (or re-register) WhatsApp template ``name`` in ``language`` (a Cloud API language code,
        e.g. ``en`` or ``en_US``) with ``parameters`` body parameters and ``header_parameters`` (0 or 1) in a
        text header. ``ValueError`` if a value is invalid."""
        name, language, parameters, header_parameters = _check_template_spec(
            {"name": name, "language": language, "parameters": parameters, "header_parameters": header_parameters}
        )
        self._templates[(name, language)] = {"body": parameters, "header": header_parameters}

    def templates(self) -> list[dict[str, Any]]:
        """The registered templates, sorted by (name, language) (``header_parameters`` only when the template
        has a header parameter)."""
        return [
            {"name": name, "language": language, "parameters": counts["body"],
             **({"header_parameters": counts["header"]} if counts["header"] else {})}
            for (name, language), counts in sorted(self._templates.items())
        ]

    def record_inbound(self, number: str, at: float | None = None) -> None:
        """Record that ``number`` wrote to the business at ``at`` (epoch s, default now): free-form text may
        be sent to it for ``service_window_s`` afterwards."""
        if not isinstance(number, str) or not _WA_NUMBER.match(number.translate(_PHONE_PUNCT)):
            raise ValueError(f"inbound: from must be a phone number, got {number!r}")
        when = time.time() if at is None else at
        if isinstance(when, bool) or not isinstance(when, int | float) or not math.isfinite(when):
            raise ValueError(f"inbound: at must be epoch seconds, got {at!r}")
        key = normalize_address(number)
        self._inbound[key] = max(float(when), self._inbound.get(key, -math.inf))

    def in_service_window(self, number: str, now: float | None = None) -> bool:
        """Whether free-form text may be sent to ``number`` at ``now`` (epoch s, default now)."""
        if self._config.open_service_window:
            return True
        last = self._inbound.get(normalize_address(number))
        if last is None:
            return False
        now = time.time() if now is None else now
        return now - last < self._config.service_window_s

    def reset(self) -> None:
        """Forget both logs, stats, idempotency keys, rate windows and pending ``fail_next``; keep the
        config, the registered templates and the inbound messages (account and customer state)."""
        self.messages.clear()
        self.refused.clear()
        self._stats = {ch: ChannelStats() for ch in CHANNELS}
        self._seen = {ch: set() for ch in CHANNELS}
        self._windows = {ch: deque() for ch in CHANNELS}
        self._idempotency.clear()
        self._fail_next = dict.fromkeys(CHANNELS, 0)
        self._rng.seed(self._config.seed)
        self._latency_rng.seed(_latency_seed(self._config.seed))
        self._callbacks.reset()

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

    def query_refused(
        self,
        *,
        channel: str | None = None,
        since: float | None = None,
        message_id: str | None = None,
        to: str | None = None,
    ) -> list[RefusedRequest]:
        """Refused requests, oldest first; ``since`` keeps those refused strictly after it (epoch s)."""
        return [
            r
            for r in self.refused
            if (channel is None or r.channel == channel)
            and (since is None or r.refused_at > since)
            and (message_id is None or r.message_id == message_id)
            and (to is None or r.to == to)
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
        template_language: str | None = None,
        template_parameters: tuple[str, ...] = (),
        template_components: Mapping[str, tuple[str, ...]] | None = None,
        html_body: str | None = None,
        headers: Mapping[str, str] | None = None,
        status_callback: str | None = None,
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
                channel,
                to,
                body,
                message_id,
                provider_id,
                time.time(),
                subject,
                template_name,
                sender,
                template_language,
                template_parameters,
                dict(template_components or {}),
                html_body,
                dict(headers or {}),
            )
        )
        config = self._config
        if config.webhook_url is not None:
            self._callbacks.schedule(
                config.webhook_url, channel, to, sender, provider_id,
                plan_callbacks(config.seed, channel, normalize_address(to), config.receipt_ratios,
                               config.receipt_delay_ms, normalize_address(to) in config.bounce_addresses),
                status_callback,
            )
        if self._waiters:
            self._notify()

    def _refuse(
        self,
        channel: str,
        to: str | None,
        outcome: str,
        status: int,
        code: int | str | None,
        reason: str,
        message_id: str | None = None,
    ) -> None:
        """Log a refused request (the counters are the caller's)."""
        refusal = RefusedRequest(
            channel, to, outcome, status, None if code is None else str(code), reason, message_id, time.time()
        )
        self.refused.append(refusal)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("refused %s request to %s: %s %s %s", channel, to, status, refusal.code, reason)

    def _delay_s(self) -> float:
        low, high = self._config.latency_ms
        if high <= 0.0:
            return 0.0
        if low == high:
            return low / 1000.0
        return self._latency_rng.uniform(low, high) / 1000.0

    def _reply(
        self, status: int, body: bytes, headers: Mapping[str, str] | None = None
    ) -> Response:
        if self._waiters:  # every outcome has been counted by now
            self._notify()
        # The configured latency is waited by the server, which writes the answer that much later.
        return Response(status, body, headers=headers, delay_s=self._delay_s())

    # ---------------------------------------------------------------- routing

    def _dispatch(self, request: Request) -> Response:
        path = request.path
        if request.method == "POST":
            if path.startswith(_SMS_PREFIX) and path.endswith(_SMS_SUFFIX):
                sid = path[len(_SMS_PREFIX) : -len(_SMS_SUFFIX)]
                if sid and "/" not in sid:
                    return self._handle_sms(request, sid)
            elif path.startswith("/whatsapp/"):
                parts = path.split("/")  # "", "whatsapp", version, phone_number_id, "messages"
                if len(parts) == 5 and parts[4] == "messages" and parts[2] and parts[3]:
                    return self._handle_whatsapp(request, parts[3])
        handler = self._control_routes.get((request.method, path))
        if handler is not None:
            return handler(request)
        if any(p == path for _, p in self._control_routes):
            return json_response({"error": "method not allowed"}, status=405)
        return json_response({"error": f"no such endpoint: {request.method} {path}"}, status=404)

    # ---------------------------------------------------------------- WhatsApp

    def _handle_whatsapp(self, request: Request, phone_number_id: str) -> Response:
        stats = self._stats["whatsapp"]
        raw = request.body
        try:
            payload = json.loads(raw)
        except ValueError:
            payload = None
        if not _same(request.header("Authorization"), self._wa_auth):
            stats.unauthorized += 1
            to, message_id = _wa_peek(payload)
            self._refuse("whatsapp", to, "unauthorized", 401, 190, "invalid OAuth access token", message_id)
            return self._reply(401, _WA_UNAUTHORIZED)
        parsed = _parse_whatsapp(payload)
        if isinstance(parsed, _WaMessage):
            if parsed.kind == "template":
                refusal = _check_registered(parsed, self._templates)
            elif not self.in_service_window(parsed.to):
                refusal = _WaRefusal(
                    131047,
                    "Re-engagement message",
                    "Message failed to send because more than 24 hours have passed since the customer "
                    "last replied to this number.",
                )
            else:
                refusal = None
            if refusal is None:
                return self._whatsapp_decide(parsed, phone_number_id)
        else:
            refusal = parsed
        stats.permanent_errors += 1
        to, message_id = _wa_peek(payload)
        self._refuse("whatsapp", to, "invalid", 400, refusal.code, f"{refusal.title}: {refusal.details}", message_id)
        return self._reply(400, refusal.body())

    def _whatsapp_decide(self, message: _WaMessage, phone_number_id: str) -> Response:
        to, message_id = message.to, message.message_id
        verdict, wait_s = self._decide("whatsapp", to)
        if verdict == _THROTTLED:
            self._refuse("whatsapp", to, "throttled", 429, 130429, "rate limit hit", message_id)
            return self._reply(429, _WA_THROTTLED, {"Retry-After": str(max(1, math.ceil(wait_s)))})
        if verdict == _TRANSIENT:
            status = self._config.transient_status
            self._refuse("whatsapp", to, "transient", status, 131016, "service unavailable (injected)", message_id)
            return self._reply(status, _WA_TRANSIENT)
        if verdict == _PERMANENT:
            self._refuse("whatsapp", to, "rejected", 400, 131026, "message undeliverable", message_id)
            return self._reply(400, _WA_INVALID_NUMBER)
        wamid = f"wamid.SIM{self._run_tag}{next(self._seq):012d}"
        self._accept(
            "whatsapp",
            to,
            message.body,
            message_id,
            wamid,
            template_name=message.template_name,
            sender=phone_number_id,
            template_language=message.language,
            template_parameters=message.parameters.get("body", ()),
            template_components=message.parameters,
        )
        wa_id = to.lstrip("+")
        answer = _dumps(
            {
                "messaging_product": "whatsapp",
                "contacts": [{"input": to, "wa_id": wa_id}],
                "messages": [{"id": wamid, "message_status": "accepted"}],
            }
        )
        return self._reply(200, answer)

    # ---------------------------------------------------------------- SMS

    def _handle_sms(self, request: Request, sid: str) -> Response:
        stats = self._stats["sms"]
        form = request.form()
        key = request.header("Idempotency-Key")
        to, sender, body = form.get("To"), form.get("From"), form.get("Body")
        shown_to = to if isinstance(to, str) and to else None
        if sid != self._sms_sid or not _same(request.header("Authorization"), self._sms_auth):
            stats.unauthorized += 1
            self._refuse("sms", shown_to, "unauthorized", 401, 20003, "authenticate", key)
            return self._reply(401, _SMS_UNAUTHORIZED)
        if key is not None:
            previous = self._idempotency.get(key)
            if previous is not None:
                stats.idempotent_replays += 1
                return self._reply(201, previous)
        if not isinstance(sender, str) or not sender:
            service = form.get("MessagingServiceSid")
            sender = service if isinstance(service, str) and service else None
        problem: tuple[int, str] | None = None
        if not isinstance(to, str) or not to:
            problem = (21604, "A 'To' phone number is required.")
        elif sender is None:
            problem = (21603, "A 'From' phone number is required.")
        elif not isinstance(body, str) or not body:
            problem = (21602, "Message body is required.")
        elif not _E164.match(to):
            problem = (21211, f"The 'To' number {to} is not a valid phone number.")
        elif len(body) > _SMS_BODY_MAX:
            problem = (21617, f"The concatenated message body exceeds the {_SMS_BODY_MAX} character limit.")
        if problem is not None:
            stats.permanent_errors += 1
            self._refuse("sms", shown_to, "invalid", 400, problem[0], problem[1], key)
            return self._reply(400, _sms_error(problem[0], problem[1], 400))
        assert isinstance(to, str) and isinstance(body, str) and isinstance(sender, str)
        verdict, wait_s = self._decide("sms", to)
        if verdict == _THROTTLED:
            self._refuse("sms", to, "throttled", 429, 20429, "too many requests", key)
            return self._reply(429, _SMS_THROTTLED, {"Retry-After": str(max(1, math.ceil(wait_s)))})
        if verdict == _TRANSIENT:
            status = self._config.transient_status
            self._refuse("sms", to, "transient", status, 20503, "service unavailable (injected)", key)
            return self._reply(status, _sms_error(20503, "Service Unavailable", status))
        if verdict == _PERMANENT:
            self._refuse("sms", to, "rejected", 400, 21211, "the 'To' number is not a valid phone number", key)
            return self._reply(400, _SMS_INVALID_NUMBER)
        sid = f"SM{self._run_tag}{next(self._seq):016x}"
        callback = form.get("StatusCallback")
        self._accept("sms", to, body, key, sid, sender=sender,
                     status_callback=callback if isinstance(callback, str) and callback else None)
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
        return self._reply(201, answer)

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
            self._refuse("email", None, "unauthorized", 535, "5.7.8", "authentication credentials invalid")
            if self._waiters:
                self._notify()
        return AuthResult(success=ok, handled=False)

    def _smtp_rcpt(self, address: str) -> str | None:
        """Refusal for RCPT, or None to accept the recipient."""
        failures = self._config.permanent_failures
        if failures and normalize_address(address) in failures:
            self._stats["email"].permanent_errors += 1
            self._refuse("email", address, "rejected", 550, "5.1.1", "recipient address rejected: user unknown")
            if self._waiters:
                self._notify()
            return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"
        return None

    async def _smtp_data(self, envelope: Envelope) -> str:
        content = envelope.content if isinstance(envelope.content, bytes) else str(envelope.content).encode()
        recipients = list(envelope.rcpt_tos)
        first = recipients[0] if recipients else None
        mail = _ReceivedEmail(content)  # split and parsed once for the checks and the recorders below
        reply: str | None = _rfc5322_problem(content, smtp_utf8=envelope.smtp_utf8) or _mime_problem(mail)
        if reply is not None:
            self._stats["email"].permanent_errors += 1
            code, enhanced, reason = reply.split(" ", 2)
            self._refuse("email", first, "invalid", int(code), enhanced, reason, _email_message_id(content))
        else:
            # One decision per transaction (our transport sends one recipient per message).
            verdict, _ = self._decide("email", first or "")
            if verdict == _THROTTLED:
                reply = "451 4.7.0 Rate limit exceeded, try again later"
            elif verdict == _TRANSIENT:
                reply = "451 4.3.0 Temporary local problem, try again later"
            elif verdict == _PERMANENT:
                reply = "550 5.1.1 Recipient address rejected: User unknown"
            if reply is not None:
                outcome = {_THROTTLED: "throttled", _TRANSIENT: "transient"}.get(verdict, "rejected")
                code, enhanced, reason = reply.split(" ", 2)
                self._refuse("email", first, outcome, int(code), enhanced, reason, _email_message_id(content))
        if reply is None:
            message_id, subject, body = _parse_email(mail)
            html_body, headers = _email_extras(mail)
            queue_id = f"SIM{self._run_tag[:8]}{next(self._seq):010d}"
            for rcpt in recipients:
                self._accept(
                    "email", rcpt, body, message_id, queue_id, subject=subject, sender=envelope.mail_from,
                    html_body=html_body, headers=headers,
                )
            reply = f"250 2.0.0 Ok: queued as {queue_id}"
        if self._waiters:
            self._notify()
        delay = self._delay_s()
        if delay > 0.0:
            await asyncio.sleep(delay)
        return reply

    # ---------------------------------------------------------------- control API

    def _handle_messages(self, request: Request) -> Response:
        q = request.query
        try:
            since = float(q["since"]) if "since" in q else None
        except ValueError:
            return json_response({"error": "since must be epoch seconds"}, status=400)
        channel = q.get("channel")
        if channel is not None and channel not in CHANNELS:
            return json_response({"error": f"unknown channel {channel!r}"}, status=400)
        found = self.query(channel=channel, since=since, message_id=q.get("message_id"), to=q.get("to"))
        return Response(
            body=_dumps({"count": len(found), "messages": [m.as_dict() for m in found]})
        )

    def _handle_refused(self, request: Request) -> Response:
        q = request.query
        try:
            since = float(q["since"]) if "since" in q else None
        except ValueError:
            return json_response({"error": "since must be epoch seconds"}, status=400)
        channel = q.get("channel")
        if channel is not None and channel not in CHANNELS:
            return json_response({"error": f"unknown channel {channel!r}"}, status=400)
        found = self.query_refused(channel=channel, since=since, message_id=q.get("message_id"), to=q.get("to"))
        return Response(
            body=_dumps({"count": len(found), "refused": [r.as_dict() for r in found]})
        )

    def _handle_get_templates(self, request: Request) -> Response:
        return json_response({"templates": self.templates()})

    def _handle_register_templates(self, request: Request) -> Response:
        """``{"name", "language", "parameters"}`` or a list of them; all or none are registered."""
        try:
            body = json.loads(request.body or b"null")
            specs = [_check_template_spec(spec) for spec in (body if isinstance(body, list) else [body])]
        except ValueError as exc:
            return json_response({"error": str(exc)}, status=400)
        for name, language, count, header in specs:
            self.register_template(name, language, count, header)
        return json_response({"templates": self.templates()})

    def _handle_inbound(self, request: Request) -> Response:
        """``{"from": number or [numbers], "at": epoch s (default now)}``: these customers wrote in."""
        try:
            body = json.loads(request.body or b"null")
            if not isinstance(body, dict) or "from" not in body or set(body) - {"from", "at"}:
                raise ValueError('expected {"from": number or [numbers], "at": epoch seconds (optional)}')
            numbers = body["from"] if isinstance(body["from"], list) else [body["from"]]
            for number in numbers:  # validate every one before recording any
                if not isinstance(number, str) or not _WA_NUMBER.match(number.translate(_PHONE_PUNCT)):
                    raise ValueError(f"inbound: from must be a phone number, got {number!r}")
            at = body.get("at")
            for number in numbers:
                self.record_inbound(number, at)
        except ValueError as exc:
            return json_response({"error": str(exc)}, status=400)
        return json_response({"ok": True, "recorded": len(numbers)})

    def _handle_callbacks(self, request: Request) -> Response:
        """The delivery callbacks acknowledged (2xx) by the webhook receiver, per channel and status."""
        return json_response(self._callbacks.counts())

    def callbacks(self) -> dict[str, Any]:
        return self._callbacks.counts()

    def _handle_stats(self, request: Request) -> Response:
        return json_response(self.stats())

    def _handle_get_config(self, request: Request) -> Response:
        return json_response(self._config_view())

    def _handle_set_config(self, request: Request) -> Response:
        try:
            changes = json.loads(request.body or b"{}")
            if not isinstance(changes, dict):
                raise ValueError("expected a JSON object of settings")
            self.configure(**changes)
        except ValueError as exc:
            return json_response({"error": str(exc)}, status=400)
        return json_response(self._config_view())

    def _handle_reset(self, request: Request) -> Response:
        self.reset()
        return json_response({"ok": True})

    def _handle_health(self, request: Request) -> Response:
        return json_response({"ok": True, "http_port": self.http_port, "smtp_port": self.smtp_port})

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


def _email_message_id(content: bytes) -> str | None:
    """Our message id in a (possibly malformed) message, for the refusal log; None if absent."""
    head = content.replace(b"\r\n", b"\n").partition(b"\n\n")[0]
    headers = _raw_headers(head)
    return headers.get("x-campaign-message-id") or headers.get("message-id", "").strip("<>") or None


_RECORDED_HEADERS = ("content-type", "list-unsubscribe", "list-unsubscribe-post")
_LIST_URI = re.compile(r"<([^<>\s]+)>")


class _ReceivedEmail:
    """A received message with LF line ends: its head, body and raw headers, and the stdlib's ``compat32`` parse of
    it made on first use. The MIME check and the two recorders share that one parse (a multipart message, as each
    of our emails is, used to be parsed three times: the parses were a third of the simulator's time on an email
    campaign)."""

    __slots__ = ("_message", "body", "head", "headers", "text")

    def __init__(self, content: bytes) -> None:
        self.text = content.replace(b"\r\n", b"\n")
        self.head, _, self.body = self.text.partition(b"\n\n")
        self.headers = _raw_headers(self.head)
        self._message: Message | None = None

    @property
    def message(self) -> Message:
        """The parsed message (read only: the callers walk it and decode payloads, none changes it)."""
        if self._message is None:
            self._message = BytesParser(policy=email_policy.compat32).parsebytes(self.text)
        return self._message


def _mime_problem(mail: _ReceivedEmail) -> str | None:
    """The SMTP reply refusing a message whose MIME structure or list headers are wrong, else None.

    ``554 5.6.0`` for MIME: a multipart without a boundary, a missing first or closing boundary, a
    ``multipart/alternative`` whose parts are not text (or fewer than two), a part without a Content-Type.
    ``550 5.7.1`` for ``List-Unsubscribe`` that is not a list of ``<URI>`` (mailto:, http:, https:), or a
    ``List-Unsubscribe-Post`` that is not ``List-Unsubscribe=One-Click`` or comes without an http(s) URI
    (RFC 8058 section 3.1).
    """
    headers = mail.headers
    content_type, _, params = headers.get("content-type", "text/plain").partition(";")
    content_type = content_type.strip().lower()
    if content_type.startswith("multipart/"):
        boundary = None
        for param in params.split(";"):
            key, _, value = param.partition("=")
            if key.strip().lower() == "boundary":
                boundary = value.strip().strip('"')
        if not boundary:
            return "554 5.6.0 MIME: multipart without a boundary parameter"
        lines = mail.body.split(b"\n")
        delimiter, close = b"--" + boundary.encode(), b"--" + boundary.encode() + b"--"
        if not any(line.rstrip() == delimiter for line in lines):
            return "554 5.6.0 MIME: the multipart body has no part (no boundary line)"
        if not any(line.rstrip() == close for line in lines):
            return "554 5.6.0 MIME: the multipart body has no closing boundary"
        message = mail.message
        if message.defects:
            return f"554 5.6.0 MIME: {type(message.defects[0]).__name__}"
        parts = message.get_payload()
        if not isinstance(parts, list):
            return "554 5.6.0 MIME: the multipart body could not be split into parts"
        if any(part.get("content-type") is None for part in parts):
            return "554 5.6.0 MIME: a part without a Content-Type"
        if content_type == "multipart/alternative" and (
                len(parts) < 2 or any(part.get_content_maintype() != "text" for part in parts)):
            return "554 5.6.0 MIME: multipart/alternative needs at least two text parts"
    unsubscribe, post = headers.get("list-unsubscribe"), headers.get("list-unsubscribe-post")
    if unsubscribe is not None:
        uris = _LIST_URI.findall(unsubscribe)
        leftover = _LIST_URI.sub("", unsubscribe).replace(",", "").strip()
        if not uris or leftover or not all(u.startswith(("mailto:", "http:", "https:")) for u in uris):
            return "550 5.7.1 List-Unsubscribe must be a list of <mailto:...> or <https://...> URIs"
    if post is not None:
        if post.strip() != "List-Unsubscribe=One-Click":
            return "550 5.7.1 List-Unsubscribe-Post must be List-Unsubscribe=One-Click (RFC 8058)"
        if unsubscribe is None or not any(u.startswith(("http:", "https:")) for u in _LIST_URI.findall(unsubscribe)):
            return "550 5.7.1 List-Unsubscribe-Post needs an http(s) URI in List-Unsubscribe (RFC 8058)"
    return None


def _email_extras(mail: _ReceivedEmail) -> tuple[str | None, dict[str, str]]:
    """(the text/html part or body, the recorded headers) of a received message."""
    headers = mail.headers
    recorded = {name: headers[name] for name in _RECORDED_HEADERS if name in headers}
    content_type = headers.get("content-type", "text/plain").split(";")[0].strip().lower()
    if content_type == "text/html" or content_type.startswith("multipart/"):
        for part in mail.message.walk():
            if part.get_content_type() == "text/html":
                payload = part.get_payload(decode=True)
                if isinstance(payload, bytes):
                    html = payload.decode(part.get_content_charset() or "utf-8", errors="replace")
                    return html.replace("\r\n", "\n").rstrip("\n"), recorded
    return None, recorded


def _parse_email(mail: _ReceivedEmail) -> tuple[str | None, str | None, str]:
    """(our message id, subject, text body) of a received message.

    Single-part text messages (what our transport sends) take a hand-written fast path; anything else
    the stdlib's legacy ``compat32`` parser. (The modern email policy's header registry costs
    milliseconds per message, and even ``compat32`` a few hundred microseconds.)
    """
    raw_body, headers = mail.body, mail.headers
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
        part = None
        for candidate in mail.message.walk():
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
