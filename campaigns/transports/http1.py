"""A lean HTTP/1.1 client for the provider APIs: one origin, POST, keep-alive, one request at a time per connection.

Why it exists: aiohttp's general-purpose client spends about 60 µs of Python per request on what the provider
calls never use (request and response objects, header multidicts, a body-writer task per POST on Python < 3.12,
cookie, redirect and proxy logic, two timers). ``python -m bench.http_client`` measured the whole client path at
0.10-0.12 CPU s per 1,000 requests with aiohttp and 0.05 with this client, against the same simulator.

What it does, and nothing more:

* HTTP/1.1 to the single origin of its URL, over TCP or TLS (asyncio's TLS with ``ssl.create_default_context()``:
  certificates and host names verified) -- no proxies, redirects (a 3xx is returned as is), cookies or HTTP/2;
* keep-alive: at most ``max_connections`` connections, idle ones reused most recently used first. No pipelining:
  one request in flight per connection, so a broken connection leaves the fate of one request unknown, never of
  several. A connection is dropped after ``Connection: close``, an HTTP/1.0 answer, a body delimited by the close,
  any failure or a cancelled call (its state is unknown), when the server closes it while idle, and when it has
  been idle for ``IDLE_KEEPALIVE_S`` (15 s, as aiohttp);
* answers: 1xx interim answers skipped; bodies by ``Content-Length``, ``chunked`` transfer coding (extensions and
  trailers ignored) or read to the close; ``gzip``/``deflate`` content decoded (we ask for ``identity``); heads over
  64 KiB or bodies over 16 MiB refused;
* timeouts: ``timeout_s`` bounds the wait for a free connection slot plus connecting (nothing sent yet), and
  separately the wait from sending to the whole answer; a ``deadline`` given to ``post`` bounds the whole call
  (the sender hands its lease-bounded budget down this way instead of arming a timer of its own).

Failures come out as :class:`~campaigns.errors.TransientDeliveryError` with the reasons documented in
``http_api``: ``pool_timeout``, ``connect_timeout``, ``connect_error`` (refused, DNS, TLS handshake or
certificate) -- the request never left; ``timeout``, ``connection_error`` (reset, closed before the whole answer,
a malformed answer) -- it may have reached the provider. Header values are checked for CR/LF/NUL (no header
injection); credentials are only ever written to the socket.
"""

from __future__ import annotations

import asyncio
import re
import ssl
import zlib
from collections.abc import Mapping
from urllib.parse import urlsplit

from campaigns.errors import TransientDeliveryError

MAX_HEAD_BYTES = 64 * 1024
MAX_BODY_BYTES = 16 * 1024 * 1024
# An idle connection older than this is closed rather than reused: servers close idle keep-alive connections
# after their own timeout, and a request written as that close crosses it fails ambiguously. aiohttp's default.
IDLE_KEEPALIVE_S = 15.0
_STATUS_LINE = re.compile(rb"HTTP/1\.([01]) (\d{3})(?: [^\r\n]*)?")
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,16})[ \t]*(?:;[^\r\n]*)?")


class ProtocolError(Exception):
    """The server's bytes are not a well-formed HTTP/1.1 answer."""


class _Answer:
    __slots__ = ("body", "headers", "keep_alive", "status")

    def __init__(self, status: int, headers: dict[str, str], body: bytes, keep_alive: bool) -> None:
        self.status, self.headers, self.body, self.keep_alive = status, headers, body, keep_alive


def _decoded(body: bytes, headers: Mapping[str, str]) -> bytes:
    coding = headers.get("content-encoding", "identity").strip().lower()
    try:
        if body and coding in ("gzip", "x-gzip"):
            return zlib.decompress(body, 47)  # wbits 32 + 15: a gzip (or zlib) header, detected
        if body and coding == "deflate":
            try:
                return zlib.decompress(body)
            except zlib.error:  # "deflate" is often sent raw, without the zlib header
                return zlib.decompress(body, -15)
    except zlib.error as exc:
        raise ProtocolError(f"bad {coding} body") from exc
    return body  # identity, or a coding we did not ask for: the caller sees undecodable bytes


