"""Email over SMTP (aiosmtplib) with a small pool of reusable connections.

Each pooled connection carries one message at a time (MAIL, RCPT, DATA); the pool keeps up to
``smtp_pool_size`` of them open so a burst does not reconnect (and re-run EHLO/STARTTLS/AUTH) per
message. A connection that the server closed while idle is replaced transparently, once, when MAIL
fails on it -- nothing was sent yet at that point, so this cannot duplicate a message.

Failure reasons follow the HTTP transports': ``connect_error`` / ``connect_timeout`` when the
connection failed before DATA (nothing was handed over: a retry cannot duplicate), ``timeout`` /
``connection_error`` when it failed during DATA (the relay may have queued the message).

Every message carries ``Message-ID: <message_id@from-domain>`` and ``X-Campaign-Message-Id``. Replies are
classified by :func:`~campaigns.transports.classify.smtp_reply_error` (4xx transient, ``4.7.x``
throttled, 5xx permanent). The password is only handed to aiosmtplib at connect time and never
appears in an error, a repr or a log line written here.
"""

from __future__ import annotations

import asyncio
import binascii
import logging
import re
import ssl
from email.header import Header
from email.utils import formatdate

import aiosmtplib

from campaigns.errors import DeliveryError, PermanentDeliveryError, TransientDeliveryError
from campaigns.settings import ProviderSettings

from .base import OutgoingMessage, SendReceipt
from .classify import smtp_reply_error

log = logging.getLogger(__name__)

_QUEUED_AS = re.compile(r"queued as ([^\s;]+)", re.IGNORECASE)
_LOOKS_LIKE_HTML = re.compile(r"^\s*<(?:!doctype|html|body|div|p|table|span|a|h[1-6]|br)\b", re.IGNORECASE)


_SAFE_ID = re.compile(r"^[A-Za-z0-9._%+=:-]{1,200}$")


def _header_value(text: str) -> str:
    """A header value: as is when short ASCII, else RFC 2047 encoded-words (folded with CRLF)."""
    if text.isascii() and len(text) <= 900:
        return text
    return Header(text, "utf-8").encode(linesep="\r\n")


def _qp(text: str) -> bytes:
    encoded = binascii.b2a_qp(text.replace("\r\n", "\n").encode("utf-8")).replace(b"\n", b"\r\n")
    return encoded + (b"" if encoded.endswith(b"\r\n") else b"\r\n")


def build_email(message: OutgoingMessage, *, sender: str, domain: str, date: str | None = None) -> bytes:
    """The RFC 5322 bytes (CRLF line ends) for ``message``; ``date`` defaults to now.

    Written by hand rather than with ``email.message.EmailMessage``: the stdlib header registry cost
    ~2 ms of CPU per message here, more than the rest of an SMTP send. With a ``text_body`` the message is
    ``multipart/alternative``: the text part first, then the HTML ``body`` (the last part is the preferred
    one, RFC 2046). Without one, a body that starts with an HTML element is sent as ``text/html``, anything
    else as ``text/plain``. Every part UTF-8, quoted-printable; the boundary starts with ``=_``, which
    quoted-printable text can never contain. With ``list_unsubscribe`` URIs the message carries
    ``List-Unsubscribe`` and, when one is an http(s) URI, ``List-Unsubscribe-Post: List-Unsubscribe=One-Click``
    (RFC 8058).

    Raises :class:`PermanentDeliveryError` (``invalid_message``) for values that cannot be put in a header
    (line breaks: header injection) or a message id that cannot be part of a Message-ID.
    """
    subject = message.subject or ""
    for value in (sender, message.address, subject, message.campaign_id, *message.list_unsubscribe):
        if "\r" in value or "\n" in value:
            raise PermanentDeliveryError("invalid_message")
    if not _SAFE_ID.match(message.message_id):  # it goes inside Message-ID's angle brackets
        raise PermanentDeliveryError("invalid_message")
    if any(not uri.isascii() or any(c in uri for c in "<> ,") for uri in message.list_unsubscribe):
        raise PermanentDeliveryError("invalid_message")
    head = (
        f"From: {sender}\r\n"
        f"To: {message.address}\r\n"
        f"Subject: {_header_value(subject)}\r\n"
        f"Date: {date or formatdate(usegmt=True)}\r\n"
        f"Message-ID: <{message.message_id}@{domain}>\r\n"
        f"X-Campaign-Message-Id: {message.message_id}\r\n"
        f"X-Campaign-Id: {_header_value(message.campaign_id)}\r\n"
    )
    if message.list_unsubscribe:
        head += "List-Unsubscribe: " + ",\r\n ".join(f"<{uri}>" for uri in message.list_unsubscribe) + "\r\n"
        if any(uri.startswith(("https:", "http:")) for uri in message.list_unsubscribe):
            head += "List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
    head += "MIME-Version: 1.0\r\n"
    part_head = 'Content-Type: text/{}; charset="utf-8"\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n'
    if message.text_body is not None:
        boundary = f"=_campaigns_{message.message_id}"
        head += f'Content-Type: multipart/alternative; boundary="{boundary}"\r\n\r\n'
        return b"".join((
            head.encode("ascii"),
            f"--{boundary}\r\n{part_head.format('plain')}".encode("ascii"),
            _qp(message.text_body),
            f"--{boundary}\r\n{part_head.format('html')}".encode("ascii"),
            _qp(message.body),
            f"--{boundary}--\r\n".encode("ascii"),
        ))
    subtype = "html" if _LOOKS_LIKE_HTML.match(message.body) else "plain"
    return (head + part_head.format(subtype)).encode("ascii") + _qp(message.body)


