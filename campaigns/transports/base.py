"""The transport port: what a channel sender hands a provider, and what it gets back.

A transport delivers one :class:`OutgoingMessage` per call and either returns a :class:`SendReceipt` or
raises one of the project's delivery errors:

* :class:`~campaigns.errors.ThrottledError` -- the provider throttled us (retry later, slow down);
* :class:`~campaigns.errors.TransientDeliveryError` -- timeouts, connection errors, 5xx, SMTP 4xx;
* :class:`~campaigns.errors.PermanentDeliveryError` -- will never succeed as is (bad address, rejected).

Nothing else escapes ``send`` on purpose. No error, repr or log line carries a credential.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from campaigns.core.vocabulary import CHANNELS


@dataclass(frozen=True, slots=True, kw_only=True)
class OutgoingMessage:
    """One rendered message for one recipient on one channel.

    ``message_id`` is the deterministic id of this (campaign, recipient) message; transports pass it to
    the provider (idempotency key, correlation data, Message-ID) so a redelivery can be recognised.
    ``template_parameters`` fill a WhatsApp template's body variables in order, ``header_parameters`` its text
    header's; other channels ignore them.
    Email only: ``text_body`` is the text/plain alternative of the HTML ``body`` (sent as
    ``multipart/alternative``), ``list_unsubscribe`` the recipient's one-click unsubscribe URIs (https, then
    mailto) for ``List-Unsubscribe`` / ``List-Unsubscribe-Post`` (RFC 8058).
    """

    message_id: str
    campaign_id: str
    recipient_id: str
    channel: str
    address: str
    body: str
    subject: str | None = None
    template_name: str | None = None
    template_parameters: tuple[str, ...] = ()
    header_parameters: tuple[str, ...] = ()
    locale: str
    text_body: str | None = None
    list_unsubscribe: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.channel not in CHANNELS:
            raise ValueError(f"unknown channel {self.channel!r}; expected one of {', '.join(CHANNELS)}")


@dataclass(frozen=True, slots=True)
class SendReceipt:
    """What the provider answered when it accepted a message.

    ``provider_message_id`` is the provider's id (WhatsApp ``wamid.*``, SMS ``SM*``, the SMTP queue id or
    our Message-ID); ``None`` only when the provider accepted (2xx/250) without returning one.
    """

    provider_message_id: str | None


@runtime_checkable
class Transport(Protocol):
    """A channel adapter. Safe to call ``send`` concurrently from many tasks on one event loop.

    A transport whose calls share a bounded pool says how many it carries at once in ``concurrency`` (an int
    attribute; absent or ``None``: unbounded). The sender never runs more calls than that: the extra ones would
    only queue inside the transport, each paying for a waiter and a timer while its time budget runs.

    A transport that ends every call by a deadline it is given says so with ``honours_deadline = True``: the
    sender then calls ``send(message, deadline=...)`` (an absolute time of the running event loop's clock,
    ``loop.time()``) instead of arming a timer of its own around the call, and the call must have ended (sent, or
    raised; a call cut at its deadline raises ``TransientDeliveryError("timeout")``) by then. Without it the
    sender cuts the call itself (``asyncio.timeout``).
    """

    channel: str

    async def send(self, message: OutgoingMessage) -> SendReceipt:
        """Deliver ``message`` once; raise Throttled/Transient/PermanentDeliveryError if not delivered."""
        ...

    async def aclose(self) -> None:
        """Release pooled connections. The transport must not be used afterwards."""
        ...