class ResponseParser:
    """Incremental parser of one answer to a POST: :meth:`feed` bytes, it returns the answer once complete.

    :meth:`finish` is called at end of stream: it completes a body delimited by the close, else raises.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._status = 0
        self._headers: dict[str, str] = {}
        self._keep_alive = False
        self._mode = "head"  # head -> length | chunk-size | chunk-data | trailers | close -> done
        self._remaining = 0
        self._body = bytearray()

    def feed(self, data: bytes) -> _Answer | None:
        buffer = self._buffer
        buffer += data
        while True:
            mode = self._mode
            if mode == "head":
                end = buffer.find(b"\r\n\r\n")
                if end < 0:
                    if len(buffer) > MAX_HEAD_BYTES:
                        raise ProtocolError("answer head too large")
                    return None
                head = bytes(buffer[:end])
                del buffer[: end + 4]
                self._head(head)
            elif mode == "length":
                if len(buffer) < self._remaining:
                    return None
                self._body += buffer[: self._remaining]
                del buffer[: self._remaining]
                return self._done()
            elif mode == "chunk-size":
                end = buffer.find(b"\r\n")
                if end < 0:
                    if len(buffer) > 4096:
                        raise ProtocolError("chunk size line too long")
                    return None
                match = _CHUNK_SIZE.fullmatch(buffer, 0, end)
                if match is None:
                    raise ProtocolError("bad chunk size")
                size = int(match[1], 16)
                del buffer[: end + 2]
                if size == 0:
                    self._mode = "trailers"
                else:
                    self._check_size(len(self._body) + size)
                    self._remaining, self._mode = size, "chunk-data"
            elif mode == "chunk-data":
                if len(buffer) < self._remaining + 2:
                    return None
                if buffer[self._remaining : self._remaining + 2] != b"\r\n":
                    raise ProtocolError("chunk not followed by CRLF")
                self._body += buffer[: self._remaining]
                del buffer[: self._remaining + 2]
                self._mode = "chunk-size"
            elif mode == "trailers":
                end = buffer.find(b"\r\n")
                if end < 0:
                    if len(buffer) > MAX_HEAD_BYTES:
                        raise ProtocolError("trailers too large")
                    return None
                del buffer[: end + 2]
                if end == 0:  # the empty line after the (ignored) trailer fields
                    return self._done()
            else:  # "close": everything until the end of the stream
                self._check_size(len(self._body) + len(buffer))
                self._body += buffer
                buffer.clear()
                return None

    def finish(self) -> _Answer:
        """The answer whose body ended with the stream; raises ProtocolError if the stream ended early."""
        if self._mode != "close":
            raise ProtocolError("connection closed before the whole answer")
        self._keep_alive = False
        return self._done()

    @property
    def trailing_bytes(self) -> bool:
        """Bytes after the answer: the server sent something we did not ask for."""
        return bool(self._buffer)

    def _head(self, head: bytes) -> None:
        status_line, _, fields = head.partition(b"\r\n")
        match = _STATUS_LINE.fullmatch(status_line)
        if match is None:
            raise ProtocolError("bad status line")
        status = int(match[2])
        headers: dict[str, str] = {}
        for line in fields.decode("latin-1").split("\r\n") if fields else ():
            name, colon, value = line.partition(":")
            if not colon or not name or name != name.strip() or line[0] in " \t":
                raise ProtocolError("bad header line")  # obsolete line folding included
            name, value = name.lower(), value.strip()
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        if 100 <= status < 200:
            if status == 101:
                raise ProtocolError("unexpected protocol switch")
            return  # interim answer (100 Continue, 103 Early Hints): the real one follows
        self._status, self._headers = status, headers
        connection = {token.strip().lower() for token in headers.get("connection", "").split(",")}
        self._keep_alive = match[1] == b"1" and "close" not in connection
        coding = headers.get("transfer-encoding")
        if status in (204, 304):
            self._mode, self._remaining = "length", 0
        elif coding is not None:
            if coding.rsplit(",", 1)[-1].strip().lower() != "chunked":
                self._mode = "close"
            else:
                self._mode = "chunk-size"
            if "content-length" in headers:  # RFC 9112 6.3: ambiguous framing, never reuse
                self._keep_alive = False
        elif "content-length" in headers:
            lengths = {part.strip() for part in headers["content-length"].split(",")}
            if len(lengths) != 1 or not (length := lengths.pop()).isdigit():
                raise ProtocolError("bad Content-Length")
            self._check_size(int(length))
            self._mode, self._remaining = "length", int(length)
        else:
            self._mode = "close"
        if self._mode == "close":
            self._keep_alive = False

    def _check_size(self, size: int) -> None:
        if size > MAX_BODY_BYTES:
            raise ProtocolError("answer body too large")

    def _done(self) -> _Answer:
        self._mode = "done"
        return _Answer(self._status, self._headers, _decoded(bytes(self._body), self._headers), self._keep_alive)


class _Connection(asyncio.Protocol):
    """One connection; :meth:`exchange` sends a request and resolves with the answer."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._transport: asyncio.Transport | None = None
        self._parser: ResponseParser | None = None
        self._waiter: asyncio.Future[_Answer] | None = None
        self.usable = True  # False once closed, failed, or told to close

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def exchange(self, request: bytes) -> asyncio.Future[_Answer]:
        assert self._transport is not None and self.usable
        self._parser = ResponseParser()
        self._waiter = self._loop.create_future()
        self._transport.write(request)
        return self._waiter

    def data_received(self, data: bytes) -> None:
        waiter, parser = self._waiter, self._parser
        if waiter is None or parser is None or waiter.done():  # bytes nobody asked for
            self.abort()
            return
        try:
            answer = parser.feed(data)
        except (ProtocolError, ValueError) as exc:
            self._fail(ProtocolError(str(exc)))
            return
        if answer is not None:
            self._waiter = self._parser = None
            if not answer.keep_alive or parser.trailing_bytes:
                self.abort()
            waiter.set_result(answer)

    def eof_received(self) -> bool:
        waiter, parser = self._waiter, self._parser
        self.usable = False
        if waiter is not None and parser is not None and not waiter.done():
            self._waiter = self._parser = None
            try:
                waiter.set_result(parser.finish())
            except ProtocolError as exc:
                waiter.set_exception(exc)
        return False  # let the transport close

    def connection_lost(self, exc: Exception | None) -> None:
        self.usable = False
        self._fail(ConnectionResetError("connection lost") if exc is None else exc)

    def _fail(self, exc: BaseException) -> None:
        waiter = self._waiter
        self._waiter = self._parser = None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        self.abort()

    def abort(self) -> None:
        self.usable = False
        if self._transport is not None:
            self._transport.abort()