class _Pool:
    """At most ``size`` connections; idle ones are reused LIFO (the warmest first)."""

    def __init__(self, settings: ProviderSettings, size: int) -> None:
        self._settings = settings
        self._size = size
        self._idle: list[aiosmtplib.SMTP] = []
        self._slots: asyncio.Semaphore | None = None
        self._closed = False
        self._local_hostname = settings.smtp_from.rpartition("@")[2] or "localhost"

    def _slots_sem(self) -> asyncio.Semaphore:
        if self._slots is None:
            self._slots = asyncio.Semaphore(self._size)
        return self._slots

    def _new_client(self) -> aiosmtplib.SMTP:
        s = self._settings
        return aiosmtplib.SMTP(
            hostname=s.smtp_host,
            port=s.smtp_port,
            local_hostname=self._local_hostname,  # never socket.getfqdn(): it can block on DNS
            timeout=s.timeout_s,
            use_tls=s.smtp_use_tls,
            start_tls=True if s.smtp_starttls else False,
            validate_certs=s.smtp_validate_certs,
            cert_bundle=s.smtp_cert_bundle,
        )

    async def connect(self) -> aiosmtplib.SMTP:
        client = self._new_client()
        s = self._settings
        try:
            await client.connect()
            if s.smtp_username is not None:
                # Log in ourselves (not via aiosmtplib's connect) to tell "AUTH not offered" (a config
                # problem) from a network error without reading reply text.
                if client.last_ehlo_response is None:  # connect() only says EHLO when it upgraded to TLS
                    await client.ehlo()
                if not client.supports_extension("auth"):
                    raise aiosmtplib.SMTPNotSupported("AUTH not offered")
                password = s.smtp_password.get_secret_value() if s.smtp_password is not None else ""
                await client.login(s.smtp_username, password)
        except aiosmtplib.SMTPResponseException as exc:  # greeting, EHLO, STARTTLS or AUTH refused
            client.close()
            error = smtp_reply_error(exc.code, exc.message) or TransientDeliveryError("connect_error")
            raise error from exc
        except aiosmtplib.SMTPNotSupported as exc:  # STARTTLS or AUTH required but not offered
            client.close()
            raise PermanentDeliveryError("unsupported_by_server") from exc
        except (aiosmtplib.SMTPTimeoutError, TimeoutError) as exc:
            client.close()
            raise TransientDeliveryError("connect_timeout") from exc
        except (aiosmtplib.SMTPException, OSError, ssl.SSLError) as exc:
            client.close()
            raise TransientDeliveryError("connect_error") from exc
        return client

    async def acquire(self) -> tuple[aiosmtplib.SMTP, bool]:
        """A connection and whether it was reused from the idle list."""
        if self._closed:
            raise RuntimeError("SmtpTransport is closed")
        await self._slots_sem().acquire()
        try:
            while self._idle:
                client = self._idle.pop()
                if client.is_connected:
                    return client, True
                client.close()
            return await self.connect(), False
        except BaseException:
            self._slots_sem().release()
            raise

    def release(self, client: aiosmtplib.SMTP, *, reusable: bool) -> None:
        if reusable and client.is_connected and not self._closed:
            self._idle.append(client)
        else:
            client.close()
        self._slots_sem().release()

    async def aclose(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for client in idle:
            try:
                await asyncio.wait_for(client.quit(), timeout=1.0)
            except (aiosmtplib.SMTPException, OSError, TimeoutError):
                pass
            finally:
                client.close()


class SmtpTransport:
    """Email through an SMTP relay; STARTTLS / implicit TLS / AUTH as configured in ProviderSettings."""

    channel = "email"

    def __init__(self, settings: ProviderSettings) -> None:
        if settings.smtp_use_tls and settings.smtp_starttls:
            raise ValueError("smtp_use_tls and smtp_starttls are mutually exclusive")
        self._sender = settings.smtp_from
        self._domain = settings.smtp_from.rpartition("@")[2] or "localhost"
        self._target = f"{settings.smtp_host}:{settings.smtp_port}"
        self._pool = _Pool(settings, max(1, settings.smtp_pool_size))
        self.concurrency = max(1, settings.smtp_pool_size)  # one message at a time per pooled connection

    def __repr__(self) -> str:
        return f"SmtpTransport(server={self._target!r}, sender={self._sender!r})"

    async def send(self, message: OutgoingMessage) -> SendReceipt:
        address = message.address
        if "@" not in address or not address.isascii() or any(c in address for c in "\r\n <>"):
            raise PermanentDeliveryError("invalid_address")
        data = build_email(message, sender=self._sender, domain=self._domain)
        client, reused = await self._pool.acquire()
        reusable = False
        in_data = False  # once DATA starts, a lost connection may still have delivered the message
        try:
            try:
                await client.mail(self._sender)
            except (aiosmtplib.SMTPServerDisconnected, ConnectionError, aiosmtplib.SMTPTimeoutError):
                if not reused:
                    raise
                # The server dropped this idle connection; nothing was sent, so one fresh try is safe.
                client.close()
                client = await self._pool.connect()
                await client.mail(self._sender)
            await client.rcpt(address)
            in_data = True
            response = await client.data(data)
            reusable = True
        except aiosmtplib.SMTPResponseException as exc:
            # A refused MAIL/RCPT leaves a half-open transaction: RSET before the connection is reused.
            # After a refused DATA the server has already reset the transaction.
            reusable = await self._reset(client) if not isinstance(exc, aiosmtplib.SMTPDataError) else True
            error: DeliveryError = smtp_reply_error(exc.code, exc.message) or TransientDeliveryError(
                f"temporary: {exc.code}"
            )
            log.debug("email send of %s refused: %s", message.message_id, error)
            raise error from exc
        except (aiosmtplib.SMTPTimeoutError, TimeoutError) as exc:
            raise TransientDeliveryError("timeout" if in_data else "connect_timeout") from exc
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise TransientDeliveryError("connection_error" if in_data else "connect_error") from exc
        finally:
            self._pool.release(client, reusable=reusable)
        match = _QUEUED_AS.search(response.message)
        return SendReceipt(
            provider_message_id=match.group(1) if match else f"{message.message_id}@{self._domain}"
        )

    @staticmethod
    async def _reset(client: aiosmtplib.SMTP) -> bool:
        try:
            await client.rset()
        except (aiosmtplib.SMTPException, OSError, TimeoutError):
            return False
        return True

    async def aclose(self) -> None:
        await self._pool.aclose()