class Http1Poster:
    """POSTs to one URL over pooled keep-alive connections. Not thread-safe: use it from one event loop.

    ``post`` returns ``(status, body, headers)`` with lower-cased header names (and the content decoded),
    or raises TransientDeliveryError (see the module docstring for the reasons).
    """

    def __init__(
        self,
        url: str,
        default_headers: Mapping[str, str],
        timeout_s: float,
        max_connections: int,
        *,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self._host = parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._ssl = (ssl_context or ssl.create_default_context()) if parts.scheme == "https" else None
        host = f"[{self._host}]" if ":" in self._host else self._host
        if parts.port is not None:
            host = f"{host}:{parts.port}"
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        fixed = {"Host": host, **default_headers, "Accept-Encoding": "identity"}
        # The request line and the headers every request carries, built once.
        self._head = f"POST {target} HTTP/1.1\r\n{_header_lines(fixed)}"
        self._timeout_s = timeout_s
        self._slots = asyncio.Semaphore(max_connections)  # no loop is bound until first contended use
        self._idle: list[tuple[_Connection, float]] = []  # with the loop time it was last used
        self._closed = False

    async def post(
        self, content: bytes, headers: Mapping[str, str], deadline: float | None = None
    ) -> tuple[int, bytes, Mapping[str, str]]:
        """POST ``content``; cut (TransientDeliveryError) at ``timeout_s`` (see the module docstring), and by
        ``deadline`` (the running loop's clock: ``loop.time()``) if one is given: the whole call ends by then."""
        if self._closed:
            raise RuntimeError("transport is closed")
        request = f"{self._head}{_header_lines(headers)}Content-Length: {len(content)}\r\n\r\n".encode() + content
        loop = asyncio.get_running_loop()
        now = loop.time()
        connection = await self._acquire(loop, now, _sooner(now + self._timeout_s, deadline))
        try:
            answer = await self._exchange(loop, connection, request, _sooner(loop.time() + self._timeout_s, deadline))
        finally:
            self._slots.release()
        return answer.status, answer.body, answer.headers

    async def _acquire(self, loop: asyncio.AbstractEventLoop, now: float, deadline: float) -> _Connection:
        """A slot and a connection (an idle one, else a new one) by ``deadline``; the slot is released on
        failure."""
        if self._slots.locked():  # every slot busy: wait (bounded) for one
            try:
                async with asyncio.timeout_at(deadline):
                    await self._slots.acquire()
            except TimeoutError as exc:
                raise TransientDeliveryError("pool_timeout") from exc
            now = loop.time()
        else:
            await self._slots.acquire()  # a free slot: returns at once, no timer armed
        idle = self._idle
        while idle:
            connection, since = idle.pop()
            if connection.usable and now - since < IDLE_KEEPALIVE_S:
                return connection
            connection.abort()
        try:
            async with asyncio.timeout_at(deadline):
                _, protocol = await loop.create_connection(
                    lambda: _Connection(loop), self._host, self._port, ssl=self._ssl
                )
        except TimeoutError as exc:
            self._slots.release()
            raise TransientDeliveryError("connect_timeout") from exc
        except OSError as exc:  # refused, unreachable, DNS, TLS handshake or certificate
            self._slots.release()
            raise TransientDeliveryError("connect_error") from exc
        except BaseException:
            self._slots.release()
            raise
        return protocol

    async def _exchange(
        self, loop: asyncio.AbstractEventLoop, connection: _Connection, request: bytes, deadline: float
    ) -> _Answer:
        waiter = connection.exchange(request)
        timer = loop.call_at(deadline, _expire, waiter)
        try:
            answer = await waiter
        except TimeoutError as exc:
            connection.abort()
            raise TransientDeliveryError("timeout") from exc
        except (OSError, ProtocolError) as exc:  # reset, closed early, malformed
            connection.abort()
            raise TransientDeliveryError("connection_error") from exc
        except BaseException:  # cancelled mid-exchange: the connection's state is unknown
            connection.abort()
            raise
        finally:
            timer.cancel()
        if connection.usable and not self._closed:
            self._idle.append((connection, loop.time()))
        else:  # told to close, or the poster was closed while this call ran
            connection.abort()
        return answer

    async def aclose(self) -> None:
        self._closed = True
        while self._idle:
            self._idle.pop()[0].abort()


def _sooner(limit: float, deadline: float | None) -> float:
    """``limit``, or the caller's ``deadline`` if it comes first."""
    return limit if deadline is None or limit < deadline else deadline


def _expire(waiter: asyncio.Future[_Answer]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


def _header_lines(headers: Mapping[str, str]) -> str:
    """``Name: value\r\n`` per header; a CR, LF or NUL inside a name or value (header injection) is refused."""
    lines = "".join([f"{name}: {value}\r\n" for name, value in headers.items()])
    if lines.count("\n") != len(headers) or lines.count("\r") != len(headers) or "\x00" in lines:
        raise ValueError("header names and values must not contain CR, LF or NUL")
    return lines
